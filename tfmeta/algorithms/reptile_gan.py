"""Reptile-GAN: few-shot image generation, after FIGR (Clouatre and Demers 2019, "FIGR:
Few-shot Image Generation with Reptile", https://arxiv.org/abs/1901.02199).

A task is one class (a digit, a character) given by K images. The inner loop trains
copies of the generator G and the critic D on that class with the Wasserstein loss and
gradient penalty (`tfmeta.algorithms.wgan_gp`, weight 10); the outer loop moves the meta
generator and meta critic toward the adapted copies, exactly as Reptile does:

    for task in meta_batch:                                   # images [K, H, W, C]
        g, d = theta_G, theta_D
        for k in range(inner_steps):
            d = inner_optimizer_D.step(d, grad_d critic_loss(d, real=images, fake=G(g, z)))
            g = inner_optimizer_G.step(g, grad_g generator_loss(d, G(g, z')))
        adapted.append(g + d)
    theta = theta + epsilon * (mean(adapted) - theta)          # or optimizer(theta - mean)

FIGR's settings (the config's defaults): inner SGD with rate 1e-3 for 10 iterations on 4
images with 4 fakes per step, and the outer update `theta - mean(adapted)` handed to Adam
with rate 1e-4 (`outer_optimizer=True`). `InnerAdam`, `mean_over_tasks`, `reptile_update`
and the annealed step size are Reptile's (`tfmeta.algorithms.reptile`).

Images enter as model inputs in [0, 1] (the dataset's preprocessing) and are mapped to
[-1, 1] for the tanh generator. The quality measure, `evaluate_run`, lives in
`tfmeta.algorithms.generation_eval`; the SavedModel has two signatures,
`adapt_and_generate(images, num_samples)` and `generate(num_samples)`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms import wgan_gp
from tfmeta.algorithms.generation_eval import evaluate_run  # noqa: F401 (the trainer's hook)
from tfmeta.algorithms.reptile import (
    ReptileSchedule,
    make_inner_optimizer,
    mean_over_tasks,
    reptile_update,
)
from tfmeta.data.episodes import episode_dataset

METRICS = ("loss", "generator_loss", "wasserstein", "gradient_penalty")
EVAL_SEED = 2 ** 31 - 1


class ReptileGAN(ReptileSchedule, keras.Model):
    """Reptile on a (generator, critic) pair; tasks are `{"images": [B, K, H, W, C]}`.

    Example:

        gan = ReptileGAN(resnet_generator((28, 28, 1)), resnet_critic((28, 28, 1)))
        gan.compile(optimizer=keras.optimizers.Adam(1e-4))
        gan.fit(class_tasks, steps_per_epoch=100)
        samples = gan.adapt_and_generate(four_images_of_a_new_class, num_samples=16)

    Args:
      generator: latent `[n, latent_dim]` -> images `[n, H, W, C]` in [-1, 1].
      critic: images -> scores `[n, 1]`, each image scored on its own.
      inner_steps, inner_steps_test: inner iterations (each one critic and one generator
        step) while training, and when evaluating or serving.
      inner_optimizer, inner_lr, inner_beta_1: the inner optimizer of both networks.
      penalty_weight: weight of the gradient penalty.
      meta_step_size, meta_step_size_final, anneal_steps, outer_optimizer: as in Reptile.
    """

    def __init__(self, generator: keras.Model, critic: keras.Model, inner_steps: int = 10,
                 inner_steps_test: int = 10, inner_optimizer: str = "sgd",
                 inner_lr: float = 1e-3, inner_beta_1: float = 0.5,
                 penalty_weight: float = 10.0, meta_step_size: float = 1.0,
                 meta_step_size_final: float = 0.0, anneal_steps: int = 100000,
                 outer_optimizer: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not (generator.built and critic.built):
            raise ValueError("ReptileGAN needs a built generator and critic.")
        if tuple(generator.output_shape[1:]) != tuple(critic.input_shape[1:]):
            raise ValueError(f"The generator makes images of shape {generator.output_shape[1:]} "
                             f"but the critic takes {critic.input_shape[1:]}; build both for "
                             "the same image shape.")
        for name, value in (("inner_steps", inner_steps), ("inner_steps_test", inner_steps_test)):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {value!r}.")
        self.init_schedule(meta_step_size, meta_step_size_final, anneal_steps, outer_optimizer)
        self.generator, self.critic = generator, critic
        self.inner_steps, self.inner_steps_test = int(inner_steps), int(inner_steps_test)
        self.inner_optimizer = make_inner_optimizer(inner_optimizer, inner_lr, inner_beta_1)
        self.penalty_weight = float(penalty_weight)
        self.latent_dim = int(generator.input_shape[-1])
        self.image_shape = tuple(critic.input_shape[1:])
        self.trackers = [keras.metrics.Mean(name=name) for name in METRICS]

    @property
    def metrics(self):
        return list(self.trackers)

    @property
    def meta_variables(self):
        """theta: the generator's trainable variables, then the critic's."""
        return self.generator.trainable_variables + self.critic.trainable_variables

    def call(self, latent, training=False):
        return self.generator(latent, training=training)

    # -------------------------------------------------------------------- the method
    def _split(self, params):
        count = len(self.generator.trainable_variables)
        return list(params[:count]), list(params[count:])

    def generate_with(self, g_params, latent):
        """Images in [-1, 1] from the generator run with fast weights `g_params`."""
        state = weights.values(self.generator.non_trainable_variables)
        images, _ = self.generator.stateless_call(g_params, state, latent, training=True)
        return tf.cast(images, tf.float32)

    def critic_with(self, d_params):
        state = weights.values(self.critic.non_trainable_variables)

        def critic_fn(images):
            scores, _ = self.critic.stateless_call(d_params, state, images, training=True)
            return tf.cast(scores, tf.float32)

        return critic_fn

    def adapt(self, params, real, steps: int, seed):
        """Inner loop on one class: returns (adapted g + d weights, mean [critic loss,
        generator loss, wasserstein estimate, penalty] over the steps).

        Args:
          params: theta as tensors (generator's, then critic's).
          real: the class's images in [-1, 1], `[K, H, W, C]`; K fakes are made per step.
          seed: `[2]` ints; noise and interpolation weights are a function of it.
        """
        g_params, d_params = self._split(params)
        if steps == 0:
            return list(params), [tf.constant(0.0)] * len(METRICS)
        n = tf.shape(real)[0]

        def body(k, g, d, g_state, d_state, sums):
            seeds = tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(seed, k), 3)
            fake = self.generate_with(g, tf.random.stateless_normal(
                tf.stack([n, self.latent_dim]), seeds[0]))
            with tf.GradientTape() as tape:
                tape.watch(d)
                d_loss, wasserstein, penalty = wgan_gp.critic_loss(
                    self.critic_with(d), real, tf.stop_gradient(fake), seeds[1],
                    self.penalty_weight)
            d, d_state = self.inner_optimizer.step(d, tape.gradient(d_loss, d), d_state)
            with tf.GradientTape() as tape:
                tape.watch(g)
                fake = self.generate_with(g, tf.random.stateless_normal(
                    tf.stack([n, self.latent_dim]), seeds[2]))
                g_loss = wgan_gp.generator_loss(self.critic_with(d), fake)
            g, g_state = self.inner_optimizer.step(g, tape.gradient(g_loss, g), g_state)
            sums = [s + v for s, v in zip(sums, (d_loss, g_loss, wasserstein, penalty))]
            return k + 1, g, d, g_state, d_state, sums

        _, g, d, _, _, sums = tf.while_loop(
            lambda k, *_: k < steps, body,
            (tf.constant(0), g_params, d_params, self.inner_optimizer.init(g_params),
             self.inner_optimizer.init(d_params), [tf.constant(0.0)] * len(METRICS)))
        return g + d, [s / float(steps) for s in sums]

    def _tasks(self, data):
        if isinstance(data, tuple | list):
            data, _, _ = keras.utils.unpack_x_y_sample_weight(tuple(data))
        if not isinstance(data, dict) or "images" not in data:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"ReptileGAN takes {{'images': [B, K, H, W, C]}} (K images of one "
                             f"class per task); got {got}. Build it with "
                             "tfmeta.algorithms.reptile_gan.class_tasks().")
        images = tf.convert_to_tensor(data["images"], tf.float32)
        if images.shape.rank is not None and (images.shape.rank != 5 or tuple(
                images.shape[2:]) != self.image_shape):
            raise ValueError(f"Task images must be [B, K, *{self.image_shape}]; got shape "
                             f"{images.shape}.")
        return images * 2.0 - 1.0  # [0, 1] model inputs -> the generator's [-1, 1]

    def _run_tasks(self, tasks, steps, step):
        params = weights.values(self.meta_variables)

        def adapt_task(i):
            return self.adapt(params, tasks[i], steps, tf.stack([step, tf.cast(i, tf.int64)]))

        return mean_over_tasks(adapt_task, tf.shape(tasks)[0], params, len(METRICS))

    def _report(self, values, batch):
        for tracker, value in zip(self.trackers, values):
            tracker.update_state(value, sample_weight=batch)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        tasks = self._tasks(data)
        adapted_mean, values = self._run_tasks(tasks, self.inner_steps,
                                               tf.cast(self.optimizer.iterations, tf.int64))
        reptile_update(self, self.meta_variables, adapted_mean, self.current_meta_step_size(),
                       self.outer_optimizer)
        return self._report(values, tf.shape(tasks)[0])

    def test_step(self, data):
        tasks = self._tasks(data)
        _, values = self._run_tasks(tasks, self.inner_steps_test, tf.constant(EVAL_SEED, tf.int64))
        return self._report(values, tf.shape(tasks)[0])

    # ------------------------------------------------------------------- generation
    def _random_seed(self, seed):
        if seed is None:
            return tf.random.uniform([2], maxval=2 ** 31 - 1, dtype=tf.int64)
        return tf.cast(tf.broadcast_to(seed, [2]), tf.int64)

    def generate(self, num_samples, seed=None, g_params=None):
        """`num_samples` images `[n, H, W, C]` in [0, 1] (model inputs' format) from the
        meta generator, or from `g_params`."""
        g_params = weights.values(self.generator.trainable_variables) if g_params is None \
            else g_params
        latent = tf.random.stateless_normal(tf.stack([num_samples, self.latent_dim]),
                                            self._random_seed(seed))
        return (self.generate_with(g_params, latent) + 1.0) / 2.0

    def check_images(self, images):
        """Eager check of a new class's images: `[K >= 1, H, W, C]` floats in [0, 1]."""
        images = tf.convert_to_tensor(images, tf.float32)
        if images.shape.rank != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must be [K, *{self.image_shape}] (K images of one "
                             f"class); got shape {tuple(images.shape)}.")
        if tf.executing_eagerly():
            if images.shape[0] == 0:
                raise ValueError("images is empty; adapting needs at least one image of the "
                                 "new class.")
            low, high = float(tf.reduce_min(images)), float(tf.reduce_max(images))
            if low < 0.0 or high > 1.0:
                raise ValueError(f"images must be float32 in [0, 1]; got values in "
                                 f"[{low:.3g}, {high:.3g}]. Divide uint8 images by 255.")
        return images

    def adapt_and_generate(self, images, num_samples, seed=None):
        """Adapts to `images` `[K, H, W, C]` of a new class (model inputs in [0, 1]) with
        `inner_steps_test` inner steps; returns `num_samples` samples in [0, 1]."""
        images = self.check_images(images)
        seed = self._random_seed(seed)
        adapt_seed, sample_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        adapted, _ = self.adapt(weights.values(self.meta_variables), images * 2.0 - 1.0,
                                self.inner_steps_test, adapt_seed)
        g_params, _ = self._split(adapted)
        return self.generate(num_samples, sample_seed, g_params)

    def serving_module(self, preprocess, raw_shape):
        """(tf.Module, signatures) for `tfmeta.training.export.export_learner`."""
        module = GenerationServing(self, preprocess, raw_shape)
        return module, {
            "adapt_and_generate": module.adapt_and_generate.get_concrete_function(),
            "generate": module.generate.get_concrete_function(),
        }


def make_postprocess(preprocess, raw_shape):
    """The inverse of a preprocessing that resizes and maps intensities affinely (Omniglot's
    resize-and-invert, MNIST's identity): model inputs -> images of `raw_shape` in [0, 1]."""
    zeros = preprocess(np.zeros([1, *raw_shape], np.float32)).numpy()
    ones = preprocess(np.ones([1, *raw_shape], np.float32)).numpy()
    offset, scale = float(zeros.mean()), float(ones.mean() - zeros.mean())
    if abs(scale) < 1e-3 or zeros.std() > 1e-3 or ones.std() > 1e-3:
        raise ValueError("Reptile-GAN exports need a preprocessing that resizes and maps "
                         "intensities affinely (a * x + b), to map samples back to the "
                         f"dataset's format; this one maps 0 to ~{offset:.3g} and 1 to "
                         f"~{offset + scale:.3g} non-uniformly.")

    def postprocess(samples):
        samples = (samples - offset) / scale
        if tuple(samples.shape[1:3]) != tuple(raw_shape[:2]):
            samples = tf.image.resize(samples, raw_shape[:2])
        return tf.clip_by_value(samples, 0.0, 1.0)

    return postprocess


class GenerationServing(tf.Module):
    """Serving signatures on raw images (float32 in [0, 1], the dataset's own size)."""

    def __init__(self, learner: ReptileGAN, preprocess, raw_shape):
        super().__init__(name="tfmeta_generation")
        self.learner = learner
        self._preprocess = preprocess
        self._postprocess = make_postprocess(preprocess, raw_shape)
        count = tf.TensorSpec([], tf.int32, name="num_samples")
        self.adapt_and_generate = tf.function(
            self._adapt_and_generate,
            input_signature=[tf.TensorSpec([None, *raw_shape], tf.float32, name="images"), count])
        self.generate = tf.function(self._generate, input_signature=[count])

    def _count_check(self, num_samples):
        return tf.debugging.assert_positive(num_samples, message="num_samples must be >= 1")

    def _adapt_and_generate(self, images, num_samples):
        message = "images must be float32 in [0, 1] (divide uint8 images by 255)"
        checks = [
            tf.debugging.assert_positive(tf.shape(images)[0], message=(
                "images is empty; adapting needs at least one image of the new class")),
            tf.debugging.assert_greater_equal(tf.reduce_min(images), 0.0, message=message),
            tf.debugging.assert_less_equal(tf.reduce_max(images), 1.0, message=message),
            self._count_check(num_samples),
        ]
        with tf.control_dependencies(checks):
            samples = self.learner.adapt_and_generate(self._preprocess(images), num_samples)
        return {"samples": self._postprocess(samples)}

    def _generate(self, num_samples):
        with tf.control_dependencies([self._count_check(num_samples)]):
            return {"samples": self._postprocess(self.learner.generate(num_samples))}


# ------------------------------------------------------------------ trainer integration
def class_tasks(classes, shots: int, meta_batch_size: int, seed: int = 0,
                num_tasks: int | None = None, split: str = ""):
    """`{"images": [meta_batch_size, shots, ...]}`: each task is `shots` images of one
    random class (classes drawn independently per task)."""
    tasks = episode_dataset(classes, 1, shots, 1, meta_batch_size, seed=seed,
                            num_episodes=num_tasks, split=split)
    return tasks.map(lambda episodes: {"images": episodes["support_images"]})


def training_data(dataset, config, replicas=1):
    """Meta-batches of one-class tasks from the train split, and validation tasks from the
    val split (MNIST: held-out digit 9 of the training images)."""
    train = class_tasks(dataset.split("train"), config.shots, config.meta_batch_size,
                        config.seed, split="train")
    val_batch = max(replicas, min(config.eval_meta_batch_size, config.val_episodes))
    val_batch -= val_batch % replicas
    val = class_tasks(dataset.split("val"), config.shots, val_batch, config.seed + 1,
                      num_tasks=config.val_episodes, split="val")
    return train, val


def from_config(config, input_shape):
    """ReptileGAN around FIGR's ResNet generator and critic (`config.model`: filters, blocks,
    units_per_block, latent_dim)."""
    from tfmeta.models.resnet_gan import resnet_critic, resnet_generator

    model = dict(config.model)
    model.pop("name", None)
    latent_dim = model.pop("latent_dim", 100)
    generator = resnet_generator(tuple(input_shape), latent_dim=latent_dim, **model)
    critic = resnet_critic(tuple(input_shape), **model)
    kwargs = dict(config.learner)
    kwargs["anneal_steps"] = kwargs.get("anneal_steps") or config.num_steps
    return ReptileGAN(generator, critic, **kwargs)

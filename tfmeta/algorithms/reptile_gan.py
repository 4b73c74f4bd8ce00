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
with rate 1e-4 (`outer_optimizer=True`). The outer loop, the inner optimizers and the
annealed step size are the Reptile family's (`tfmeta.algorithms.reptile_family`).

Images enter as model inputs in [0, 1] (the dataset's preprocessing) and are mapped to
[-1, 1] for the tanh generator. Its meta-test protocol (`meta_test`) is the generation
metric of `tfmeta.algorithms.generation_eval`; its SavedModel (`tfmeta.serving.
GenerationServing`) has two signatures, `adapt_and_generate(images, num_samples)` and
`generate(num_samples)`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms import wgan_gp
from tfmeta.algorithms.base import validation_batch_size
from tfmeta.algorithms.generation_eval import evaluate_generation
from tfmeta.algorithms.recipe import Recipe
from tfmeta.algorithms.reptile_family import EVAL_SEED, ReptileFamily, annealed_arguments
from tfmeta.data.episodes import single_class_tasks
from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config
from tfmeta.ranges import NON_NEGATIVE, NON_NEGATIVE_INT
from tfmeta.serving import GenerationServing

METRICS = ("loss", "generator_loss", "wasserstein", "gradient_penalty")


class ReptileGAN(ReptileFamily):
    """Reptile on a (generator, critic) pair; tasks are `{"images": [B, K, H, W, C]}`, K images
    of one class each (model inputs in [0, 1]).

    Example:

        gan = ReptileGAN(resnet_generator((28, 28, 1)), resnet_critic((28, 28, 1)))
        gan.compile(optimizer=keras.optimizers.Adam(1e-4))
        gan.fit(single_class_tasks(train_classes, 4, meta_batch_size=1), steps_per_epoch=100)
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

    batch_keys = ("images",)
    argument_ranges = {"inner_steps": NON_NEGATIVE_INT, "inner_steps_test": NON_NEGATIVE_INT,
                       "penalty_weight": NON_NEGATIVE}

    def __init__(self, generator: keras.Model, critic: keras.Model, inner_steps: int = 10,
                 inner_steps_test: int = 10, inner_optimizer: str = "sgd",
                 inner_lr: float = 1e-3, inner_beta_1: float = 0.5,
                 penalty_weight: float = 10.0, outer_optimizer: bool = True, **kwargs):
        super().__init__(inner_optimizer=inner_optimizer, inner_lr=inner_lr,
                         inner_beta_1=inner_beta_1, outer_optimizer=outer_optimizer, **kwargs)
        if not (generator.built and critic.built):
            raise UserError("ReptileGAN needs a built generator and critic.")
        if tuple(generator.output_shape[1:]) != tuple(critic.input_shape[1:]):
            raise UserError(f"The generator makes images of shape {generator.output_shape[1:]} "
                            f"but the critic takes {critic.input_shape[1:]}; build both for "
                            "the same image shape.")
        self.check_arguments({"inner_steps": inner_steps, "inner_steps_test": inner_steps_test,
                              "penalty_weight": penalty_weight})
        self.generator, self.critic = generator, critic
        self.inner_steps, self.inner_steps_test = int(inner_steps), int(inner_steps_test)
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

    def check_batch(self, data):
        data = super().check_batch(data)
        images = data["images"]
        if images.shape.rank is not None and (images.shape.rank != 5 or tuple(
                images.shape[2:]) != self.image_shape):
            raise UserError(f"Task images must be [B, K, *{self.image_shape}]; got shape "
                            f"{images.shape}.")
        return data

    def adapt_task(self, params, batch, index, seed, training=True):
        real = tf.cast(batch["images"][index], tf.float32) * 2.0 - 1.0  # the generator's range
        return self.adapt(params, real, self.inner_steps if training else self.inner_steps_test,
                          seed)

    def test_step(self, data):
        batch = self.check_batch(data)
        _, values = self.run_tasks(batch, EVAL_SEED, training=False)
        return self.report(values, tf.shape(batch["images"])[0])

    # ------------------------------------------------------- data, evaluation, serving
    def training_episodes(self, dataset, spec, replicas: int = 1, start_step: int = 0,
                          worker: int = 0, workers: int = 1):
        """Meta-batches of one-class tasks (`spec.train.shots` images each) from the train
        split, and validation tasks (`spec.test.shots` images) from the val split (MNIST:
        held-out digit 9 of the training images)."""
        train = single_class_tasks(dataset.split("train"), spec.train.shots,
                                   spec.meta_batch_size, spec.seed, split="train",
                                   start_step=start_step, worker=worker, workers=workers)
        validation = single_class_tasks(dataset.split("val"), spec.test.shots,
                                        validation_batch_size(spec, replicas),
                                        spec.seed + 1, num_tasks=spec.val_episodes,
                                        split="val")
        return train, validation

    def meta_test(self, dataset, spec, split="test", num_episodes=None, seed=1234, ways=None,
                  shots=None, log_dir=None, step=0) -> dict:
        """The generation metric (`tfmeta.algorithms.generation_eval`, `spec.generation`);
        `ways` is unused (the classifier's classes are fixed by the split)."""
        del ways
        if spec.generation is None:
            raise UserError("ReptileGAN's meta-test needs the config's generation section "
                            "(configs/reptile_gan.py's samples, metric_classes and "
                            "classifier_steps).")
        return evaluate_generation(self, dataset, split, num_episodes or spec.eval_episodes,
                                   seed, shots=shots or spec.test.shots,
                                   samples=spec.generation.samples,
                                   max_classes=spec.generation.metric_classes,
                                   classifier_steps=spec.generation.classifier_steps,
                                   log_dir=log_dir, step=step)

    def serving_module(self, dataset) -> tf.Module:
        return GenerationServing(self, dataset)

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
            raise UserError(f"images must be [K, *{self.image_shape}] (K images of one "
                            f"class); got shape {tuple(images.shape)}.")
        if tf.executing_eagerly():
            if images.shape[0] == 0:
                raise UserError("images is empty; adapting needs at least one image of the "
                                "new class.")
            low, high = float(tf.reduce_min(images)), float(tf.reduce_max(images))
            if low < 0.0 or high > 1.0:
                raise UserError(f"images must be float32 in [0, 1]; got values in "
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


class ReptileGANRecipe(Recipe):
    """ReptileGAN around the (generator, critic) pair `config.model` names (FIGR's ResNets:
    `resnet_gan` with filters, blocks, units_per_block, latent_dim)."""

    min_ways = 1  # a task is images of one class, to generate more of

    def build(self, config, input_shape):
        generator, critic = backbone_from_config(config.model, input_shape)
        return self.learner(generator, critic, **annealed_arguments(config))


RECIPE = ReptileGANRecipe(ReptileGAN)

"""Reptile-GAN: WGAN-GP losses against hand-worked numbers, the shared Reptile outer update,
input errors, and (slow) meta-training on MNIST-format data and Omniglot with export,
evaluation and the SavedModel signatures in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import reptile_gan as reptile_gan_config
from tests.learner_contract import LearnerContract
from tests.test_mnist import write_mnist_npz
from tfmeta.algorithms import recipe_of, wgan_gp
from tfmeta.algorithms.reptile_gan import ReptileGAN
from tfmeta.data import load_dataset
from tfmeta.data.episodes import single_class_tasks
from tfmeta.episode_spec import DataSpec
from tfmeta.models.resnet_gan import resnet_critic, resnet_gan, resnet_generator
from tfmeta.serving import GenerationServing, make_postprocess

TINY_MODEL = {"filters": 4, "blocks": 2, "units_per_block": 1, "latent_dim": 8}


def tiny_config(dataset="mnist", **learner):
    config = reptile_gan_config.get_config(dataset)
    config.model.update(TINY_MODEL)
    config.learner.update(inner_steps=2, inner_steps_test=2, inner_optimizer="adam",
                          inner_lr=1e-3)
    config.learner.update(learner)
    config.val_episodes, config.eval_meta_batch_size = 2, 2
    config.generation.update(samples=8, metric_classes=10, classifier_steps=30)
    config.checkpoint_every = 2
    return config


def tiny_gan(image_shape=(8, 8, 1), **kwargs):
    generator = resnet_generator(image_shape, latent_dim=4, filters=2, blocks=1, units_per_block=1)
    critic = resnet_critic(image_shape, filters=2, blocks=1, units_per_block=1)
    return ReptileGAN(generator, critic, **kwargs)


def test_gradient_penalty_of_a_linear_critic():
    # D(x) = sum(w * x): the gradient at any point is w, so each per-sample norm is |w|_2
    # and the penalty is (|w| - 1)^2 whatever the interpolates. Here |w| = sqrt(4 * 1.5^2) = 3.
    w = tf.fill([1, 2, 2, 1], 1.5)

    def critic(images):
        return tf.reduce_sum(w * images, axis=[1, 2, 3])[:, None]

    real = tf.random.uniform([3, 2, 2, 1])
    fake = tf.random.uniform([3, 2, 2, 1])
    penalty = wgan_gp.gradient_penalty(critic, real, fake, tf.constant([1, 2]))
    assert float(penalty) == pytest.approx((3.0 - 1.0) ** 2, rel=1e-5)
    loss, wasserstein, _ = wgan_gp.critic_loss(critic, real, fake, tf.constant([1, 2]), 10.0)
    expected_w = 1.5 * (float(tf.reduce_sum(real)) - float(tf.reduce_sum(fake))) / 3
    assert float(wasserstein) == pytest.approx(expected_w, rel=1e-4)
    assert float(loss) == pytest.approx(-expected_w + 10 * 4.0, rel=1e-4)


def test_gradient_penalty_norm_is_per_sample():
    # D(x) = x0^2 / 2 for each sample: gradient x0 in the first pixel, so sample norms are
    # |x0| of the interpolate. With real == fake the interpolate is that image: norms 0 and 3,
    # penalty = ((0 - 1)^2 + (3 - 1)^2) / 2 = 2.5 (a batch-wide norm would give (3 - 1)^2 = 4).
    def critic(images):
        return 0.5 * tf.square(images[:, 0, 0, :])

    images = tf.constant([[[[0.0]], [[5.0]]], [[[3.0]], [[7.0]]]])
    penalty = wgan_gp.gradient_penalty(critic, images, images, tf.constant([0, 0]))
    assert float(penalty) == pytest.approx(2.5, rel=1e-5)


def test_image_grid_places_images_row_major():
    images = tf.reshape(tf.range(5, dtype=tf.float32), [5, 1, 1, 1]) * tf.ones([5, 2, 2, 1])
    grid = wgan_gp.image_grid(images, columns=3).numpy()
    assert grid.shape == (1, 4, 6, 1)
    assert grid[0, 0, 2, 0] == 1 and grid[0, 2, 0, 0] == 3 and grid[0, 2, 4, 0] == 0  # padding


def test_outer_update_moves_toward_adapted_copies(monkeypatch):
    # With epsilon = 1/2 and a fake inner loop that adds 2 to every weight, one meta-step
    # adds 1 to every weight of both networks: phi + 1/2 * ((phi + 2) - phi).
    keras.utils.set_random_seed(0)
    gan = tiny_gan(outer_optimizer=False, meta_step_size=0.5, meta_step_size_final=0.5)
    gan.compile(optimizer=keras.optimizers.SGD())
    gan.optimizer.build(gan.trainable_variables)
    before = [v.numpy() for v in gan.meta_variables]
    monkeypatch.setattr(gan, "adapt", lambda params, real, steps, seed: (
        [p + 2.0 for p in params], [tf.constant(0.0)] * 4))
    gan.train_on_batch({"images": tf.random.uniform([2, 3, 8, 8, 1])})
    for old, new in zip(before, gan.meta_variables):
        np.testing.assert_allclose(new.numpy(), old + 1.0, rtol=1e-6, atol=1e-6)
    assert int(gan.optimizer.iterations.numpy()) == 1


def test_inner_loop_changes_both_networks_and_is_seeded():
    keras.utils.set_random_seed(0)
    gan = tiny_gan(inner_steps=2, inner_optimizer="adam", inner_lr=1e-2)
    params = [tf.convert_to_tensor(v) for v in gan.meta_variables]
    real = tf.random.uniform([3, 8, 8, 1]) * 2 - 1
    adapted, metrics = gan.adapt(params, real, 2, tf.constant([1, 2], tf.int64))
    again, _ = gan.adapt(params, real, 2, tf.constant([1, 2], tf.int64))
    g_count = len(gan.generator.trainable_variables)
    assert any(not np.allclose(a, p) for a, p in zip(adapted[:g_count], params[:g_count]))
    assert any(not np.allclose(a, p) for a, p in zip(adapted[g_count:], params[g_count:]))
    for a, b in zip(adapted, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert all(np.isfinite(float(m)) for m in metrics)


def test_bad_images_are_named():
    gan = tiny_gan()
    with pytest.raises(ValueError, match=r"\(2, 9, 9, 1\)"):
        gan.adapt_and_generate(tf.zeros([2, 9, 9, 1]), 3)
    with pytest.raises(ValueError, match="empty"):
        gan.adapt_and_generate(tf.zeros([0, 8, 8, 1]), 3)
    with pytest.raises(ValueError, match=r"got values in \[255, 255\]"):
        gan.adapt_and_generate(tf.fill([2, 8, 8, 1], 255.0), 3)
    gan.compile(optimizer=keras.optimizers.SGD())
    with pytest.raises(ValueError, match="'images'"):
        gan.train_on_batch({"pictures": tf.zeros([1, 2, 8, 8, 1])})


def test_bad_architecture_is_named():
    with pytest.raises(ValueError, match="divisible by 4"):
        resnet_generator((10, 10, 1), blocks=2)
    with pytest.raises(ValueError, match="critic takes"):
        ReptileGAN(resnet_generator((8, 8, 1), filters=2, blocks=1),
                   resnet_critic((16, 16, 1), filters=2, blocks=1))


def test_postprocess_inverts_omniglot_preprocessing():
    from tfmeta.data.omniglot import make_preprocess

    preprocess = make_preprocess(28)
    raw = np.ones([1, 105, 105, 1], np.float32)
    raw[:, 30:70, 40:60] = 0.0  # a dark stroke on white, as Omniglot files are
    back = make_postprocess(preprocess, (105, 105, 1))(preprocess(raw)).numpy()
    assert back.shape == raw.shape
    assert back[0, 50, 50, 0] < 0.05 and back[0, 5, 5, 0] > 0.95
    with pytest.raises(ValueError, match="affinely"):
        make_postprocess(lambda x: tf.square(tf.convert_to_tensor(x)) * tf.range(
            105.0)[None, :, None, None] / 105, (105, 105, 1))


def test_log_generation_writes_scalars_and_image_grids(tmp_path):
    from tfmeta.algorithms.generation_eval import log_generation

    result = {"accuracy": 0.5, "unadapted_accuracy": 0.1, "improvement": 0.4,
              "classifier_real_accuracy": 0.9, "chance": 0.1}
    images = np.zeros([4, 8, 8, 1], np.float32)
    log_generation(str(tmp_path), result, [(images, images, images)])
    events = [f for f in os.listdir(tmp_path) if f.startswith("events")]
    tags = {value.tag for event in tf.compat.v1.train.summary_iterator(str(tmp_path / events[0]))
            for value in event.summary.value}
    assert {"generation/accuracy", "generation/unadapted_accuracy",
            "episode0/real", "episode0/adapted_samples"} <= tags


@pytest.fixture
def mnist_dataset(tmp_path):
    write_mnist_npz(tmp_path / "mnist.npz", train_per_digit=20, test_per_digit=10)
    return str(tmp_path), load_dataset("mnist", str(tmp_path))


@pytest.mark.slow
def test_trains_resumes_evaluates_and_exports_on_mnist(mnist_dataset, tmp_path):
    from tfmeta.training import evaluation, export, trainer

    data_dir, dataset = mnist_dataset
    config = tiny_config()
    config.num_steps = 2
    workdir = str(tmp_path / "run")
    trainer.train(config, workdir, data_dir, verbose=0)
    config.num_steps = 4
    learner = trainer.train(config, workdir, data_dir, verbose=0)  # resumes at step 2
    assert int(learner.optimizer.iterations.numpy()) == 4
    path = export.export_workdir(workdir, data_dir)
    result = evaluation.evaluate_workdir(workdir, data_dir, num_episodes=2)
    assert result["algo"] == "reptile_gan" and result["ways"] == 10  # nine digits + the 9
    # Each episode scores samples_per_episode samples as right or wrong, so the mean over the
    # episodes counts whole samples; the improvement is paired: adapted minus unadapted.
    assert result["episodes"] == 2
    for key in ("accuracy", "unadapted_accuracy"):
        hits = result[key] * result["episodes"] * result["samples_per_episode"]
        assert abs(hits - round(hits)) < 1e-4 and 0 <= round(hits) <= 2 * result[
            "samples_per_episode"], (key, result)
    assert abs(result["improvement"] - (result["accuracy"] - result["unadapted_accuracy"])) < 1e-6
    assert result["chance"] == pytest.approx(1.0 / result["ways"])

    images = dataset.split("test").images[:4]
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import json, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({path!r})
        images = tf.constant(np.load({str(tmp_path / 'images.npy')!r}))
        adapted = loaded.signatures["adapt_and_generate"](images=images,
                                                          num_samples=tf.constant(5))["samples"]
        meta = loaded.signatures["generate"](num_samples=tf.constant(3))["samples"]
        try:
            loaded.signatures["adapt_and_generate"](images=images * 255.0,
                                                    num_samples=tf.constant(5))
            error = ""
        except tf.errors.InvalidArgumentError as e:
            error = e.message
        print(json.dumps({{"adapted": adapted.shape.as_list(), "meta": meta.shape.as_list(),
                          "low": float(tf.reduce_min(adapted)),
                          "high": float(tf.reduce_max(adapted)), "error": error}}))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["adapted"] == [5, 28, 28, 1] and out["meta"] == [3, 28, 28, 1]
    assert 0.0 <= out["low"] <= out["high"] <= 1.0
    assert "[0, 1]" in out["error"]


@pytest.mark.slow
def test_omniglot_meta_steps_and_raw_size_samples(omniglot):
    config = tiny_config("omniglot")
    learner = recipe_of("reptile_gan").build(config, omniglot.input_shape)
    learner.compile(optimizer=keras.optimizers.Adam(1e-4))
    train, val = learner.training_episodes(omniglot, DataSpec.from_config(config))
    history = learner.fit(train, steps_per_epoch=2, epochs=1, validation_data=val, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    signatures = learner.serving_module(omniglot).signatures()
    raw = 1.0 - omniglot.split("test").class_examples(0)[:4]  # model inputs are inverted raw
    raw = tf.image.resize(raw, (105, 105))
    samples = signatures["adapt_and_generate"](images=raw, num_samples=tf.constant(2))["samples"]
    assert samples.shape == (2, 105, 105, 1)


class TestReptileGANContract(LearnerContract):
    """Reptile-GAN under the learner contract, on one-class tasks of the bundled Omniglot
    (4 images each, 28x28) with a small FIGR pair (8 base filters, latent 8, 2 inner steps).

    A generator has no query loss, so its objective here is how far the samples of the
    adapted generator are from the task's images (the mean distance of each sample to its
    nearest task image, lower is better), and "fits one meta-batch" means that every
    sample of the meta generator, trained on one fixed task, is nearer to one of that
    task's 4 images than to any of 64 images of other characters (chance: 4 / 68).
    Measured while choosing the sizes: held-out distance 0.49 -> 0.32 after 20 steps;
    the fit reached 16/16 after 120 steps and stays noisy (GAN dynamics) around it.
    """

    shots = 4
    meta_batch_size = 1
    learning_rate = 3e-3
    train_steps = 20
    overfit_steps = 200
    samples = 16
    signature = "adapt_and_generate_with_seed"
    output_key = "samples"

    def make_learner(self, input_shape, ways):
        del ways  # one class per task
        generator, critic = resnet_gan(tuple(input_shape), latent_dim=8, filters=8, blocks=2,
                                       units_per_block=1)
        return ReptileGAN(generator, critic, inner_steps=2, inner_steps_test=2,
                          inner_optimizer="adam", inner_lr=1e-3)

    def training_batches(self, dataset, seed):
        return single_class_tasks(dataset.split("train"), self.shots, self.meta_batch_size,
                                  seed=seed)

    def held_out_batch(self, dataset, seed):
        return next(iter(single_class_tasks(dataset.split("test"), self.shots, 8, seed=seed)))

    def objective(self, learner, batch) -> float:
        @tf.function
        def distance(images, seed):
            samples = learner.adapt_and_generate(images, self.samples, seed=seed)
            pairs = tf.reduce_mean(tf.abs(samples[:, None] - images[None]), axis=[2, 3, 4])
            return tf.reduce_mean(tf.reduce_min(pairs, axis=1))

        images = batch["images"]
        return float(np.mean([distance(images[i], tf.constant(i, tf.int64))
                              for i in range(images.shape[0])]))

    def fit_score(self, learner, batch) -> float:
        task = batch["images"][0].numpy()
        if not hasattr(self, "_others"):
            omniglot = load_dataset("omniglot")
            self._others = next(iter(single_class_tasks(omniglot.split("train"), 4, 16,
                                                        seed=5)))["images"].numpy()
        pool = np.concatenate([task, self._others.reshape(-1, *task.shape[1:])])
        samples = learner.generate(self.samples, seed=tf.constant(3, tf.int64)).numpy()
        nearest = np.abs(samples[:, None] - pool[None]).mean(axis=(2, 3, 4)).argmin(axis=1)
        return float(np.mean(nearest < len(task)))

    def serving_inputs(self, dataset) -> dict:
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 1, size=(self.shots, *dataset.raw_shape)).astype(np.float32)
        return {"images": images, "num_samples": np.int32(3), "seed": np.int64(7)}

    def serve_in_process(self, learner, dataset, inputs) -> np.ndarray:
        module = GenerationServing(learner, dataset)
        return module.adapt_and_generate_with_seed(
            tf.constant(inputs["images"]), tf.constant(inputs["num_samples"]),
            tf.constant(inputs["seed"]))["samples"].numpy()

    def served_shape(self, dataset) -> tuple:
        return (3, *dataset.raw_shape)


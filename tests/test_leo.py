"""LEO: the inner loops, KL, penalties and second order against hand-worked numbers;
the learner contract on embedding pickles; configs and the evaluation protocol."""

import math
import os
import pickle

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms import leo as leo_lib
from tfmeta.algorithms.leo import LEO
from tfmeta.episode_spec import DataSpec
from tfmeta.tensors import class_means, cross_entropy

# ------------------------------------------------------------------ fixtures
EMBEDDING_DIM = 640


CLASS_DIRECTIONS = 16  # the dimension of the subspace the fixture's classes vary in


@pytest.fixture(scope="module")
def leo_embeddings(tmp_path_factory):
    """A FewShotDataset read from small pickles in the LEO release's exact format.

    24 classes per split, 10-14 examples each, as raw (unnormalized, non-negative)
    features; keys as bytes. A class's prototype is a mean shared by all classes plus a
    random point of a 16-dimensional subspace shared by all splits, as a backbone's
    features of unseen classes vary along the directions of the training classes'; its
    examples are the prototype plus noise in every dimension. (With prototypes drawn
    independently in all 640 dimensions, nothing learned on the training classes carried
    over to the test classes: see TestLEOContract.)
    """
    from tfmeta.data import load_dataset

    root = tmp_path_factory.mktemp("leo_embeddings")
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 1, EMBEDDING_DIM)
    basis = rng.normal(size=(CLASS_DIRECTIONS, EMBEDDING_DIM)) / np.sqrt(CLASS_DIRECTIONS)
    for split in ("train", "val", "test"):
        keys, rows = [], []
        for c in range(24):
            wnid = f"n{split[:2]}{c:05d}"
            prototype = mean + rng.normal(size=CLASS_DIRECTIONS) @ basis
            for n in range(10 + c % 5):
                keys.append(f"{len(keys)}-{wnid}-{wnid}_{n}.JPEG".encode())
                rows.append(np.abs(prototype + 0.6 * rng.normal(size=EMBEDDING_DIM)))
        folder = root / "miniImageNet" / "center"
        os.makedirs(folder, exist_ok=True)
        with open(folder / f"{split}_embeddings.pkl", "wb") as f:
            pickle.dump({"keys": np.array(keys), "embeddings": np.array(rows, np.float32)}, f,
                        protocol=2)
    return load_dataset("mini_imagenet", str(root), embeddings="center")


class TestLEOContract(ClassifierContract):
    """LEO with the paper's clipping (each meta-gradient to 0.1 by value and by norm) at
    Adam 1e-3: 100 steps lower the held-out loss by more than 0.1 (min_loss_drop).

    Measured (same random draws before and after): 1.6033 -> 1.3097; with the contract's
    seeds 1 and 2, 1.6086 -> 1.4325 and 1.6062 -> 1.3865. With meta-gradients that reached
    only the learned inner rates, 1.6033 -> 1.5905; with the decoder's zeroed, -> 1.5867;
    with their signs flipped, -> 2.80. On the fixture's former classes, independent in all
    640 dimensions, the loss only wandered (1.6063 -> 1.6056 after 100 steps, -> 1.6394
    after 200) and the rates-only bug passed (-> 1.6050): the check asserted nothing."""

    dataset_fixture = "leo_embeddings"
    train_steps = 100
    min_loss_drop = 0.1

    def make_learner(self, input_shape, ways):
        del ways  # LEO decodes one classifier row per class: any N
        return LEO(embedding_dim=input_shape[0], num_latents=16, dropout_rate=0.3,
                   kl_weight=1e-3, orthogonality_penalty_weight=1e-3)


# ------------------------------------------------------------------ helpers
def identity_leo(monkeypatch, inner_steps, finetuning_steps=0, inner_lr=0.5, finetuning_lr=0.5):
    """LEO with D = L = 2, an identity encoder and an identity (mean) decoder.

    encode: latent means = the class mean of the support embeddings (stddev part 0);
    decode: weight means = latents (decoder kernel [I | 0]). Not training, so
    codes and weights are the means: classifier weights w = z.
    """
    learner = LEO(embedding_dim=2, num_latents=2, inner_steps=inner_steps,
                  finetuning_steps=finetuning_steps, inner_lr_init=inner_lr,
                  finetuning_lr_init=finetuning_lr, dropout_rate=0.0)

    def identity_encode(self, support_images, support_labels, num_classes, training):
        means = class_means(support_images, support_labels, num_classes)
        return tf.concat([means, tf.zeros_like(means)], axis=-1)

    monkeypatch.setattr(LEO, "encode", identity_encode)
    learner.decoder.kernel.assign(np.concatenate([np.eye(2), np.zeros((2, 2))], axis=1))
    return learner


# x0 = [1, 0] is class 0, x1 = [0, 1] class 1 (one shot each).
SUPPORT = tf.constant([[[1.0, 0.0], [0.0, 1.0]]])
LABELS = tf.constant([[0, 1]])


# ------------------------------------------------------------ hand-worked math
@pytest.mark.parametrize("steps, expected", [
    # z_0 = I (identity encoder: each class's code is its own example). logits of x_s
    # are x_s @ w.T, i.e. row s of w.T. The loss is the mean CE over S = 2 examples, so
    # dL/dlogits_s = (softmax - onehot) / 2 and dL/dw_n = sum_s dL/dlogits_sn x_s.
    # Step 1: logits of x0 = [1, 0], softmax = [sigmoid(1), 1 - sigmoid(1)]
    #   = [0.7310586, 0.2689414]; dL/dlogits_0 = [-0.1344707, 0.1344707], and x1 the
    #   mirror image, so dL/dw_0 = [-0.1344707, 0.1344707] = -dL/dw_1. The identity
    #   decoder makes dL/dz = dL/dw; with inner rate 0.5:
    #   z_1 = [[1 + 0.0672354, -0.0672354], [-0.0672354, 1 + 0.0672354]].
    (1, [[1.0672354, -0.0672354], [-0.0672354, 1.0672354]]),
    # Step 2: logits of x0 = [1.0672354, -0.0672354], margin 1.1344707,
    #   softmax_0 = sigmoid(1.1344707) = 0.7566630, dL/dlogits_00 = -0.1216685:
    #   z_2 = z_1 + 0.5 * 0.1216685 * [[1, -1], [-1, 1]].
    (2, [[1.1280696, -0.1280696], [-0.1280696, 1.1280696]]),
])
def test_latent_inner_loop_trajectory(monkeypatch, steps, expected):
    learner = identity_leo(monkeypatch, inner_steps=steps)
    adaptation = learner.adapt(SUPPORT, LABELS, training=False)
    np.testing.assert_allclose(adaptation.initial_latents.numpy()[0], np.eye(2))
    np.testing.assert_allclose(adaptation.latents.numpy()[0], expected, rtol=1e-5)
    # The classifier is the decoded (identity) final latents; no fine-tuning steps.
    np.testing.assert_allclose(adaptation.classifier_weights.numpy()[0], expected, rtol=1e-5)
    # Encoder penalty: mean of (z_k - z_0)^2 over the 4 entries = d^2 for off-diagonal d.
    d = expected[0][1]
    np.testing.assert_allclose(adaptation.encoder_penalty.numpy(), [d * d], rtol=1e-5)


def test_finetuning_continues_the_trajectory_in_weight_space(monkeypatch):
    """With an identity decoder dL/dw = dL/dz, so one fine-tuning step at the same rate
    lands where a third latent step would. The logit margin of x0 is now
    z2_00 - z2_10 = 2 * 1.1280696 - 1 = 1.2561392, so z_3 = z_2 + 0.5 * (1 - sigmoid(1.2561392)) / 2
    on the diagonal (= 1.1834794)."""
    learner = identity_leo(monkeypatch, inner_steps=2, finetuning_steps=1)
    adaptation = learner.adapt(SUPPORT, LABELS, training=False)
    z3 = 1.1280696 + 0.25 * (1 - 1 / (1 + math.exp(-1.2561392)))
    np.testing.assert_allclose(adaptation.classifier_weights.numpy()[0],
                               [[z3, 1 - z3], [1 - z3, z3]], rtol=1e-5)
    np.testing.assert_allclose(adaptation.latents.numpy()[0, 0, 0], 1.1280696, rtol=1e-5)


def test_kl_divergence_by_hand():
    # log N(z; mu, s) - log N(z; 0, 1) = -((z - mu) / s)^2 / 2 - log s + z^2 / 2.
    # z=1, mu=0.5, s=0.5: -0.5 + log 2 + 0.5 = 0.6931472;  z=0, mu=0, s=1: 0.
    # Task mean: 0.3465736. Second task: z=2, mu=0, s=2: -0.5 - log 2 + 2 = 0.8068528.
    samples = tf.constant([[1.0, 0.0], [2.0, 2.0]])
    means = tf.constant([[0.5, 0.0], [0.0, 0.0]])
    stddev = tf.constant([[0.5, 1.0], [2.0, 2.0]])
    np.testing.assert_allclose(leo_lib.kl_divergence(samples, means, stddev).numpy(),
                               [0.3465736, 0.8068528], rtol=1e-6)


def test_orthogonality_penalty_by_hand():
    # Rows [1, 0] and [1, 1]: cosine 1/sqrt(2), so C - I has two off-diagonal entries
    # 1/sqrt(2); mean of squares = 2 * 0.5 / 4 = 0.25.
    kernel = tf.constant([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(leo_lib.orthogonality_penalty(kernel).numpy(), 0.25, rtol=1e-6)
    # Orthogonal rows of any length: no penalty.
    np.testing.assert_allclose(
        leo_lib.orthogonality_penalty(tf.constant([[3.0, 0.0, 0.0], [0.0, 0.0, 0.5]])), 0.0,
        atol=1e-7)


def test_gradient_clipping_by_value_then_norm():
    # [0.3, -0.05] -> by value [0.1, -0.05] (norm 0.1118034) -> by norm *0.1/0.1118034.
    clipped = leo_lib.clip_gradients([tf.constant([0.3, -0.05]), tf.constant([0.01])], 0.1, 0.1)
    np.testing.assert_allclose(clipped[0].numpy(), [0.0894427, -0.0447214], rtol=1e-5)
    np.testing.assert_allclose(clipped[1].numpy(), [0.01])


def test_sampling_uses_the_reference_stddev_and_means_at_test_time():
    learner = LEO(embedding_dim=2, num_latents=2)
    # stddev = exp(s) - (1 - offset): s = log(1.2), offset 0 -> 0.2; offset 0.3 -> 0.5.
    params = tf.concat([tf.fill([1, 20000, 1], 0.3), tf.fill([1, 20000, 1], math.log(1.2))], -1)
    samples, kl = learner.possibly_sample(params, 0.0, training=True)
    assert abs(float(tf.math.reduce_std(samples)) - 0.2) < 0.005
    assert abs(float(tf.reduce_mean(samples)) - 0.3) < 0.005
    assert float(kl[0]) != 0.0
    samples, _ = learner.possibly_sample(params, 0.3, training=True)
    assert abs(float(tf.math.reduce_std(samples)) - 0.5) < 0.01
    means, kl = learner.possibly_sample(params, 0.0, training=False)
    np.testing.assert_allclose(means.numpy(), 0.3)
    np.testing.assert_allclose(kl.numpy(), [0.0])
    sampled_at_test = LEO(embedding_dim=2, num_latents=2, deterministic_test=False)
    samples, _ = sampled_at_test.possibly_sample(params, 0.0, training=False)
    assert float(tf.math.reduce_std(samples)) > 0.1


# ------------------------------------------------------------------ second order
def unrolled_query_loss(learner, episodes, stop_inner_gradients):
    """LEO's inner loops written out with the closed-form CE gradient (not tapes).

    Deterministic (training=False): w = z @ Wd_mean with Wd_mean the first D columns of
    the decoder kernel; for mean CE over S support examples,
    dL/dlogits = (softmax - onehot) / S, dL/dw = dL/dlogits^T x, dL/dz = dL/dw Wd_mean^T.
    """
    x, labels = episodes["support_images"], episodes["support_labels"]
    num_classes = int(tf.reduce_max(labels)) + 1
    onehot = tf.one_hot(labels, num_classes)
    count = tf.cast(tf.shape(x)[1], tf.float32)
    decoder_means = tf.convert_to_tensor(learner.decoder.kernel)[:, :learner.embedding_dim]

    def grad_w(w):
        logits = tf.einsum("bsd,bnd->bsn", x, w)
        g = tf.einsum("bsn,bsd->bnd", (tf.nn.softmax(logits) - onehot) / count, x)
        return tf.stop_gradient(g) if stop_inner_gradients else g

    params = learner.encode(x, labels, num_classes, training=False)
    z = params[..., :learner.num_latents]
    for _ in range(learner.inner_steps):
        z = z - learner.inner_lr * tf.matmul(grad_w(z @ decoder_means), decoder_means,
                                             transpose_b=True)
    w = z @ decoder_means
    for _ in range(learner.finetuning_steps):
        w = w - learner.finetuning_lr * grad_w(w)
    logits = tf.einsum("bmd,bnd->bmn", episodes["query_images"], w)
    return tf.reduce_mean(cross_entropy(episodes["query_labels"], logits))


def test_meta_gradient_is_second_order_through_both_loops():
    keras.utils.set_random_seed(3)
    learner = LEO(embedding_dim=4, num_latents=3, inner_steps=2, finetuning_steps=2,
                  inner_lr_init=0.7, finetuning_lr_init=0.3)
    rng = np.random.default_rng(0)
    episodes = {"support_images": tf.constant(rng.normal(size=(2, 4, 4)), tf.float32),
                "support_labels": tf.constant([[0, 0, 1, 1], [0, 0, 1, 1]]),
                "query_images": tf.constant(rng.normal(size=(2, 6, 4)), tf.float32),
                "query_labels": tf.constant([[0, 1, 0, 1, 0, 1]] * 2)}
    variables = learner.trainable_variables

    def gradients(loss_fn):
        with tf.GradientTape() as tape:
            loss = loss_fn()
        return [g.numpy() for g in tape.gradient(loss, variables)]

    tapes = gradients(lambda: tf.reduce_mean(learner.query_loss(
        episodes, learner.query_logits(episodes, training=False))))
    unrolled = gradients(lambda: unrolled_query_loss(learner, episodes, False))
    first_order = gradients(lambda: unrolled_query_loss(learner, episodes, True))
    for variable, a, b in zip(variables, tapes, unrolled):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=variable.path)
    decoder = [v.path for v in variables].index(learner.decoder.kernel.path)
    assert not np.allclose(tapes[decoder], first_order[decoder], rtol=1e-3, atol=1e-5)


def test_meta_gradients_are_clipped_and_include_every_variable(leo_embeddings):
    from tfmeta.data import EpisodeShape, episode_dataset

    keras.utils.set_random_seed(0)
    learner = LEO(embedding_dim=EMBEDDING_DIM, num_latents=8, gradient_threshold=0.01,
                  gradient_norm_threshold=0.02)
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    batch = next(iter(episode_dataset(leo_embeddings.split("train"), EpisodeShape(5, 1, 2), 4)))
    grads, loss, logits = learner.compute_meta_gradients(batch)
    assert np.isfinite(float(loss)) and tuple(logits.shape) == (4, 10, 5)
    assert len(grads) == len(learner.trainable_variables) == 7
    for g in grads:
        assert float(tf.reduce_max(tf.abs(g))) <= 0.01 + 1e-7
        assert float(tf.norm(g)) <= 0.02 + 1e-6
    assert all(float(tf.norm(g)) > 0 for g in grads)


# --------------------------------------------------------- configs and protocol
@pytest.mark.parametrize("dataset, setting, outer_lr, kl_weight", [
    ("mini_imagenet", "5w1s", 2.739071e-4, 0.756143),
    ("mini_imagenet", "5w5s", 4.102361e-4, 0.466387),
    ("tiered_imagenet", "5w1s", 8.659053e-4, 2.034189e-3),
    ("tiered_imagenet", "5w5s", 6.110314e-4, 1.622811),
])
def test_configs_hold_the_papers_hyperparameters(dataset, setting, outer_lr, kl_weight):
    from tfmeta.config import get_config

    config = get_config("leo", dataset, setting)
    assert config.optimizer.learning_rate == outer_lr
    assert config.learner.kl_weight == kl_weight
    assert (config.meta_batch_size, config.learner.inner_steps, config.learner.finetuning_steps,
            config.learner.num_latents) == (12, 5, 5, 64)
    learner = leo_lib.RECIPE.build(config, (EMBEDDING_DIM,))
    assert learner.dropout_rate == config.learner.dropout_rate


def test_building_from_a_config_rejects_images():
    from tfmeta.config import get_config

    with pytest.raises(ValueError, match=r"\(28, 28, 1\).*write_embeddings"):
        leo_lib.RECIPE.build(get_config("leo", "mini_imagenet"), (28, 28, 1))
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 1; got 0"):
        LEO(embedding_dim=4, inner_steps=0)


def test_evaluation_uses_every_remaining_example_as_a_query(leo_embeddings):
    from tfmeta.config import get_config

    config = get_config("leo", "mini_imagenet", "5w1s")
    learner = leo_lib.RECIPE.build(config, leo_embeddings.input_shape)
    spec = DataSpec.from_config(config)
    result = learner.meta_test(leo_embeddings, spec, "test", 20, seed=0)
    assert result["queries"] == 9  # smallest test class: 10 examples, minus 1 shot
    assert result["episodes"] == 20 and result["ci95"] > 0
    correct = result["accuracy"] * 20 * 5 * 9  # a mean over exactly 20 x 5 x 9 queries
    assert abs(correct - round(correct)) < 1e-3, correct
    config.eval_queries = 4
    spec = DataSpec.from_config(config)
    assert learner.meta_test(leo_embeddings, spec, "test", 20, 0)["queries"] == 4

"""Supervised pre-training: the two in-graph few-shot classifiers against hand-worked numbers,
the batches of every training example, the learner contract, and a ProtoNet started from a
pre-training run."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms.pretrain import (
    Pretrain,
    crop_and_flip,
    example_batches,
    logistic_regression_logits,
    nearest_centroid_logits,
)
from tfmeta.data import ClassImages
from tfmeta.models import conv4


# ------------------------------------------------------------------ the classifiers
def test_nearest_centroid_by_hand():
    """Class 0: [3, 4] -> [0.6, 0.8] and [0, 2] -> [0, 1]; their mean [0.3, 0.9] has norm
    sqrt(0.9), so c_0 = [0.316228, 0.948683]. Class 1: [1, 0] -> c_1 = [1, 0]. The query
    [0, 5] -> [0, 1]: cosines 0.948683 and 0; times scale 2."""
    support = tf.constant([[[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]]])
    labels = tf.constant([[0, 0, 1]])
    logits = nearest_centroid_logits(support, labels, tf.constant([[[0.0, 5.0]]]), 2.0)
    np.testing.assert_allclose(logits.numpy(), [[[1.897367, 0.0]]], atol=1e-5)


def test_logistic_regression_one_step_by_hand():
    """Normalized support s = [[1, 0], [0, 1]], labels 0, 1. From W = 0, b = 0 every
    p = [0.5, 0.5], so p - y = [[-0.5, 0.5], [0.5, -0.5]]; grad_W = s^T (p - y) / 2 =
    [[-0.25, 0.25], [0.25, -0.25]], grad_b = 0. With lr 2: W = [[0.5, -0.5], [-0.5, 0.5]].
    The query [3, 4] -> [0.6, 0.8]: logits [0.3 - 0.4, -0.3 + 0.4] = [-0.1, 0.1]."""
    support = tf.constant([[[5.0, 0.0], [0.0, 0.5]]])  # normalized to the identity
    labels = tf.constant([[0, 1]])
    logits = logistic_regression_logits(support, labels, tf.constant([[[3.0, 4.0]]]),
                                        steps=1, learning_rate=2.0, l2=0.0)
    np.testing.assert_allclose(logits.numpy(), [[[-0.1, 0.1]]], atol=1e-6)


def test_logistic_regression_two_steps_with_l2_by_hand():
    """Step 2 from W1 above: support logits [0.5, -0.5] and [-0.5, 0.5] give
    p = [sigmoid(1), sigmoid(-1)] = [0.731059, 0.268941] (and mirrored), so
    p - y = [[-0.268941, 0.268941], [0.268941, -0.268941]]; grad_W = that / 2 + 0.1 * W1
    = [[-0.0844705, 0.0844705], [0.0844705, -0.0844705]]; b stays 0 (balanced classes).
    W2 = W1 - 2 grad_W = [[0.668941, -0.668941], [-0.668941, 0.668941]]; the query
    [0.6, 0.8] scores [0.6 - 0.8, 0.8 - 0.6] * 0.668941 = [-0.133788, 0.133788]."""
    support = tf.constant([[[1.0, 0.0], [0.0, 1.0]]])
    labels = tf.constant([[0, 1]])
    logits = logistic_regression_logits(support, labels, tf.constant([[[0.6, 0.8]]]),
                                        steps=2, learning_rate=2.0, l2=0.1)
    np.testing.assert_allclose(logits.numpy(), [[[-0.133788, 0.133788]]], atol=1e-5)


@pytest.mark.parametrize("classifier", ["nearest_centroid", "logistic"])
def test_query_logits_serve_any_number_of_ways(classifier):
    learner = Pretrain(conv4((28, 28, 1), filters=8), num_classes=10, classifier=classifier)
    rng = np.random.default_rng(0)
    for ways in (2, 7):
        logits = learner.adapt_and_predict(
            tf.constant(rng.uniform(size=(ways * 2, 28, 28, 1)), tf.float32),
            tf.repeat(tf.range(ways), 2), tf.constant(rng.uniform(size=(3, 28, 28, 1)),
                                                      tf.float32))
        assert logits.shape == (3, ways) and np.all(np.isfinite(logits.numpy()))


def test_weight_decay_is_half_the_squared_norm():
    learner = Pretrain(conv4((28, 28, 1), filters=4), num_classes=3, weight_decay=0.5)
    total = sum(float(np.sum(np.square(w.numpy()))) for w in learner.trainable_variables)
    np.testing.assert_allclose(float(learner.regularization_loss()), 0.25 * total, rtol=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="classifier"):
        Pretrain(conv4((28, 28, 1), filters=4), classifier="svm")
    with pytest.raises(ValueError, match="feature vectors"):
        Pretrain(conv4((28, 28, 1), filters=4, flatten=False))


# ---------------------------------------------------------------------- the batches
def numbered_classes():
    """3 classes of 4 examples; example i is an 8x8x1 image filled with i (one channel:
    no crop and flip, which colour images get)."""
    images = np.arange(12, dtype=np.float32)[:, None, None, None] * np.ones((1, 8, 8, 1))
    return ClassImages.from_lists([images[0:4], images[4:8], images[8:12]])


def test_batches_cover_every_example_once_per_epoch_and_resume():
    classes = numbered_classes()
    stream = [b for b in example_batches(classes, 4, seed=3).take(6)]
    for epoch in (stream[:3], stream[3:]):
        ids = np.concatenate([b["images"].numpy()[:, 0, 0, 0] for b in epoch]).astype(int)
        assert sorted(ids) == list(range(12))
    first = stream[0]["labels"].numpy()
    np.testing.assert_array_equal(first, stream[0]["images"].numpy()[:, 0, 0, 0] // 4)
    assert not np.array_equal(stream[0]["images"].numpy(), stream[3]["images"].numpy())
    resumed = next(iter(example_batches(classes, 4, seed=3, start_step=4)))
    np.testing.assert_array_equal(resumed["labels"].numpy(), stream[4]["labels"].numpy())
    # A batch that spans two epochs (batch 5 of 12 examples: positions 10..14).
    odd = [b["labels"].numpy() for b in example_batches(classes, 5, seed=3).take(3)]
    assert len(np.concatenate(odd)) == 15


def test_batches_refuse_a_head_smaller_than_the_classes():
    with pytest.raises(ValueError, match="learner.num_classes=3"):
        example_batches(numbered_classes(), 4, num_classes=2)


def test_crop_and_flip_moves_pixels_within_the_padding():
    """A crop of the zero-padded image (pad 4) shifts by at most 4 pixels: an image that is
    1 on a central 2x2 square keeps exactly that square's 4 ones, somewhere, or fewer if
    shifted out (never more); flipped or not."""
    image = np.zeros((16, 8, 8, 3), np.float32)
    image[:, 3:5, 3:5] = 1.0
    out = crop_and_flip(tf.constant(image), tf.constant([0, 1], tf.int64)).numpy()
    assert out.shape == image.shape
    ones = out[..., 0].reshape(16, -1).sum(-1)
    assert np.all(ones <= 4) and np.any(ones == 4) and not np.array_equal(out, image)


# ---------------------------------------------------------------------- the contract
class TestPretrainContract(ClassifierContract):
    def make_learner(self, input_shape, ways):
        return Pretrain(conv4(input_shape, filters=16), num_classes=644)

    def training_batches(self, dataset, seed):
        return example_batches(dataset.split("train"), 64, seed=seed)


# ------------------------------------------------------- starting from a pretrain run
@pytest.mark.slow
def test_protonet_starts_from_a_pretrain_run(tmp_path):
    from tfmeta.config import apply_overrides, get_config
    from tfmeta.training import trainer
    from tfmeta.training.run import build_compiled_learner, open_run

    workdir = str(tmp_path / "pretrain")
    config = apply_overrides(get_config("pretrain", "omniglot", "5w1s"), [
        "model.filters=8", "num_steps=3", "checkpoint_every=3", "val_episodes=4",
        "eval_meta_batch_size=4", "batch_size=16"])
    trainer.train(config, workdir, verbose=0)
    source = open_run(workdir).learner.feature_model()

    protonet = apply_overrides(get_config("protonet", "omniglot", "5w1s"), [
        "model.filters=8", f"model.init_from={workdir}"])
    keras.utils.set_random_seed(1)  # a different draw than the pretrain run's
    learner = build_compiled_learner(protonet, (28, 28, 1), init_from=workdir)
    assert int(learner.optimizer.iterations.numpy()) == 0
    target = learner.feature_model()
    copied = [v for v in source.weights]
    assert copied and len(copied) == len(target.weights)
    for want, got in zip(copied, target.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())

"""Meta Networks: per-example meta-information, layer augmentation, memory read, contract."""

import keras
import numpy as np
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms.metanet import MetaNet, augmented_dense, per_row_gradients
from tfmeta.models import conv4


def test_per_row_gradients_are_each_examples_own_gradient():
    # Linear softmax layer, W = 0, b = 0: each example's CE gradient is
    # x_i^T (softmax(0) - onehot(y_i)) = x_i^T ([0.5, 0.5] - onehot(y_i)).
    features = tf.constant([[[1.0, 2.0], [3.0, -1.0]]])            # B=1, n=2, D=2
    labels = tf.one_hot([[0, 1]], 2)
    kernel, bias = tf.zeros([2, 2]), tf.zeros([2])

    def losses(kernels, biases):
        logits = tf.einsum("bnd,bndk->bnk", features, kernels) + biases
        return tf.nn.softmax_cross_entropy_with_logits(labels, logits)

    grad_kernel, grad_bias = per_row_gradients(losses, kernel, bias, features)
    np.testing.assert_allclose(grad_kernel[0, 0], [[-0.5, 0.5], [-1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(grad_kernel[0, 1], [[1.5, -1.5], [-0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(grad_bias[0], [[-0.5, 0.5], [0.5, -0.5]], atol=1e-6)


def test_augmented_dense_sums_slow_and_fast_outputs():
    x = tf.constant([[[1.0, -2.0]]])                                 # B=1, n=1, D=2
    slow = (tf.constant([[1.0], [1.0]]), tf.constant([0.5]))         # relu(1 - 2 + 0.5) = 0
    fast = (tf.constant([[[2.0], [0.0]]]), tf.constant([[1.0]]))     # relu(2 + 1) = 3
    np.testing.assert_allclose(augmented_dense(x, slow, fast, tf.nn.relu), [[[3.0]]])
    np.testing.assert_allclose(augmented_dense(x, slow, fast), [[[-0.5 + 3.0]]])


def small_metanet(input_shape, ways):
    def features():
        return conv4(input_shape, filters=8, num_blocks=3)
    return MetaNet(features(), features(), num_classes=ways, representation_units=16,
                   meta_hidden=8)


def test_query_identical_to_a_support_example_reads_mostly_its_fast_weights(omniglot_small):
    """Attention is a softmax over cosine similarities, so a query that equals support
    example j has similarity 1 with it and gets the largest attention weight."""
    from tfmeta.data import EpisodeShape, episode_dataset

    keras.utils.set_random_seed(0)
    learner = small_metanet(omniglot_small.input_shape, 5)
    batch = next(iter(episode_dataset(omniglot_small.split("test"), EpisodeShape(5, 1, 1), 1,
                                      seed=0)))
    features, _ = learner._features(learner.embedding, batch, False)
    fast = learner.representation_fast_weights(features, batch["support_labels"])
    keys = learner.represent(features, fast)[0]
    similarity = tf.math.l2_normalize(keys, -1) @ tf.transpose(tf.math.l2_normalize(keys, -1))
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-5)
    assert np.all(np.argmax(similarity.numpy(), axis=1) == np.arange(5))


def test_fast_weights_change_the_logits(omniglot_small):
    from tfmeta.data import EpisodeShape, episode_dataset

    keras.utils.set_random_seed(0)
    learner = small_metanet(omniglot_small.input_shape, 5)
    batch = next(iter(episode_dataset(omniglot_small.split("test"), EpisodeShape(5, 1, 2), 2,
                                      seed=0)))
    logits = learner.query_logits(batch)
    relabelled = dict(batch, support_labels=tf.roll(batch["support_labels"], 1, axis=1))
    assert not np.allclose(logits.numpy(), learner.query_logits(relabelled).numpy())


class TestMetaNetContract(ClassifierContract):
    dataset_fixture = "omniglot_small"
    learning_rate = 3e-3

    def make_learner(self, input_shape, ways):
        return small_metanet(input_shape, ways)

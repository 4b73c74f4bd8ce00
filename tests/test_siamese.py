"""Siamese Networks: the contract, the weighted L1 pair logits, best-shot classification and
the balanced verification loss on hand-worked numbers."""

import math

import keras
import numpy as np
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms.siamese import SiameseNetwork, verification_loss
from tfmeta.models.siamese_net import siamese_twin


class TestSiameseContract(ClassifierContract):
    def make_learner(self, input_shape, ways):
        return SiameseNetwork(siamese_twin(input_shape, filters=16, units=64))


def identity_siamese():
    """The twin is the identity on 2-d inputs; alpha = [1, 2], bias -1."""
    learner = SiameseNetwork(keras.Sequential([keras.Input((2,)), keras.layers.Identity()]))
    learner.weighted_l1.set_weights([np.array([[1.0], [2.0]]), np.array([-1.0])])
    return learner


# support: class 0 shots [0, 0] and [3, 0], class 1 shot [0, 1]; query [1, 0].
# |q - s| = [1, 0], [2, 0], [1, 1] -> pair logits 1*1 - 1 = 0, 1*2 - 1 = 1, 1 + 2 - 1 = 2.
# class logits: class 0 = max(0, 1) = 1, class 1 = 2.
BATCH = {"support_images": tf.constant([[[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]]]),
         "support_labels": tf.constant([[0, 0, 1]]),
         "query_images": tf.constant([[[1.0, 0.0]]]), "query_labels": tf.constant([[0]])}


def test_pair_logits_are_weighted_l1_and_classes_take_the_best_shot():
    learner = identity_siamese()
    support, query = learner.embed(BATCH)
    np.testing.assert_allclose(learner.pair_logits(support, query)[0].numpy(), [[0, 1, 2]])
    np.testing.assert_allclose(learner.query_logits(BATCH)[0].numpy(), [[1, 2]])


def test_verification_loss_weighs_same_and_different_pairs_equally():
    # one same pair with logit 0: -log sigmoid(0) = ln 2;
    # three different pairs, logits ln 3 (twice) and 0: -log(1 - 0.75) = ln 4, ln 4, ln 2.
    # loss = (ln 2 + (ln 4 + ln 4 + ln 2) / 3) / 2 = (ln 2 + 5/3 ln 2) / 2 = 4/3 ln 2
    logits = tf.constant([[[0.0, math.log(3.0), math.log(3.0), 0.0]]])
    same = tf.constant([[[True, False, False, False]]])
    np.testing.assert_allclose(verification_loss(logits, same).numpy(), [4 / 3 * math.log(2)],
                               rtol=1e-6)


def test_meta_gradients_use_every_pair_of_the_episode():
    learner = identity_siamese()
    learner.compile(optimizer=keras.optimizers.SGD(0.1))
    # pair logits [0, 1, 2]; same = [True, True, False]:
    # same pairs: -log sigmoid(0) = ln 2, -log sigmoid(1) = log(1 + e^-1)
    # different pair: -log(1 - sigmoid(2)) = log(1 + e^2)
    # loss = ((ln 2 + log(1 + e^-1)) / 2 + log(1 + e^2)) / 2
    expected = ((math.log(2) + math.log1p(math.exp(-1))) / 2 + math.log1p(math.exp(2))) / 2
    gradients, loss, logits = learner.compute_meta_gradients(BATCH)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    np.testing.assert_allclose(logits[0].numpy(), [[1, 2]])
    # d loss / d bias = sum over pairs of weight * (sigmoid(logit) - same):
    # (1/4)(0.5 - 1) + (1/4)(sigmoid(1) - 1) + (1/2) sigmoid(2)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    d_bias = 0.25 * (0.5 - 1) + 0.25 * (sigmoid(1) - 1) + 0.5 * sigmoid(2)
    np.testing.assert_allclose(gradients[-1].numpy(), [d_bias], rtol=1e-5)


def test_serves_any_number_of_ways():
    learner = SiameseNetwork(siamese_twin((28, 28, 1), filters=8, units=16))
    logits = learner.adapt_and_predict(tf.random.uniform([9, 28, 28, 1]),
                                       tf.constant([0, 1, 2, 3, 4, 5, 6, 7, 8]),
                                       tf.random.uniform([2, 28, 28, 1]))
    assert logits.shape == (2, 9)

"""Prototypical Networks: the contract, and prototypes and distances on hand-worked numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms.prototypical import PrototypicalNetwork
from tfmeta.models import conv4


def identity_backbone(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Identity()])


class TestPrototypicalContract(ClassifierContract):
    def make_learner(self, input_shape, ways):
        return PrototypicalNetwork(conv4(input_shape, filters=16))


# Two classes of 2-d "images" (the backbone is the identity), support out of class order:
#   class 0: [0, 0], [2, 0]  -> prototype [1, 0]
#   class 1: [0, 2], [0, 4]  -> prototype [0, 3]
SUPPORT = [[0.0, 2.0], [0.0, 0.0], [0.0, 4.0], [2.0, 0.0]]
LABELS = [1, 0, 1, 0]
# query [1, 1]: |[0, 1]|^2 = 1 to c_0, |[1, -2]|^2 = 5 to c_1 -> logits [-1, -5]
# query [0, 3]: |[-1, 3]|^2 = 10 to c_0, 0 to c_1           -> logits [-10, 0]
QUERY = [[1.0, 1.0], [0.0, 3.0]]


def episode(support=SUPPORT, labels=LABELS, query=QUERY):
    return {"support_images": tf.constant([support]), "support_labels": tf.constant([labels]),
            "query_images": tf.constant([query]), "query_labels": tf.constant([[0, 1]])}


def test_prototypes_are_class_means():
    learner = PrototypicalNetwork(identity_backbone((2,)))
    support, _ = learner.embed(episode())
    prototypes = learner.prototypes(support, tf.constant([LABELS]))
    np.testing.assert_allclose(prototypes[0].numpy(), [[1, 0], [0, 3]])


def test_logits_are_negative_squared_distances_and_loss_is_cross_entropy():
    learner = PrototypicalNetwork(identity_backbone((2,)))
    batch = episode()
    logits = learner.query_logits(batch)
    np.testing.assert_allclose(logits[0].numpy(), [[-1, -5], [-10, 0]], atol=1e-6)
    # cross-entropy of [-1, -5] at 0 is log(1 + e^-4); of [-10, 0] at 1 is log(1 + e^-10)
    expected = (np.log1p(np.exp(-4.0)) + np.log1p(np.exp(-10.0))) / 2
    np.testing.assert_allclose(learner.query_loss(batch, logits).numpy(), [expected], rtol=1e-5)


def test_cosine_distance():
    learner = PrototypicalNetwork(identity_backbone((2,)), distance="cosine")
    # query [2, 0]: cos 1 to [1, 0], cos 0 to [0, 3]; query [1, 1]: 1/sqrt(2) to both
    logits = learner.query_logits(episode(query=[[2.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(logits[0].numpy(), [[1, 0], [0.5**0.5, 0.5**0.5]], atol=1e-6)


def test_serves_any_number_of_ways_and_ignores_support_order():
    learner = PrototypicalNetwork(identity_backbone((2,)))
    support = tf.constant([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    query = tf.constant([[4.0, 0.0], [0.0, 4.0], [0.1, 0.0]])
    labels = tf.constant([0, 1, 2])
    three = learner.adapt_and_predict(support, labels, query)
    assert three.shape == (3, 3)
    np.testing.assert_array_equal(np.argmax(three, -1), [1, 2, 0])
    order = [2, 0, 1]
    shuffled = learner.adapt_and_predict(tf.gather(support, order), tf.gather(labels, order),
                                         query)
    np.testing.assert_allclose(shuffled.numpy(), three.numpy())


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'manhattan'"):
        PrototypicalNetwork(identity_backbone((2,)), distance="manhattan")
    with pytest.raises(ValueError, match=r"\(2, 2, 1\).*flatten=True"):
        PrototypicalNetwork(identity_backbone((2, 2, 1)))

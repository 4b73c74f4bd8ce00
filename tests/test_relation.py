"""Relation Networks: the contract, class sums of feature maps, the pairing fed to the
relation module, and the MSE loss on hand-worked numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms.relation import RelationNetwork
from tfmeta.models.relation_net import relation_embedding
from tfmeta.tensors import class_sums


class TestRelationContract(ClassifierContract):
    def make_learner(self, input_shape, ways):
        return RelationNetwork(relation_embedding(input_shape, filters=16), relation_filters=16)


def identity_backbone(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Identity()])


def query_minus_twice_class():
    """A relation module scoring a pair [query, class] (channels) as query - 2 * class."""
    pairs = keras.Input((1, 1, 2))
    score = keras.layers.Lambda(lambda p: p[:, 0, 0, :1] - 2.0 * p[:, 0, 0, 1:])(pairs)
    return keras.Model(pairs, score)


def test_class_sums_of_feature_maps():
    # [B=1, S=3, 1, 2, 1] maps; labels [1, 0, 1] -> class 0: map 1; class 1: map 0 + map 2
    features = tf.constant([[[[[1.0], [2.0]]], [[[10.0], [20.0]]], [[[3.0], [4.0]]]]])
    sums = class_sums(features, tf.constant([[1, 0, 1]]))
    np.testing.assert_allclose(sums[0].numpy(), [[[[10], [20]]], [[[4], [6]]]])


def test_pairs_are_query_then_class_sum():
    learner = RelationNetwork(identity_backbone((1, 1, 1)),
                              relation_module=query_minus_twice_class())
    # class 0 shots 1 and 3 -> sum 4; class 1 shots 10 and 2 -> sum 12 (the paper sums, not
    # averages). query 5: 5 - 2*4 = -3 and 5 - 2*12 = -19.
    images = [[[[v]]] for v in (1.0, 10.0, 3.0, 2.0)]
    batch = {"support_images": tf.constant([images]), "support_labels": tf.constant([[0, 1, 0, 1]]),
             "query_images": tf.constant([[[[[5.0]]]]]), "query_labels": tf.constant([[0]])}
    np.testing.assert_allclose(learner.query_logits(batch)[0].numpy(), [[-3, -19]])


def test_loss_is_mse_of_sigmoid_scores_against_one_hot():
    learner = RelationNetwork(identity_backbone((1, 1, 1)),
                              relation_module=query_minus_twice_class())
    batch = {"query_labels": tf.constant([[0], [1]])}
    # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25.
    # episode 0, label 0: ((0.75 - 1)^2 + (0.25 - 0)^2) / 2 = 0.0625
    # episode 1, label 1: ((0.75 - 0)^2 + (0.25 - 1)^2) / 2 = 0.5625
    logits = tf.constant([[[np.log(3.0), -np.log(3.0)]]] * 2)
    np.testing.assert_allclose(learner.query_loss(batch, logits).numpy(), [0.0625, 0.5625],
                               rtol=1e-6)


def test_serves_any_number_of_ways():
    learner = RelationNetwork(relation_embedding((28, 28, 1), filters=8), relation_filters=8)
    logits = learner.adapt_and_predict(tf.random.uniform([14, 28, 28, 1]),
                                       tf.repeat(tf.range(7), 2), tf.random.uniform([3, 28, 28, 1]))
    assert logits.shape == (3, 7)


def test_bad_backbone_names_the_shape():
    with pytest.raises(ValueError, match=r"\(4,\)"):
        RelationNetwork(identity_backbone((4,)))

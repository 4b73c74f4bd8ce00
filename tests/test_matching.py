"""Matching Networks: the contract (with and without full context embeddings), and the
attention over the support set on hand-worked numbers."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms.matching import MatchingNetwork
from tfmeta.models import conv4


def identity_backbone(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Identity()])


class TestMatchingContract(ClassifierContract):
    def make_learner(self, input_shape, ways):
        return MatchingNetwork(conv4(input_shape, filters=16))


class TestMatchingFCEContract(ClassifierContract):
    def make_learner(self, input_shape, ways):
        return MatchingNetwork(conv4(input_shape, filters=16), fce=True, processing_steps=2)


def test_attention_over_cosine_similarities_sums_labels():
    learner = MatchingNetwork(identity_backbone((2,)))
    # support [1, 0] (class 0), [0, 1] and [1, 1] (class 1); query [3, 0]:
    # cosines 1, 0, 1/sqrt(2) -> a = softmax([1, 0, 0.7071]);
    # y_hat = [a_0, a_1 + a_2], logits = log(y_hat).
    batch = {"support_images": tf.constant([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]),
             "support_labels": tf.constant([[0, 1, 1]]),
             "query_images": tf.constant([[[3.0, 0.0]]]), "query_labels": tf.constant([[0]])}
    e = [math.e, 1.0, math.exp(0.5**0.5)]
    expected = [math.log(e[0] / sum(e)), math.log((e[1] + e[2]) / sum(e))]
    logits = learner.query_logits(batch)
    np.testing.assert_allclose(logits[0, 0].numpy(), expected, rtol=1e-5)
    # the loss is -log y_hat[label], i.e. softmax cross-entropy of log y_hat
    np.testing.assert_allclose(learner.query_loss(batch, logits).numpy(), [-expected[0]],
                               rtol=1e-5)


def test_full_context_embeddings_depend_on_the_support_set():
    keras.utils.set_random_seed(0)
    learner = MatchingNetwork(identity_backbone((4,)), fce=True, processing_steps=3)
    support = tf.random.normal([1, 3, 4])
    query = tf.random.normal([1, 2, 4])
    other = tf.concat([support[:, :2], tf.random.normal([1, 1, 4])], axis=1)
    g = learner.support_embedding(support, training=False)
    f = learner.query_embedding(query, g, training=False)
    f_other = learner.query_embedding(query, learner.support_embedding(other, False), False)
    assert f.shape == (1, 2, 4)
    assert not np.allclose(f.numpy(), f_other.numpy())
    # without FCE, f and g are the backbone's features
    plain = MatchingNetwork(identity_backbone((4,)))
    np.testing.assert_allclose(plain.query_embedding(query, g, False).numpy(), query.numpy())


def test_label_distribution_sums_to_one_for_any_ways():
    keras.utils.set_random_seed(1)
    learner = MatchingNetwork(identity_backbone((4,)), fce=True)
    logits = learner.adapt_and_predict(tf.random.normal([7, 4]),
                                       tf.constant([0, 1, 2, 3, 4, 5, 6]),
                                       tf.random.normal([3, 4]))
    assert logits.shape == (3, 7)
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(logits), -1).numpy(), np.ones(3), rtol=1e-5)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="got 0"):
        MatchingNetwork(identity_backbone((2,)), fce=True, processing_steps=0)
    with pytest.raises(ValueError, match=r"\(2, 2, 1\)"):
        MatchingNetwork(identity_backbone((2, 2, 1)))

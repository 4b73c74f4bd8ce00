"""Padded variable episodes: padding never reaches the logits, losses or meta-gradients of
the learners that take them, a padded episode scores as its unpadded self, and the loss and
accuracy helpers count real queries only (hand-worked numbers)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.algorithms.maml import MAML
from tfmeta.algorithms.maml_plusplus import MAMLPlusPlus
from tfmeta.algorithms.matching import MatchingNetwork
from tfmeta.algorithms.pretrain import Pretrain
from tfmeta.algorithms.prototypical import PrototypicalNetwork
from tfmeta.tensors import (
    ABSENT_LOGIT,
    accuracy,
    class_means,
    cross_entropy,
    embed_support_and_query,
    mask_absent_classes,
    one_hot_classes,
)

IMAGE_SHAPE = (4, 4, 1)
SUPPORT_SLOTS, QUERY_SLOTS = 8, 6


def encoder():
    """A conv with batch norm: padding inside its batch would shift every real feature."""
    return keras.Sequential([keras.Input(IMAGE_SHAPE), keras.layers.Conv2D(3, 3, padding="same"),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.Flatten()])


LEARNERS = {
    "protonet": lambda: PrototypicalNetwork(encoder()),
    "protonet_cosine": lambda: PrototypicalNetwork(encoder(), distance="cosine"),
    "matching": lambda: MatchingNetwork(encoder()),
    "matching_fce": lambda: MatchingNetwork(encoder(), fce=True, processing_steps=2),
    "pretrain_centroid": lambda: Pretrain(encoder(), num_classes=4),
    "pretrain_logistic": lambda: Pretrain(encoder(), num_classes=4, classifier="logistic",
                                          logistic_steps=5),
    "protomaml": lambda: MAML(encoder(), inner_lr=0.1, inner_steps=2, head="prototypes"),
    "protomaml_running_stats": lambda: MAML(encoder(), inner_lr=0.1, head="prototypes",
                                            batch_norm="running_stats"),
    "maml_zeros_head": lambda: MAML(encoder(), inner_lr=0.1, head="zeros"),
    "maml_plusplus_prototypes": lambda: MAMLPlusPlus(encoder(), inner_lr=0.1, inner_steps=2,
                                                     head="prototypes"),
}


def make_learner(name):
    keras.utils.set_random_seed(0)
    learner = LEARNERS[name]()
    learner.compile(optimizer=keras.optimizers.SGD(0.1))
    return learner


def episode(seed, support_per_class, query_per_class):
    """An unpadded class-major episode with class imbalance, unbatched."""
    rng = np.random.default_rng(seed)
    support_labels = np.repeat(np.arange(len(support_per_class)), support_per_class)
    query_labels = np.repeat(np.arange(len(query_per_class)), query_per_class)
    return {"support_images": rng.normal(size=(len(support_labels), *IMAGE_SHAPE)),
            "support_labels": support_labels,
            "query_images": rng.normal(size=(len(query_labels), *IMAGE_SHAPE)),
            "query_labels": query_labels}


# Three ways (supports 1, 3, 2; queries 2, 1, 2) and two ways (2, 1; 1, 2) in one meta-batch:
# the second episode has one absent class in the batch's 3-wide logits.
EPISODES = [episode(1, [1, 3, 2], [2, 1, 2]), episode(2, [2, 1], [1, 2])]


def padded(task, filler, seed=0):
    """`task` padded to the slots with label -1 and `filler` images ("zeros" or "random",
    large so that any leak shows)."""
    rng = np.random.default_rng(100 + seed)
    result = {}
    for part, slots in (("support", SUPPORT_SLOTS), ("query", QUERY_SLOTS)):
        images, labels = task[f"{part}_images"], task[f"{part}_labels"]
        shape = (slots - len(labels), *IMAGE_SHAPE)
        padding = np.zeros(shape) if filler == "zeros" else 50 * rng.normal(size=shape)
        result[f"{part}_images"] = np.concatenate([images, padding])
        result[f"{part}_labels"] = np.concatenate([labels, -np.ones(shape[0], int)])
    return result


def meta_batch(tasks):
    return {k: tf.constant(np.stack([t[k] for t in tasks]),
                           tf.int32 if k.endswith("labels") else tf.float32)
            for k in tasks[0]}


def real_rows(logits, tasks):
    """The logits of each task's real queries over its own classes."""
    return [np.asarray(logits[b, :len(t["query_labels"]), :t["support_labels"].max() + 1])
            for b, t in enumerate(tasks)]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", LEARNERS)
def test_padding_never_reaches_the_logits(name, training):
    learner = make_learner(name)
    assert learner.variable_episodes
    zeros = learner.query_logits(meta_batch([padded(t, "zeros") for t in EPISODES]), training)
    noise = learner.query_logits(meta_batch([padded(t, "random", i)
                                             for i, t in enumerate(EPISODES)]), training)
    assert zeros.shape == (2, QUERY_SLOTS, 3)
    for a, b in zip(real_rows(zeros, EPISODES), real_rows(noise, EPISODES)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # The two-way episode's third class has no support: never predicted.
    two_way_queries = len(EPISODES[1]["query_labels"])
    np.testing.assert_array_equal(noise[1, :two_way_queries, 2], ABSENT_LOGIT)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", LEARNERS)
def test_padded_episode_scores_as_unpadded(name, training):
    learner = make_learner(name)
    for i, task in enumerate(EPISODES):
        alone = learner.query_logits(meta_batch([task]), training)
        in_padding = learner.query_logits(meta_batch([padded(task, "random", i)]), training)
        np.testing.assert_allclose(real_rows(in_padding, [task])[0], np.asarray(alone)[0],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LEARNERS)
def test_meta_gradients_ignore_padding(name):
    learner = make_learner(name)
    zeros = learner.compute_meta_gradients(meta_batch([padded(t, "zeros") for t in EPISODES]))
    noise = learner.compute_meta_gradients(meta_batch([padded(t, "random", i)
                                                       for i, t in enumerate(EPISODES)]))
    np.testing.assert_allclose(zeros[1], noise[1], rtol=1e-6)
    assert any(np.abs(g).max() > 0 for g in zeros[0])
    for a, b in zip(zeros[0], noise[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # One episode per meta-batch: the padded one's meta-gradient is the unpadded one's.
    task = EPISODES[0]
    alone = learner.compute_meta_gradients(meta_batch([task]))
    in_padding = learner.compute_meta_gradients(meta_batch([padded(task, "random")]))
    np.testing.assert_allclose(alone[1], in_padding[1], rtol=1e-6)
    for a, b in zip(alone[0], in_padding[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padded_batches_of_any_ways_trace_once():
    learner = make_learner("protonet")
    logits = tf.function(learner.query_logits)
    three_and_two = meta_batch([padded(t, "zeros") for t in EPISODES])
    two_and_two = meta_batch([padded(EPISODES[1], "zeros"), padded(EPISODES[1], "random")])
    assert logits(three_and_two).shape[-1] == 3 and logits(two_and_two).shape[-1] == 2
    assert logits.experimental_get_tracing_count() == 1


def test_only_the_learners_that_leave_padding_out_say_they_take_it():
    assert not MAML(encoder(), head="learned").variable_episodes
    assert MAML(encoder(), head="prototypes").variable_episodes


# ---------------------------------------------------------------- the helpers
def test_loss_and_accuracy_count_real_queries_only():
    # query 0, label 0, logits [0, 0]:     p_0 = 1/2, loss ln 2, argmax 0 (right)
    # query 1, label 1, logits [ln 3, 0]:  p_1 = 1/4, loss ln 4, argmax 0 (wrong)
    # query 2 is padding; its logits are not even finite.
    # Mean loss (ln 2 + ln 4) / 2 = 1.5 ln 2, accuracy 1/2. An all-padding episode: 0 and 0.
    logits = tf.constant([[[0.0, 0.0], [math.log(3.0), 0.0], [np.nan, np.inf]],
                          [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    labels = tf.constant([[0, 1, -1], [-1, -1, -1]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = cross_entropy(labels, logits)
    np.testing.assert_allclose(loss, [1.5 * math.log(2.0), 0.0], rtol=1e-6)
    np.testing.assert_allclose(accuracy(labels, logits), [0.5, 0.0])
    gradient = tape.gradient(loss, logits).numpy()
    # d(loss)/d(logits) of a real query is (p - onehot) / 2: ((1/2, 1/2) - (1, 0)) / 2 and
    # ((3/4, 1/4) - (0, 1)) / 2; padding gets exactly 0, no NaN.
    np.testing.assert_allclose(gradient[0, :2], [[-0.25, 0.25], [0.375, -0.375]], rtol=1e-6)
    np.testing.assert_array_equal(gradient[0, 2], [0.0, 0.0])
    np.testing.assert_array_equal(gradient[1], np.zeros((3, 2)))


def old_cross_entropy(labels, logits):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits), -1)


def old_accuracy(labels, logits):
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(predictions, labels), tf.float32), axis=-1)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_without_padding_loss_and_accuracy_are_the_old_numbers_bit_for_bit(mode):
    rng = np.random.default_rng(3)
    logits = tf.constant(5 * rng.normal(size=(4, 15, 5)), tf.float32)
    labels = tf.constant(rng.integers(0, 5, size=(4, 15)), tf.int32)

    def both(labels, logits):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            new, old = cross_entropy(labels, logits), old_cross_entropy(labels, logits)
        return (new, old, tape.gradient(new, logits), tape.gradient(old, logits),
                accuracy(labels, logits), old_accuracy(labels, logits))

    if mode != "eager":
        both = tf.function(both, jit_compile=mode == "xla")
    new, old, new_gradient, old_gradient, new_accuracy, old_accuracy_ = both(labels, logits)
    np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(new_gradient, old_gradient)
    np.testing.assert_array_equal(new_accuracy, old_accuracy_)


def test_padding_is_in_no_class_and_absent_classes_are_masked():
    labels = tf.constant([[0, 1, 1, -1]])
    np.testing.assert_array_equal(one_hot_classes(labels)[0, 3], [0.0, 0.0])
    features = tf.constant([[[2.0], [4.0], [6.0], [1e6]]])
    np.testing.assert_allclose(class_means(features, labels)[0], [[2.0], [5.0]])
    # Three-wide logits: class 2 has no support example in this episode.
    logits = tf.constant([[[1.0, 2.0, 9.0]]])
    masked = mask_absent_classes(logits, labels).numpy()
    np.testing.assert_array_equal(masked, [[[1.0, 2.0, ABSENT_LOGIT]]])
    assert np.argmax(masked, -1)[0, 0] == 1


def test_the_network_sees_only_the_real_examples():
    seen = []

    def network(examples, training):
        seen.append(examples.shape[0])
        return tf.reshape(examples, [-1, 2])

    support = tf.constant([[[1.0, 1.0], [2.0, 2.0], [99.0, 99.0]]])   # the last is padding
    query = tf.constant([[[3.0, 3.0], [98.0, 98.0]]])                  # the last is padding
    support_features, query_features = embed_support_and_query(
        network, support, query, False, tf.constant([[0, 1, -1]]), tf.constant([[1, -1]]))
    assert seen == [3]
    np.testing.assert_array_equal(support_features[0], [[1, 1], [2, 2], [0, 0]])
    np.testing.assert_array_equal(query_features[0], [[3, 3], [0, 0]])
    # Serving: no query labels, every query is real.
    embed_support_and_query(network, support, query, False, tf.constant([[0, 1, -1]]))
    assert seen[-1] == 4

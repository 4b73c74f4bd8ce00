"""Padded variable episodes: padding never reaches the logits, losses or meta-gradients of
the learners that take them, a padded episode scores as its unpadded self, and the loss and
accuracy helpers count real queries only (hand-worked numbers)."""

import inspect
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.algorithms import (
    ALGORITHMS,
    MAML,
    build_learner,
    learner_class,
    prototype_head_algorithms,
    recipe_of,
)
from tfmeta.config import apply_overrides, get_config, section_schema, tiny_overrides
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


def backbone():
    """A conv with batch norm: padding inside its batch would shift every real feature."""
    return keras.Sequential([keras.Input(IMAGE_SHAPE), keras.layers.Conv2D(3, 3, padding="same"),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.Flatten()])


# Learner options that change how padding is left out, each value tried on every learner
# whose constructor takes the option (`section_schema`); no learner is named here.
OPTIONS = {"head": ("prototypes", "zeros"), "batch_norm": ("running_stats",),
           "distance": ("cosine",), "fce": (True, False), "classifier": ("logistic",)}


def learner_config(algo, arguments):
    """`algo`'s config for Omniglot, shrunk by its TINY overrides, with `arguments` set."""
    config = apply_overrides(get_config(algo, "omniglot"), tiny_overrides(algo))
    return apply_overrides(config, [f"learner.{k}={v!r}" for k, v in arguments.items()])


def takes_padding(algo, arguments) -> bool:
    """Whether `algo`'s learner, built as its config says with `arguments`, takes padded
    variable episodes (False where it refuses the arguments; its config as given must
    build)."""
    try:
        return build_learner(learner_config(algo, arguments), (28, 28, 1)).takes_padded_episodes
    except ValueError:  # e.g. Meta-SGD's refusal of a fast head
        if not arguments:
            raise
        return False


def padded_configurations() -> dict:
    """Test id -> (algo, learner arguments) of every image learner that says it takes padded
    episodes (`takes_padded_episodes`): each algorithm whose class may (not False whatever its
    arguments) as its config says, or where that does not, with the first `OPTIONS` value
    that makes it (a fast head); and that with each other `OPTIONS` value it takes."""
    found = {}
    for algo in sorted(ALGORITHMS):
        cls = learner_class(algo)
        if ("images" not in recipe_of(algo).input_kinds
                or inspect.getattr_static(cls, "takes_padded_episodes") is False):
            continue
        config = learner_config(algo, {})
        schema = section_schema(config, "learner")
        options = [{name: value} for name, values in OPTIONS.items() if name in schema
                   for value in values if config.learner.get(name, schema[name]) != value]
        base = {} if takes_padding(algo, {}) else next(
            (option for option in options if takes_padding(algo, option)), None)
        if base is None:
            continue
        for arguments in [base] + [{**base, **o} for o in options if {**base, **o} != base]:
            if arguments is base or takes_padding(algo, arguments):
                label = ",".join(f"{k}={v}" for k, v in arguments.items())
                found[f"{algo}[{label}]" if label else algo] = (algo, arguments)
    return found


LEARNERS = padded_configurations()


def test_every_learner_that_takes_padded_episodes_is_tested():
    """The derived list cannot silently shrink: it holds every image learner whose class
    always takes padded episodes, each prototype-head learner with that head, and every
    option value on some learner (at least the ten configurations once listed by hand)."""
    algos = {algo for algo, _ in LEARNERS.values()}
    always = {a for a in ALGORITHMS if "images" in recipe_of(a).input_kinds
              and inspect.getattr_static(learner_class(a), "takes_padded_episodes") is True}
    assert always and always <= algos, always - algos
    prototype_heads = {a for a, arguments in LEARNERS.values()
                       if arguments.get("head") == "prototypes"}
    assert set(prototype_head_algorithms()) <= prototype_heads
    tried = {(k, v) for algo, arguments in LEARNERS.values()
             for k, v in learner_config(algo, arguments).learner.items() if k in OPTIONS}
    assert {(k, v) for k, values in OPTIONS.items() for v in values} <= tried
    assert len(LEARNERS) >= 10, sorted(LEARNERS)


def make_learner(name):
    """The learner of configuration `name` on the small batch-norm `backbone` above."""
    algo, arguments = LEARNERS[name]
    keras.utils.set_random_seed(0)
    cls = learner_class(algo)
    learner = cls(backbone(), **learner_config(algo, arguments).learner)
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
    assert learner.takes_padded_episodes
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
    assert not MAML(backbone(), head="learned").takes_padded_episodes
    assert MAML(backbone(), head="prototypes").takes_padded_episodes


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

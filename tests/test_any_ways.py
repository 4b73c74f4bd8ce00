"""MAML with a fast head started per task (Proto-MAML's prototypes, or zeros): the head's
numbers by hand, and a learner trained 5-way serving 20-way episodes, in process and from
its SavedModel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib
from tfmeta.algorithms import MAML, build_learner
from tfmeta.algorithms.maml_regression import MAMLRegression
from tfmeta.data import EpisodeShape, episode_dataset
from tfmeta.models import conv4
from tfmeta.tensors import class_means, squared_euclidean
from tfmeta.training.export import export_learner


def identity_features(dim=2):
    """A backbone whose features are its inputs: Dense(dim) with kernel I and no bias."""
    model = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(dim, use_bias=False)])
    model.layers[0].kernel.assign(np.eye(dim, dtype=np.float32))
    return model


def episode(support, labels, queries):
    return {"support_images": tf.constant([support], tf.float32),
            "support_labels": tf.constant([labels], tf.int32),
            "query_images": tf.constant([queries], tf.float32)}


def test_prototype_head_by_hand():
    # Support: class 0 at (1, 0), (3, 0) -> c0 = (2, 0); class 1 at (0, 2) -> c1 = (0, 2).
    # Head: W = 2 c^T = [[4, 0], [0, 4]], b = -|c|^2 = (-4, -4).
    # Query (1, 1): logits = (4 - 4, 4 - 4) = (0, 0);  query (2, 1): (8 - 4, 4 - 4) = (4, 0).
    maml = MAML(identity_features(), head="prototypes", inner_steps_test=0)
    batch = episode([[1, 0], [3, 0], [0, 2]], [0, 0, 1], [[1, 1], [2, 1]])
    logits = maml.query_logits(batch, training=False)[0].numpy()
    np.testing.assert_allclose(logits, [[0.0, 0.0], [4.0, 0.0]], atol=1e-6)
    # ProtoNet's logits -|q - c|^2 are these minus |q|^2 (2 and 5): (-2, -2) and (-1, -5).
    protonet = -squared_euclidean(batch["query_images"], class_means(
        batch["support_images"], batch["support_labels"]))[0].numpy()
    np.testing.assert_allclose(protonet, [[-2.0, -2.0], [-1.0, -5.0]], atol=1e-6)
    np.testing.assert_allclose(logits - protonet, [[2.0, 2.0], [5.0, 5.0]], atol=1e-6)


def test_prototype_head_equals_protonet_up_to_a_per_query_constant():
    rng = np.random.default_rng(0)
    maml = MAML(identity_features(6), head="prototypes", inner_steps_test=0)
    labels = np.repeat(np.arange(4), 3)
    batch = episode(rng.normal(size=(12, 6)), labels, rng.normal(size=(5, 6)))
    logits = maml.query_logits(batch, training=False)[0].numpy()
    protonet = -squared_euclidean(batch["query_images"], class_means(
        batch["support_images"], batch["support_labels"]))[0].numpy()
    difference = logits - protonet
    np.testing.assert_allclose(difference, difference[:, :1] * np.ones((1, 4)), atol=1e-4)
    np.testing.assert_allclose(difference[:, 0], np.sum(batch["query_images"][0] ** 2, -1),
                               rtol=1e-5)


def test_zeros_head_one_step_by_hand():
    # W = 0, b = 0: p = (1/2, 1/2) for both support examples x1 = (1, 0) (class 0) and
    # x2 = (0, 2) (class 1). Mean cross-entropy over 2 examples:
    #   dL/dW = X^T (P - Y) / 2 = [[1, 0], [0, 2]]^T [[-.5, .5], [.5, -.5]] / 2
    #         = [[-0.25, 0.25], [0.5, -0.5]],   dL/db = (0, 0)
    # One step of 0.5: W' = [[0.125, -0.125], [-0.25, 0.25]]; the backbone's gradient is 0
    # (dL/dfeatures = (P - Y) W^T = 0). Query (1, 1): logits = (0.125 - 0.25, -0.125 + 0.25).
    maml = MAML(identity_features(), head="zeros", inner_lr=0.5, inner_steps_test=1)
    batch = episode([[1, 0], [0, 2]], [0, 1], [[1, 1]])
    logits = maml.query_logits(batch, training=False)[0].numpy()
    np.testing.assert_allclose(logits, [[-0.125, 0.125]], atol=1e-6)


def test_fast_heads_serve_any_ways_up_to_the_cap():
    assert MAML(identity_features(), head="prototypes").max_ways is None
    capped = MAML(identity_features(), head="zeros", max_head_ways=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="serves at most 2 ways"):
        capped.adapt_and_predict(tf.zeros((3, 2)), tf.constant([0, 1, 2]), tf.zeros((1, 2)))
    with pytest.raises(ValueError, match="needs head='learned'"):
        MAMLRegression(identity_features(), head="prototypes")
    with pytest.raises(ValueError, match="head must be one of"):
        MAML(identity_features(), head="cosine")


def test_config_with_a_fast_head_builds_a_feature_extractor():
    config = config_lib.apply_overrides(config_lib.get_config("maml", "omniglot", "5w1s"),
                                        ["learner.head=prototypes", "model.filters=8"])
    config_lib.validate_config(config)
    learner = build_learner(config, (28, 28, 1))
    assert learner.backbone.output_shape[-1] == 8  # 8 filters, 1x1 after four poolings
    assert learner.max_ways is None


@pytest.fixture(scope="module")
def trained_5way(omniglot):
    keras.utils.set_random_seed(0)
    learner = MAML(conv4((28, 28, 1), filters=8), head="prototypes", inner_lr=0.1,
                   inner_steps=1, inner_steps_test=2)
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    for batch in episode_dataset(omniglot.split("train"), EpisodeShape(5, 1, 1), 2, seed=0).take(1):
        learner.train_on_batch(batch)
    return learner


@pytest.mark.slow
def test_trained_5way_serves_20way_in_process_and_from_export(trained_5way, omniglot,
                                                              tmp_path):
    batch = next(iter(episode_dataset(omniglot.split("test"), EpisodeShape(20, 1, 1), 1, seed=3)))
    logits = trained_5way.adapt_and_predict(batch["support_images"][0],
                                            batch["support_labels"][0],
                                            batch["query_images"][0]).numpy()
    assert logits.shape == (20, 20) and np.all(np.isfinite(logits))
    # Raw inputs for the export: Omniglot's 105x105 images in [0, 1].
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, size=(40, *omniglot.raw_shape)).astype(np.float32)
    labels = np.arange(20, dtype=np.int32)
    expected = trained_5way.adapt_and_predict(omniglot.preprocess(raw[:20]),
                                              tf.constant(labels),
                                              omniglot.preprocess(raw[20:])).numpy()
    loaded = tf.saved_model.load(export_learner(trained_5way, omniglot,
                                                str(tmp_path / "export")))
    served = loaded.adapt_and_predict(support_images=raw[:20], support_labels=labels,
                                      query_images=raw[20:])["logits"].numpy()
    assert served.shape == (20, 20)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="cover every class"):
        loaded.adapt_and_predict(support_images=raw[:2], support_labels=np.int32([0, 2]),
                                 query_images=raw[20:21])

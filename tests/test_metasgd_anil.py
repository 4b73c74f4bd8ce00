"""Meta-SGD and ANIL: hand-computed inner steps and the learner contract."""

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta import weights
from tfmeta.algorithms.anil import ANIL
from tfmeta.algorithms.metasgd import MetaSGD
from tfmeta.models import conv4


def linear_model():
    """logits = x @ W + b with W = 0, b = 0 (2 inputs, 2 classes)."""
    inputs = keras.Input((2,))
    outputs = keras.layers.Dense(2, kernel_initializer="zeros", name="head")(inputs)
    return keras.Model(inputs, outputs)


def test_metasgd_inner_step_uses_per_parameter_rates():
    learner = MetaSGD(linear_model(), inner_lr=0.1, inner_steps=1, inner_steps_test=1)
    learner.alpha[0].assign([[0.1, 0.2], [0.3, 0.4]])
    learner.alpha[1].assign([1.0, 2.0])
    # Support x = [1, 2], label 0. W = 0, b = 0 so p = softmax(0) = [0.5, 0.5] and
    # dL/dlogits = p - onehot(0) = [-0.5, 0.5]; dL/dW = x^T (p - y) = [[-0.5, 0.5], [-1, 1]],
    # dL/db = [-0.5, 0.5]. Meta-SGD: W' = W - alpha_W * dL/dW = [[0.05, -0.1], [0.3, -0.4]],
    # b' = b - alpha_b * dL/db = [0.5, -1.0].
    fast = learner.adapt(weights.values(learner.params), [], tf.constant([[1.0, 2.0]]),
                         tf.constant([0]), steps=1)
    np.testing.assert_allclose(fast[0].numpy(), [[0.05, -0.1], [0.3, -0.4]], atol=1e-6)
    np.testing.assert_allclose(fast[1].numpy(), [0.5, -1.0], atol=1e-6)


def test_metasgd_meta_gradient_reaches_alpha():
    learner = MetaSGD(linear_model(), inner_lr=0.5, inner_steps=1, inner_steps_test=1)
    learner.compile(optimizer=keras.optimizers.SGD(1.0))
    episode = {"support_images": tf.constant([[[1.0, 2.0]]]), "support_labels": tf.constant([[0]]),
               "query_images": tf.constant([[[1.0, 0.0]]]), "query_labels": tf.constant([[1]])}
    grads, _, _ = learner.compute_meta_gradients(episode)
    by_name = dict(zip([v.name for v in learner.trainable_variables], grads))
    # theta' = theta - alpha * g with g the support gradient (above), so
    # dL_query/dalpha = -g * dL_query/dtheta'. theta' = [[0.25, -0.25], [0.5, -0.5]], b' =
    # [0.25, -0.25]; query x = [1, 0]: logits = [0.5, -0.5]; dL/dlogits = softmax - onehot(1).
    p = np.exp([0.5, -0.5]) / np.exp([0.5, -0.5]).sum()
    dlogits = p - np.array([0.0, 1.0])
    d_kernel = np.outer([1.0, 0.0], dlogits)
    g_kernel = np.array([[-0.5, 0.5], [-1.0, 1.0]])
    np.testing.assert_allclose(by_name["alpha_0"].numpy(), -g_kernel * d_kernel, atol=1e-6)
    np.testing.assert_allclose(by_name["alpha_1"].numpy(), -np.array([-0.5, 0.5]) * dlogits,
                               atol=1e-6)


def small_conv(input_shape, ways):
    return conv4(input_shape, num_classes=ways, filters=8, num_blocks=3)


def test_anil_adapts_only_the_head_and_meta_learns_the_body(omniglot_small):
    from tfmeta.data import EpisodeShape, episode_dataset

    learner = ANIL(small_conv(omniglot_small.input_shape, 5), inner_lr=0.5, inner_steps=2)
    learner.compile(optimizer=keras.optimizers.SGD(0.1))
    batch = next(iter(episode_dataset(omniglot_small.split("train"), EpisodeShape(5, 1, 2), 2,
                                      seed=3)))
    params = weights.values(learner.params)
    fast = learner.adapt(params, weights.values(learner.backbone.non_trainable_variables),
                         batch["support_images"][0], batch["support_labels"][0], steps=2)
    head = set(learner.adapted_indices)
    assert head == {len(params) - 2, len(params) - 1}  # head kernel and bias
    for i, (before, after) in enumerate(zip(params, fast)):
        changed = not np.allclose(before.numpy(), after.numpy())
        assert changed == (i in head), (i, learner.params[i].path)
    grads, _, _ = learner.compute_meta_gradients(batch)
    body = [g for i, g in enumerate(grads) if i not in head]
    assert float(weights.global_norm(body)) > 0.0


def test_anil_rejects_unknown_head_layer():
    with pytest.raises(ValueError, match="head_layer='classifier', but .* no such layer"):
        ANIL(linear_model(), head_layer="classifier")


def test_anil_config_names_its_layer_head_layer():
    # `head` is MAML's head mode; ANIL's layer is `head_layer`. A run's config.json from
    # before the rename (learner.head="head") still builds the same learner.
    from tfmeta import config as config_lib
    from tfmeta.algorithms import build_learner

    config = config_lib.get_config("anil", "omniglot")
    config_lib.validate_config(config)
    assert config.learner.head_layer == "head" and "head" not in config.learner
    from tfmeta.migrate import migrate

    recorded = config.to_dict()
    recorded["learner"]["head"] = recorded["learner"].pop("head_layer")
    learner = build_learner(ml_collections.ConfigDict(migrate(recorded)), (28, 28, 1))
    assert (learner.head_layer, learner.head_mode) == ("head", "learned")


class TestMetaSGDContract(ClassifierContract):
    dataset_fixture = "omniglot_small"
    learning_rate = 3e-3

    def make_learner(self, input_shape, ways):
        return MetaSGD(small_conv(input_shape, ways), inner_lr=0.4, inner_steps=1,
                       inner_steps_test=1)


class TestANILContract(ClassifierContract):
    dataset_fixture = "omniglot_small"
    learning_rate = 3e-3

    def make_learner(self, input_shape, ways):
        return ANIL(small_conv(input_shape, ways), inner_lr=0.4, inner_steps=2,
                    inner_steps_test=2)

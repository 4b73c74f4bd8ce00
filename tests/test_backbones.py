"""ResNet-12, WRN-28-10 and DropBlock: shapes, the papers' parameter counts, DropBlock's mask
statistics, a MAML meta-gradient through ResNet-12 against a hand-unrolled one, and the
learner contract for ProtoNet on a tiny ResNet-12."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms.maml import MAML
from tfmeta.algorithms.matching import MatchingNetwork
from tfmeta.algorithms.prototypical import PrototypicalNetwork
from tfmeta.algorithms.relation import RelationNetwork
from tfmeta.models import BACKBONES, build_backbone
from tfmeta.models.dropblock import DropBlock
from tfmeta.models.resnet12 import resnet12
from tfmeta.models.wrn import wrn28_10
from tfmeta.tensors import cross_entropy

TINY = (4, 4, 8, 8)
SHAPES = [(84, 84, 3), (32, 32, 3), (28, 28, 1)]


# --------------------------------------------------------------------- shapes, sizes
@pytest.mark.parametrize("shape", SHAPES)
def test_resnet12_output_shapes(shape):
    images = np.random.default_rng(0).uniform(size=(2, *shape)).astype(np.float32)
    assert resnet12(shape, widths=TINY, num_classes=5)(images).shape == (2, 5)
    side = shape[0] // 16  # four 2x2 max-pools, each rounding down
    feature_map = resnet12(shape, widths=TINY, pooling="none")
    assert feature_map(images).shape == (2, side, side, 8)
    assert feature_map.get_layer("block4_pool").output.shape == (None, side, side, 8)


@pytest.mark.parametrize("shape", SHAPES)
def test_wrn_output_shapes(shape):
    images = np.random.default_rng(0).uniform(size=(2, *shape)).astype(np.float32)
    side = -(-shape[0] // 4)  # two stride-2 groups, "same" padding rounds up
    assert wrn28_10(shape, widen_factor=1, pooling="none")(images).shape == (2, side, side, 64)
    assert wrn28_10(shape, num_classes=7, widen_factor=1)(images).shape == (2, 7)


def test_parameter_counts_match_the_papers():
    """ResNet-12: 12.4M (MetaOptNet, Table 1's backbone; TADAM). WRN-28-10: 36.5M
    (Zagoruyko & Komodakis 2016, Table 1). By hand for ResNet-12: block (c_in -> c) has
    9*c_in*c + 2*9*c*c + c_in*c conv weights, plus 4 batch norms of 4*c values:
    75,648 + 563,200 + 2,355,200 + 9,420,800 conv weights = 12,414,848, + 19,776 batch-norm
    values (gamma, beta, moving mean and variance; 9,888 of them trainable) = 12,434,624."""
    model = resnet12((84, 84, 3))
    assert round(model.count_params() / 1e5) == 124
    assert model.output_shape == (None, 640)
    wide = wrn28_10((80, 80, 3))
    assert round(wide.count_params() / 1e5) == 365
    assert wide.output_shape == (None, 640)


def test_backbones_are_registered():
    assert BACKBONES["resnet12"] is resnet12 and BACKBONES["wrn28_10"] is wrn28_10
    model = build_backbone("resnet12", input_shape=(28, 28, 1), widths=TINY, num_classes=3)
    assert model.get_layer("head").units == 3
    assert model.get_layer("pool").output.shape == (None, 8)  # global average of 1x1x8
    flat = build_backbone("resnet12", input_shape=(32, 32, 3), widths=TINY, pooling="flatten")
    assert flat.output_shape == (None, 2 * 2 * 8)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="four positive integers"):
        resnet12((84, 84, 3), widths=(8, 8))
    with pytest.raises(ValueError, match="16x16"):
        resnet12((14, 14, 1))
    with pytest.raises(ValueError, match="6n \\+ 4"):
        from tfmeta.models.wrn import wrn
        wrn((32, 32, 3), depth=27)


# ------------------------------------------------------------------------- DropBlock
def expected_drop_fraction(size, block, rate):
    """P(a unit is dropped), averaged over positions: a unit at row i is covered by the
    seeds of valid centres whose block contains it, `rows(i)` of them along each axis
    (seeds live on the (size - block + 1)^2 centres where a whole block fits), each
    present with probability gamma = rate / block^2 * size^2 / (size - block + 1)^2."""
    valid = size - block + 1
    gamma = rate / block ** 2 * size ** 2 / valid ** 2
    rows = np.array([sum(1 for s in range(valid) if s <= i < s + block) for i in range(size)])
    covering = rows[:, None] * rows[None, :]
    return float(np.mean(1 - (1 - gamma) ** covering))


def test_dropblock_drops_the_expected_fraction_and_rescales():
    layer = DropBlock(drop_rate=0.2, block_size=3, seed=1)
    ones = tf.ones([64, 12, 12, 8])
    out = layer(ones, training=True).numpy()
    dropped = np.mean(out == 0)
    expected = expected_drop_fraction(12, 3, 0.2)  # 0.1806: overlaps make it < 0.2
    # 73,728 units, but dropped in blocks of 9: about 8,200 independent-ish blocks.
    assert abs(dropped - expected) < 0.01, (dropped, expected)
    kept = out[out != 0]
    np.testing.assert_allclose(kept, out.size / kept.size, rtol=1e-5)  # sum is preserved
    np.testing.assert_allclose(out.sum(), ones.numpy().sum(), rtol=1e-5)


def test_dropblock_drops_whole_blocks():
    """Every dropped unit lies in a fully dropped 3x3 square inside the map (a square
    block's shape), and a sparse draw gives squares of exactly 9 units."""
    layer = DropBlock(drop_rate=0.05, block_size=3, seed=3)
    out = layer(tf.ones([32, 10, 10, 1]), training=True).numpy()[..., 0]
    assert (out == 0).any()
    for mask in out == 0:
        covered = np.zeros_like(mask)
        for i in range(8):
            for j in range(8):
                if mask[i:i + 3, j:j + 3].all():
                    covered[i:i + 3, j:j + 3] = True
        np.testing.assert_array_equal(covered, mask)
    assert np.sum(out == 0) % 9 == 0 or np.sum(out == 0) > 9


def test_dropblock_is_the_identity_at_inference_and_ramps_its_rate():
    x = tf.random.stateless_normal([4, 6, 6, 2], [0, 1])
    layer = DropBlock(drop_rate=0.3, block_size=2, schedule_steps=10, seed=0)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    for _ in range(3):
        layer(x, training=True)
    assert float(layer.calls.numpy()) == 3.0
    np.testing.assert_allclose(float(layer.rate()), 0.3 * 3 / 10, rtol=1e-6)  # MetaOptNet ramp
    for _ in range(20):
        layer(x, training=True)
    np.testing.assert_allclose(float(layer.rate()), 0.3, rtol=1e-6)


def test_dropblock_randomness_is_state_that_stateless_call_carries():
    x = tf.ones([8, 6, 6, 4])
    model = keras.Sequential([keras.Input((6, 6, 4)), DropBlock(0.3, 2, seed=5)])
    state = [v.value for v in model.non_trainable_variables]
    first, new_state = model.stateless_call([], state, x, training=True)
    again, _ = model.stateless_call([], state, x, training=True)
    second, _ = model.stateless_call([], new_state, x, training=True)
    np.testing.assert_array_equal(first.numpy(), again.numpy())  # same state, same mask
    assert not np.array_equal(first.numpy(), second.numpy())     # the state moved on


# ---------------------------------------------------------- MAML through ResNet-12
def test_maml_meta_gradient_through_resnet12_matches_hand_unrolled():
    """One task, one inner step, second order, batch statistics and DropBlock on: the task
    loop's meta-gradient equals the one unrolled here by nested tapes,

        fast = theta - alpha * grad_theta L_support(theta)
        meta_gradient = grad_theta L_query(fast)

    with the same backbone state (DropBlock's seed) for both passes, as MAML's
    "batch_stats" mode keeps it."""
    keras.utils.set_random_seed(0)
    model = resnet12((16, 16, 3), widths=(2, 3, 3, 4), num_classes=3, drop_rate=0.2,
                     dropblock_size=2, dropblock_schedule_steps=0)
    maml = MAML(model, inner_lr=0.1, inner_steps=1)
    maml.compile(optimizer=keras.optimizers.SGD(0.1))
    rng = np.random.default_rng(0)
    episodes = {
        "support_images": tf.constant(rng.normal(size=(1, 6, 16, 16, 3)), tf.float32),
        "support_labels": tf.constant([[0, 0, 1, 1, 2, 2]], tf.int32),
        "query_images": tf.constant(rng.normal(size=(1, 6, 16, 16, 3)), tf.float32),
        "query_labels": tf.constant([[0, 1, 2, 0, 1, 2]], tf.int32),
    }
    gradients, _, _ = maml.compute_meta_gradients(episodes)

    params = [tf.identity(v) for v in model.trainable_variables]
    state = [tf.identity(v) for v in model.non_trainable_variables]
    with tf.GradientTape() as outer:
        outer.watch(params)
        with tf.GradientTape() as inner:
            inner.watch(params)
            logits, _ = model.stateless_call(params, state, episodes["support_images"][0],
                                             training=True)
            support_loss = cross_entropy(episodes["support_labels"][0], logits)
        inner_gradients = inner.gradient(support_loss, params)
        fast = [p - 0.1 * g for p, g in zip(params, inner_gradients)]
        logits, _ = model.stateless_call(fast, state, episodes["query_images"][0], training=True)
        query_loss = cross_entropy(episodes["query_labels"][0], logits)
    expected = outer.gradient(query_loss, params)
    for got, want in zip(gradients, expected):
        assert np.all(np.isfinite(got.numpy()))
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
    assert any(np.abs(g.numpy()).max() > 0 for g in gradients)


# ------------------------------------------------------- in every metric learner
@pytest.mark.parametrize("make", [
    lambda shape: MatchingNetwork(resnet12(shape, widths=TINY)),
    lambda shape: RelationNetwork(resnet12(shape, widths=(4, 4, 8, 8), pooling="none"),
                                  relation_filters=4, relation_units=4),
], ids=["matching", "relation"])
def test_resnet12_in_metric_learners(make, omniglot):
    from tfmeta.data import EpisodeShape, episode_dataset

    batch = next(iter(episode_dataset(omniglot.split("test"), EpisodeShape(5, 1, 2), 2, seed=0)))
    learner = make(omniglot.input_shape)
    logits = learner.query_logits(batch, training=True)
    assert logits.shape == (2, 10, 5) and np.all(np.isfinite(logits.numpy()))


class TestProtoNetResNet12Contract(ClassifierContract):
    def make_learner(self, input_shape, ways):
        return PrototypicalNetwork(resnet12(input_shape, widths=TINY))

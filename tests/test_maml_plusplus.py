"""MAML++'s options, each on a tiny problem against numbers worked by hand: the multi-step
loss and its importance schedule, learned per-step rates (LSLR), per-step batch norm and
the cosine meta learning rate. (Derivative-order annealing: tests/test_maml.py.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib
from tfmeta import weights
from tfmeta.algorithms.maml_plusplus import MAMLPlusPlus, importance_weights
from tfmeta.algorithms.maml_regression import mean_squared_error
from tfmeta.training.optimizer import make_optimizer

OFF = {"multi_step_loss": False, "learned_inner_lrs": False, "per_step_batch_norm": False}


def test_importance_weights_by_hand():
    # S = 5 steps, A = 100 annealing steps: decay = 1/5/100 = 0.002, floor = 0.03/5 = 0.006.
    # t = 0: uniform 0.2.  t = 50: others max(0.2 - 0.1, 0.006) = 0.1,
    #   last min(0.2 + 50 * 4 * 0.002, 1 - 4 * 0.006) = 0.6.
    # t = 99: others 0.006 (0.2 - 0.198 < floor), last min(0.992, 0.976) = 0.976.
    # t >= 100: only the last step's loss.
    expected = {0: [0.2] * 5, 50: [0.1] * 4 + [0.6], 99: [0.006] * 4 + [0.976],
                100: [0, 0, 0, 0, 1], 5000: [0, 0, 0, 0, 1]}
    for step, want in expected.items():
        np.testing.assert_allclose(importance_weights(step, 5, 100).numpy(), want, atol=1e-6)


class RegressionMAMLPlusPlus(MAMLPlusPlus):
    """MAML++ with the mean squared error, so that its options are checked on regressions
    worked by hand."""

    def loss_fn(self, labels, outputs):
        return mean_squared_error(labels, outputs)


def regression_line(bias_only=True):
    """Dense(1) with w = 0, b = 0 on 1-d inputs (a regression model worked by hand)."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    return model


# Support x = (1, -1), y = (1, 1); loss = mean((y - w x - b)^2); query x = 0, y = 2.
# At w = b = 0: dL/dw = mean(-2 (y - p) x) = 0, dL/db = mean(-2 (y - p)) = -2.
# Step 1 (rate 0.25): b1 = 0.5, w1 = 0. Step 2: dL/db = -2 * 0.5 = -1, b2 = 0.75.
# Query losses: after step 1 (2 - 0.5)^2 = 2.25, after step 2 (2 - 0.75)^2 = 1.5625.
TASK = {"support_images": tf.constant([[1.0], [-1.0]]), "support_labels": tf.constant([[1.0], [1.0]]),
        "query_images": tf.constant([[0.0]]), "query_labels": tf.constant([[2.0]])}


def task_loss(learner, step):
    learner.optimizer.iterations.assign(step)
    loss, _, _ = learner.task_meta_loss(weights.values(learner.params), [], TASK)
    return float(loss)


@pytest.mark.parametrize("step,expected", [
    (0, 0.5 * 2.25 + 0.5 * 1.5625),        # uniform weights (0.5, 0.5)
    (50, 0.25 * 2.25 + 0.75 * 1.5625),     # decay = 1/2/100: (0.5 - 0.25, 0.5 + 0.25)
    (100, 1.5625),                         # annealed: the last step only
])
def test_multi_step_loss_by_hand(step, expected):
    learner = RegressionMAMLPlusPlus(regression_line(), inner_lr=0.25, inner_steps=2,
                                     msl_annealing_steps=100,
                                     **dict(OFF, multi_step_loss=True))
    learner.compile(optimizer=keras.optimizers.SGD(0.0))
    assert task_loss(learner, step) == pytest.approx(expected, rel=1e-6)


def test_without_multi_step_loss_only_the_last_step_counts():
    learner = RegressionMAMLPlusPlus(regression_line(), inner_lr=0.25, inner_steps=2, **OFF)
    learner.compile(optimizer=keras.optimizers.SGD(0.0))
    assert task_loss(learner, 0) == pytest.approx(1.5625, rel=1e-6)


def test_learned_per_step_rates_by_hand():
    # Rates (w, b): step 0 (0.25, 0.25), step 1 (0.1, 0.5). Step 1 as above: b1 = 0.5;
    # step 2: dL/db = -1, so b2 = 0.5 + 0.5 * 1 = 1.0; query loss (2 - 1)^2 = 1.
    # d loss / d rate_b(step 1) = dL/db2 * d b2 / d rate = -2 (2 - b2) * (-dL/db1) = -2 * 1 = -2;
    # d loss / d rate_w(step 1) = 0 (dL/dw = 0 at every step).
    learner = RegressionMAMLPlusPlus(regression_line(), inner_lr=0.25, inner_steps=2,
                                     **dict(OFF, learned_inner_lrs=True))
    learner.compile(optimizer=keras.optimizers.SGD(0.0))
    assert [len(rates) for rates in learner.step_inner_lrs] == [2, 2]
    np.testing.assert_allclose([float(v) for r in learner.step_inner_lrs for v in r], [0.25] * 4)
    learner.step_inner_lrs[1][0].assign(0.1)
    learner.step_inner_lrs[1][1].assign(0.5)
    with tf.GradientTape() as tape:
        loss, _, _ = learner.task_meta_loss(weights.values(learner.params), [], TASK)
    assert float(loss) == pytest.approx(1.0, rel=1e-6)
    grads = tape.gradient(loss, learner.step_inner_lrs[1])
    np.testing.assert_allclose([float(g) for g in grads], [0.0, -2.0], atol=1e-6)


def batch_norm_model():
    """Input(1) -> BatchNormalization (gamma 1, beta 0, mean 0, variance 1)."""
    return keras.Sequential([keras.Input((1,)), keras.layers.BatchNormalization(epsilon=1e-3)])


def test_per_step_batch_norm_uses_step_k_copies():
    learner = RegressionMAMLPlusPlus(batch_norm_model(), inner_steps=2,
                                     batch_norm="running_stats",
                                     **dict(OFF, per_step_batch_norm=True))
    # gamma and beta are per-step, meta-learned: the inner loop adapts nothing else here.
    assert learner.adapted_indices == []
    assert len(learner.loop_state_variables) == 3 * 2  # (mean, variance) for k = 0, 1, 2
    # Copy 1: gamma 2, beta 0.5, mean 1, variance 3.999 (sqrt(3.999 + 0.001) = 2).
    for variable, value in zip(learner.step_bn_weights[1], [2.0, 0.5]):
        variable.assign([value])
    for variable, value in zip(learner.step_bn_stats[1], [1.0, 3.999]):
        variable.assign([value])
    params = weights.values(learner.params)
    state = weights.values(learner.loop_state_variables)
    x = tf.constant([[3.0]])
    # Step 0: the backbone's own (1 * (3 - 0) / sqrt(1 + 0.001) + 0).
    outputs = {k: float(learner.forward_at(params, state, x, False, k)[0][0, 0])
               for k in (0, 1, 2, 7)}
    assert outputs[0] == pytest.approx(3 / np.sqrt(1.001), rel=1e-5)
    assert outputs[1] == pytest.approx(2 * (3 - 1) / 2 + 0.5, rel=1e-5)  # = 2.5
    assert outputs[2] == pytest.approx(outputs[0], rel=1e-5)  # copy 2 still at its start
    assert outputs[7] == pytest.approx(outputs[2], rel=1e-6)  # beyond S: copy S
    # A training pass at step 1 updates copy 1's statistics and no other copy's.
    _, new_state = learner.forward_at(params, state, tf.constant([[3.0], [5.0]]), True, 1)
    changed = [not np.allclose(a, b) for a, b in zip(state, new_state)]
    assert changed == [False, False, True, True, False, False]


def test_meta_training_moves_every_copy_and_nothing_is_unconnected(omniglot):
    from tfmeta.data import EpisodeShape, episode_dataset
    from tfmeta.models import conv4

    batch = next(iter(episode_dataset(omniglot.split("train"), EpisodeShape(3, 1, 1), 2, seed=0)))
    learner = MAMLPlusPlus(conv4((28, 28, 1), num_classes=3, filters=4, num_blocks=2),
                           inner_lr=0.1, inner_steps=2, batch_norm="running_stats")
    learner.compile(optimizer=keras.optimizers.SGD(0.0))
    grads, loss, _ = learner.compute_meta_gradients(batch)
    assert np.isfinite(float(loss))
    named = dict(zip([v.path for v in learner.trainable_variables], grads))
    for k in (0, 1):
        assert any(float(tf.reduce_max(tf.abs(g))) > 0 for name, g in named.items()
                   if f"inner_lr_step{k}" in name), k
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for name, g in named.items()
               if "bn_step2" in name)


def test_config_has_the_paper_settings_and_a_cosine_meta_rate():
    config = config_lib.get_config("maml_plusplus", "omniglot", "5w1s")
    config_lib.validate_config(config)
    assert config.optimizer.schedule == "cosine"
    # batch statistics (the reference code's, whose runs are the paper's numbers); the
    # paper's per-step running statistics are `--set=learner.batch_norm=running_stats`.
    assert config.learner.batch_norm == "batch_stats"
    config_lib.validate_config(config_lib.apply_overrides(config,
                                                          ["learner.batch_norm=running_stats"]))
    assert (config.learner.inner_steps, config.learner.inner_lr) == (5, 0.1)
    optimizer = make_optimizer(config.optimizer, config.num_steps)
    schedule = optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(config.num_steps // 2)) == pytest.approx(5e-4, rel=1e-4)
    with pytest.raises(ValueError, match="msl_annealing_steps"):
        config_lib.validate_config(config_lib.apply_overrides(
            config_lib.get_config("maml_plusplus", "omniglot"),
            ["learner.msl_annealing_steps=0"]))


def test_checkpoints_hold_the_per_step_copies_and_rates(tmp_path):
    def make():
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1),
                                  keras.layers.BatchNormalization()])
        return RegressionMAMLPlusPlus(model, inner_steps=2, batch_norm="running_stats",
                                      **dict(OFF, per_step_batch_norm=True,
                                             learned_inner_lrs=True))

    learner = make()
    learner.step_bn_stats[2][0].assign([7.0])
    learner.step_bn_weights[1][1].assign([0.25])
    learner.step_inner_lrs[1][0].assign(0.125)
    path = tf.train.Checkpoint(learner=learner).save(str(tmp_path / "ckpt"))
    restored = make()
    tf.train.Checkpoint(learner=restored).restore(path).assert_existing_objects_matched()
    assert float(restored.step_bn_stats[2][0][0]) == 7.0
    assert float(restored.step_bn_weights[1][1][0]) == 0.25
    assert float(restored.step_inner_lrs[1][0]) == 0.125

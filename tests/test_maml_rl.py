"""MAML-RL on 2D navigation: the environment, the REINFORCE inner step and the second-order
meta-gradient against numbers worked by hand; training and export end to end (slow)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.algorithms import recipe_of
from tfmeta.algorithms.maml_rl import MAMLRL
from tfmeta.episode_spec import DataSpec
from tfmeta.rl.navigation import Navigation2D, load
from tfmeta.rl.policy_gradient import (
    advantages,
    baseline_features,
    linear_baseline,
    returns_to_go,
    rollout,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def constant_policy(means, log_stds=(0.0, 0.0)):
    """policy_fn for `rollout`: the same outputs at every observation `[B, n, 2]`."""
    outputs = tf.constant([*means, *log_stds], tf.float32)
    return lambda observations: tf.zeros_like(observations[..., :1]) + outputs


def linear_learner(horizon, trajectories, inner_lr=0.1, **kwargs):
    """A learner with a linear Gaussian policy (mean = obs @ W + b, learned log-std)."""
    return MAMLRL(Navigation2D(horizon=horizon), hidden_units=(), inner_lr=inner_lr,
                  trajectories=trajectories, **kwargs)


# ------------------------------------------------------------------------- environment
def test_step_moves_by_the_clipped_velocity_and_rewards_minus_the_distance():
    env = Navigation2D()
    positions = tf.constant([[0.0, 0.0], [0.295, 0.395]])
    actions = tf.constant([[2.0, -0.5], [0.05, 0.05]])
    goals = tf.constant([[0.3, 0.4], [0.3, 0.4]])
    next_positions, rewards, done = env.step(positions, actions, goals)
    # Agent 0: velocity 0.1 * clip([2, -0.5], -1, 1) = [0.1, -0.05]; the offset to the goal
    # is [-0.2, -0.45], reward -sqrt(0.04 + 0.2025). Agent 1: moves by [0.005, 0.005] onto
    # the goal: reward 0, done.
    np.testing.assert_allclose(next_positions, [[0.1, -0.05], [0.3, 0.4]], atol=1e-6)
    np.testing.assert_allclose(rewards, [-np.sqrt(0.2425), 0.0], atol=1e-6)
    np.testing.assert_array_equal(done, [0.0, 1.0])


def test_rollout_by_hand_and_the_episode_ends_at_the_goal():
    env = Navigation2D(horizon=3)
    noise = tf.zeros([3, 2, 1, 2])  # H=3 steps, B=2 goals, n=1 trajectory
    goals = tf.constant([[0.25, 0.0], [0.2, 0.0]])
    batch = rollout(constant_policy([1.0, 0.0]), env, goals, noise)
    # Each step moves by [0.1, 0]: positions 0.1, 0.2, 0.3 after the steps.
    np.testing.assert_allclose(batch["observations"][0, 0, :, 0], [0.0, 0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(batch["actions"][0, 0], [[1, 0]] * 3)
    # Goal 0.25: distances 0.15, 0.05, 0.05.
    np.testing.assert_allclose(batch["rewards"][0, 0], [-0.15, -0.05, -0.05], atol=1e-6)
    np.testing.assert_array_equal(batch["alive"][0, 0], [1, 1, 1])
    # Goal 0.2 is reached by the second step (reward 0): the third step is not part of it.
    np.testing.assert_allclose(batch["rewards"][1, 0], [-0.1, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(batch["alive"][1, 0], [1, 1, 0])


def test_goals_are_uniform_in_the_square_and_a_pure_function_of_seed_split_and_index():
    tasks = load()
    goals = tasks.goals("train", 2000, 0, 5).numpy()
    assert goals.shape == (2000, 2)
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert abs(goals.mean()) < 0.02 and abs(goals.std() - 1 / np.sqrt(12)) < 0.01
    np.testing.assert_array_equal(goals, tasks.goals("train", 2000, 0, 5))
    assert not np.allclose(goals, tasks.goals("test", 2000, 0, 5))
    assert not np.allclose(goals, tasks.goals("train", 2000, 0, 6))
    assert tasks.data_dir is None and tasks.fingerprint() == "" and tasks.input_shape == (2,)
    with pytest.raises(ValueError, match="data.horizon"):
        load(horizon=0)


# ------------------------------------------------------------------ policy gradient
def test_returns_to_go_and_linear_baseline():
    # Rewards [1, 2, 3], discount 0.5: R_2 = 3, R_1 = 2 + 1.5 = 3.5, R_0 = 1 + 1 + 0.75.
    np.testing.assert_allclose(returns_to_go(tf.constant([[1.0, 2.0, 3.0]]), 0.5),
                               [[2.75, 3.5, 3.0]], atol=1e-6)
    # A target linear in the features (1 + 2 t/100 + 3 x) is fitted exactly.
    observations = tf.random.stateless_normal([2, 3, 4, 2], [0, 1])
    alive = tf.ones([2, 3, 4])
    time = np.arange(4, dtype=np.float32) / 100
    targets = 1 + 2 * time + 3 * observations[..., 0]
    fitted = linear_baseline(baseline_features(observations, alive), targets, alive)
    np.testing.assert_allclose(fitted, targets, atol=1e-3)


def test_inner_step_is_the_hand_computed_reinforce_step():
    learner = linear_learner(horizon=1, trajectories=2)
    goals = tf.constant([[0.1, 0.1]])
    # Fixed noise: with mean b = 0 and std 1 at the start (obs = 0), the actions are the noise.
    noise = tf.constant([[[[1.0, 0.5], [-0.5, 2.0]]]])  # [H=1, B=1, n=2, A=2]
    params = learner.task_params(1)
    batch = tf.function(rollout)(lambda obs: learner.policy_outputs(params, obs),
                                 learner.environment, goals, noise)
    # a1 = [1, .5] moves by [.1, .05]: reward -||[0, -.05]|| = -0.05; a2 = [-.5, 2] moves by
    # [-.05, .1]: reward -0.15. One step, so the returns are the rewards; any baseline is
    # constant (the features are 0 but the constant), so the standardized advantages are
    # A = [+1, -1].
    np.testing.assert_allclose(batch["rewards"][0, :, 0], [-0.05, -0.15], atol=1e-6)
    np.testing.assert_allclose(advantages(batch, 0.99)[0, :, 0], [1, -1], atol=1e-5)
    # L = -mean_i log pi(a_i) A_i; d log pi / db = (a - b) / std^2 = eps and
    # d log pi / d log_std = eps^2 - 1, so
    #   dL/db = -(A1 eps1 + A2 eps2) / 2 = -([1, .5] - [-.5, 2]) / 2 = [-.75, .75]
    #   dL/dlog_std = -(A1 (eps1^2 - 1) + A2 (eps2^2 - 1)) / 2
    #               = -([0, -.75] - [-.75, 3]) / 2 = [-.375, 1.875]
    # and W gets no gradient (obs = 0). With inner_lr 0.1:
    kernel, bias, log_std = tf.function(learner.inner_update)(params, batch, 0, False)
    np.testing.assert_allclose(kernel[0], learner.policy.trainable_variables[0], atol=1e-6)
    np.testing.assert_allclose(bias[0], [0.075, -0.075], atol=1e-5)
    np.testing.assert_allclose(log_std[0], [0.0375, -0.1875], atol=1e-5)


def closed_form_gradient(kernel, bias, log_std, batch, task_advantages):
    """The REINFORCE surrogate's gradient of a linear Gaussian policy, written out:
    with mu = s W + b, var = exp(2 log_std) and c = advantage / (live steps),
      dL/dW = -s^T (c (a - mu) / var),  dL/db = -sum(c (a - mu) / var),
      dL/dlog_std = -sum(c ((a - mu)^2 / var - 1))."""
    obs = tf.reshape(batch["observations"], [-1, 2])
    actions = tf.reshape(batch["actions"], [-1, 2])
    c = tf.reshape(task_advantages, [-1, 1]) / tf.reduce_sum(batch["alive"])
    mu = obs @ kernel + bias
    var = tf.exp(2 * log_std)
    z = (actions - mu) / var
    return (-tf.transpose(obs) @ (c * z), -tf.reduce_sum(c * z, 0),
            -tf.reduce_sum(c * ((actions - mu) ** 2 / var - 1), 0))


def closed_form_surrogate(kernel, bias, log_std, batch, task_advantages):
    obs = tf.reshape(batch["observations"], [-1, 2])
    actions = tf.reshape(batch["actions"], [-1, 2])
    mu = obs @ kernel + bias
    log_prob = tf.reduce_sum(-0.5 * ((actions - mu) / tf.exp(log_std)) ** 2 - log_std, -1)
    return -tf.reduce_sum(log_prob * tf.reshape(task_advantages, [-1])) / tf.reduce_sum(
        batch["alive"])


def test_meta_gradient_matches_an_explicitly_unrolled_second_order_computation():
    learner = linear_learner(horizon=3, trajectories=4, inner_lr=0.5)
    learner.policy.trainable_variables[1].assign([0.3, -0.2])
    learner.policy.trainable_variables[2].assign([-0.5, -0.3])
    goals = tf.constant([[0.3, -0.2], [-0.4, 0.1]])
    seed = tf.constant([3, 4], tf.int64)
    variables = [v.value for v in learner.policy.trainable_variables]  # the tf.Variables

    @tf.function
    def meta_gradient_and_batches():
        with tf.GradientTape() as tape:
            loss, _ = learner.meta_loss({"goals": goals}, seed)
        # The same trajectories (the draws are a pure function of the seed), as constants.
        _, batches = learner.adapt(learner.task_params(2), goals, seed, 1, first_order=False)
        return loss, tape.gradient(loss, variables), batches

    loss, meta_gradient, (pre, post) = meta_gradient_and_batches()
    pre_advantages, post_advantages = advantages(pre, 0.99), advantages(post, 0.99)
    task = lambda batch, b: {k: v[b] for k, v in batch.items()}  # noqa: E731
    with tf.GradientTape() as tape:
        tape.watch(variables)
        unrolled = 0.0
        for b in range(2):  # theta' = theta - alpha g(theta), then the surrogate at theta'
            grads = closed_form_gradient(*variables, task(pre, b), pre_advantages[b])
            fast = [v - 0.5 * g for v, g in zip(variables, grads, strict=True)]
            unrolled += closed_form_surrogate(*fast, task(post, b), post_advantages[b]) / 2
    expected = tape.gradient(unrolled, variables)
    np.testing.assert_allclose(loss, unrolled, rtol=1e-4, atol=1e-6)
    for got, want in zip(meta_gradient, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)

    # The second-order terms matter here: the first-order meta-gradient differs.
    learner.first_order = True
    _, first_order, _ = tf.function(meta_gradient_and_batches.python_function)()
    assert max(float(tf.reduce_max(tf.abs(a - b)))
               for a, b in zip(first_order, expected, strict=True)) > 1e-3


# ------------------------------------------------------------------------ the config
def test_config_refuses_learners_and_datasets_that_do_not_fit():
    from tfmeta.config import get_config, validate_config

    validate_config(get_config("maml_rl", "navigation_2d"))
    with pytest.raises(ValueError, match="environment.*navigation_2d"):
        validate_config(get_config("maml_rl", "omniglot"))
    with pytest.raises(ValueError, match="navigation_2d.*environment"):
        validate_config(get_config("protonet", "navigation_2d"))
    config = get_config("maml_rl", "navigation_2d")
    config.learner.trajectories = 1
    with pytest.raises(ValueError, match="learner.trajectories"):
        validate_config(config)


# ------------------------------------------------------------------ end to end (slow)
SERVE = """
import json, sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
out = loaded.adapt_and_act(goal=tf.constant([0.3, -0.2]),
                           observations=tf.constant([[0.0, 0.0], [0.1, 0.1], [0.4, -0.3]]))
refused = []
for goal, observations in [([float("nan"), 0.0], [[0.0, 0.0]]),
                           ([0.1, 0.1], [[float("inf"), 0.0]]),
                           ([0.1, 0.1], tf.zeros([0, 2])),
                           ([0.1, 0.1], [[0.0, 0.0, 0.0]])]:
    try:
        loaded.adapt_and_act(goal=tf.constant(goal), observations=tf.constant(observations))
        refused.append("")
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
        refused.append(str(error)[:300])
print(json.dumps({"actions": out["actions"].numpy().tolist(), "refused": refused}))
"""


@pytest.mark.slow
def test_trains_through_the_trainer_and_export_round_trips(tmp_path):
    """A shrunken config: return after one adaptation step on new (test) goals improves over
    40 meta-steps; the export serves the same adapted actions in a fresh process."""
    from tfmeta.config import apply_overrides, get_config
    from tfmeta.training.run import open_run
    from tfmeta.training.trainer import train

    config = apply_overrides(get_config("maml_rl", "navigation_2d"), [
        "learner.hidden_units=(32, 32)", "learner.trajectories=10", "meta_batch_size=10",
        "num_steps=40", "log_every=20", "checkpoint_every=40", "val_episodes=10",
        "optimizer.learning_rate=0.01", "data.horizon=50", "learner.inner_steps_test=1"])
    workdir = str(tmp_path / "run")
    learner = train(config, workdir, verbose=0, export=True)
    before_learner = recipe_of("maml_rl").build(config, (2,))
    spec = DataSpec.from_config(config)
    before = before_learner.meta_test(load(horizon=50), spec, "test", num_episodes=40)
    after = learner.meta_test(load(horizon=50), spec, "test", num_episodes=40)
    # After one adaptation step, on 40 test goals, with intervals that do not overlap.
    print("returns before/after training:", before["returns"], after["returns"])
    assert after["returns"][1] - after["ci95"][1] > before["returns"][1] + before["ci95"][1]

    run = open_run(workdir)
    local = tf.function(run.learner.adapt_and_act)(
        tf.constant([0.3, -0.2]), tf.constant([[0.0, 0.0], [0.1, 0.1], [0.4, -0.3]]))
    result = subprocess.run([sys.executable, "-c", SERVE, os.path.join(workdir, "export")],
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served["actions"], local, atol=1e-5)
    assert np.abs(served["actions"]).max() <= 0.1 + 1e-6
    nan_goal, inf_observation, empty, wrong_shape = served["refused"]
    assert "goal must be finite" in nan_goal
    assert "observations must be finite" in inf_observation
    assert "observations is empty" in empty
    assert wrong_shape  # [n, 3] does not match the signature's [n, 2]

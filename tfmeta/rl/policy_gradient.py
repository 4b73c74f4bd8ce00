"""Trajectories sampled in the graph, and the vanilla policy-gradient (REINFORCE) surrogate
with rllab's linear feature baseline, as MAML's RL experiments use them.

Shapes: B tasks, n trajectories per task, H steps, A action dimensions.

    trajectories = rollout(policy_fn, environment, goals, noise)   # noise [H, B, n, A]
    advantages = normalize(returns_to_go - linear_baseline(features))        # [B, n, H]
    surrogate = -sum(alive * log_prob(actions) * advantages) / sum(alive)     # [B]

`grad(surrogate)` is the REINFORCE gradient estimate; the trajectories and advantages are
data (no gradient flows into the sampling), as in the reference implementation.
"""

from __future__ import annotations

import tensorflow as tf

from tfmeta.rl.policy import gaussian_log_prob, split_outputs

# rllab's LinearFeatureBaseline: ridge coefficient of its least-squares fit.
BASELINE_RIDGE = 1e-5
# rllab's center_adv: advantages are standardized per task with this in the denominator.
ADVANTAGE_EPSILON = 1e-8


def rollout(policy_fn, environment, goals, noise):
    """Samples `n` trajectories per goal with the policy `policy_fn`.

    Args:
      policy_fn: observations `[B, n, D]` -> policy outputs `[B, n, 2A]` (means, log-stds).
      environment: a `Navigation2D`.
      goals: `[B, 2]`.
      noise: standard normal draws `[H, B, n, A]` (H = the horizon): action =
        mean + std * noise.

    Returns a dict of `observations [B, n, H, D]`, `actions [B, n, H, A]`, `rewards [B, n, H]`
    and `alive [B, n, H]` (1 up to and including the step that reaches the goal, 0 after).
    """
    batch_shape = tf.shape(noise)[1:3]

    def step(carry, step_noise):
        positions, alive = carry[0], carry[1]
        means, log_stds = split_outputs(policy_fn(positions))
        actions = means + tf.exp(log_stds) * step_noise
        next_positions, rewards, done = environment.step(positions, actions, goals[:, None])
        return next_positions, alive * (1.0 - done), positions, actions, rewards * alive, alive

    initial = (environment.initial_positions(batch_shape), tf.ones(batch_shape),
               environment.initial_positions(batch_shape), tf.zeros_like(noise[0]),
               tf.zeros(batch_shape), tf.zeros(batch_shape))
    _, _, observations, actions, rewards, alive = tf.scan(step, noise, initializer=initial)
    time_major = {"observations": observations, "actions": actions, "rewards": rewards,
                  "alive": alive}
    return {k: tf.stop_gradient(_batch_major(v)) for k, v in time_major.items()}


def _batch_major(tensor):
    """`[H, B, n, ...]` -> `[B, n, H, ...]`."""
    rank = tensor.shape.rank
    return tf.transpose(tensor, [1, 2, 0, *range(3, rank)])


def episode_returns(trajectories):
    """Undiscounted return of each trajectory: `[B, n]`."""
    return tf.reduce_sum(trajectories["rewards"], axis=-1)


def returns_to_go(rewards, discount: float):
    """`R_t = sum_{s >= t} discount^(s - t) * r_s` for rewards `[..., H]`."""
    horizon = rewards.shape[-1] or tf.shape(rewards)[-1]
    steps = tf.range(horizon, dtype=tf.float32)
    lag = steps[:, None] - steps[None, :]  # [s, t]: s - t
    weights = tf.where(lag >= 0, tf.pow(tf.cast(discount, tf.float32), tf.maximum(lag, 0.0)),
                       0.0)
    return tf.einsum("...s,st->...t", rewards, weights)


def baseline_features(observations, alive):
    """rllab's LinearFeatureBaseline features `[B, n, H, 2D + 4]`: observations, their
    squares, t/100, (t/100)^2, (t/100)^3 and 1, zero on steps after the episode ended."""
    horizon = tf.shape(observations)[2]
    time = tf.cast(tf.range(horizon), tf.float32) / 100.0
    time = tf.broadcast_to(time[None, None, :, None], tf.concat(
        [tf.shape(observations)[:3], [1]], 0))
    features = tf.concat([observations, tf.square(observations), time, time ** 2, time ** 3,
                          tf.ones_like(time)], axis=-1)
    return features * alive[..., None]


def linear_baseline(features, targets, alive):
    """Per-task least-squares fit of `targets [B, n, H]` on `features [B, n, H, F]` with a
    ridge of `BASELINE_RIDGE` (in float64, as rllab's numpy fit); returns the fitted
    values `[B, n, H]`."""
    shape = tf.shape(targets)
    x = tf.cast(tf.reshape(features, [shape[0], -1, features.shape[-1]]), tf.float64)
    y = tf.cast(tf.reshape(targets * alive, [shape[0], -1, 1]), tf.float64)
    gram = tf.matmul(x, x, transpose_a=True) + BASELINE_RIDGE * tf.eye(features.shape[-1],
                                                                        dtype=tf.float64)
    coefficients = tf.linalg.solve(gram, tf.matmul(x, y, transpose_a=True))
    return tf.reshape(tf.cast(tf.matmul(x, coefficients), tf.float32), shape)


def advantages(trajectories, discount: float, baseline: str = "linear"):
    """Standardized advantages `[B, n, H]` (zero after an episode ended): returns-to-go minus
    the baseline ("linear": rllab's linear feature baseline; "none"), then per task
    `(adv - mean) / (std + 1e-8)` over the live steps, as rllab's `center_adv`."""
    alive = trajectories["alive"]
    targets = returns_to_go(trajectories["rewards"], discount)
    if baseline == "linear":
        targets -= linear_baseline(
            baseline_features(trajectories["observations"], alive), targets, alive)
    count = tf.reduce_sum(alive, axis=[1, 2], keepdims=True)
    mean = tf.reduce_sum(targets * alive, axis=[1, 2], keepdims=True) / count
    variance = tf.reduce_sum(tf.square(targets - mean) * alive, axis=[1, 2], keepdims=True) / count
    return tf.stop_gradient((targets - mean) / (tf.sqrt(variance) + ADVANTAGE_EPSILON) * alive)


def surrogate_loss(outputs, trajectories, task_advantages):
    """The REINFORCE surrogate per task `[B]`: minus the mean over live steps of
    `log_prob(actions) * advantages`, for policy outputs `[B, n, H, 2A]` on the
    trajectories' observations."""
    alive = trajectories["alive"]
    log_probs = gaussian_log_prob(outputs, trajectories["actions"])
    return -tf.reduce_sum(log_probs * task_advantages, axis=[1, 2]) / tf.reduce_sum(
        alive, axis=[1, 2])

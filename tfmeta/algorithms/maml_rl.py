"""MAML for reinforcement learning (Finn, Abbeel and Levine, ICML 2017, section 5.3).

https://arxiv.org/abs/1703.03400. A task is an environment (here a goal of 2D navigation,
`tfmeta.rl.navigation`); its "support set" is `trajectories` rollouts of the current
policy, its "query set" rollouts of the adapted one. The inner step is one vanilla
policy-gradient (REINFORCE) step with rllab's linear feature baseline; the meta-gradient
flows back through it (second order):

    for task (goal) in meta_batch:                  # all tasks at once, vectorized
        fast = params
        for k in range(inner_steps):
            batch = rollout(policy(fast), goal, trajectories)     # sampled in the graph
            fast = fast - inner_lr * grad(surrogate(fast, batch), fast)
        post = rollout(policy(fast), goal, trajectories)
        meta_loss += surrogate(fast, post) / len(meta_batch)
    params = adam.apply(grad(meta_loss, params), params)

    surrogate(w, batch) = -mean_t(log pi_w(a_t | s_t) * standardize(R_t - baseline(s_t, t)))

The paper's outer update is TRPO. Here it is the meta-gradient of the same REINFORCE
surrogate on the post-update trajectories, applied with Adam: it is one `apply_gradients`
per meta-batch, so the Keras trainer, checkpoints, schedules and distribution strategies
apply unchanged, whereas TRPO needs a conjugate-gradient solve with Fisher-vector products
through the inner step and a backtracking line search on the surrogate, outside what an
optimizer's `apply_gradients` does. The price is no trust region. Like the reference code,
the gradient ignores how the pre-update sampling distribution depends on `params` (the
trajectories are data). Evaluation uses `inner_lr` for the first step and
`inner_lr * later_steps_lr_scale` after (the paper: 0.1, then 0.05).

Trajectory noise is stateless, seeded by `step_seed`, so a resumed run re-draws exactly
what an uninterrupted one draws. The policy (`tfmeta.rl.policy`) runs with per-task fast
weights through `stateless_call`, vectorized over the tasks of a meta-batch.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.base import MetaLearner, validation_batch_size
from tfmeta.algorithms.recipe import Recipe
from tfmeta.errors import UserError
from tfmeta.evaluation import mean_and_ci95
from tfmeta.ranges import FRACTION, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Choice, Range
from tfmeta.rl.navigation import Navigation2D
from tfmeta.rl.policy import gaussian_mlp_policy, split_outputs
from tfmeta.rl.policy_gradient import advantages, episode_returns, rollout, surrogate_loss
from tfmeta.rl.serving import AdaptAndAct

BASELINES = ("linear", "none")
# Seed salts of this learner's stateless draws (training noise, validation noise).
TRAIN_SALT, VALIDATION_SALT = 101, 102
# Seed of the trajectories an exported model samples to adapt (a served request is
# reproducible: the same goal always gives the same adapted policy).
SERVING_SEED = (20170, 314)


class MAMLRL(MetaLearner):
    """MAML with policy-gradient inner steps (see the module docstring).

    Example:

        tasks = tfmeta.data.load_dataset("navigation_2d")
        learner = MAMLRL(tasks.environment, inner_lr=0.1, trajectories=20)
        learner.compile(optimizer=keras.optimizers.Adam(1e-3))
        learner.fit(learner.training_episodes(tasks, DataSpec.from_config(config))[0],
                    steps_per_epoch=100)
        actions = learner.adapt_and_act(goal, observations)      # [n, 2] velocities

    Args:
      environment: a `tfmeta.rl.navigation.Navigation2D`.
      policy: a built Gaussian policy model (default: `gaussian_mlp_policy(hidden_units)`).
      hidden_units: the default policy's ReLU hidden layers.
      initial_log_std: the default policy's initial log standard deviation.
      inner_lr: step size of the first inner policy-gradient step.
      later_steps_lr_scale: later inner steps use `inner_lr * later_steps_lr_scale`.
      inner_steps: inner steps while meta-training.
      inner_steps_test: inner steps when evaluating (returns after 0..inner_steps_test
        steps are reported) and serving.
      trajectories: rollouts per task and inner step.
      discount: discount of the returns-to-go.
      baseline: "linear" (rllab's linear feature baseline) or "none".
      first_order: drop second-order terms (treat the inner gradient as a constant).
    """

    batch_keys = ("goals",)
    argument_ranges = {"inner_lr": POSITIVE, "later_steps_lr_scale": POSITIVE,
                       "baseline": Choice(BASELINES),
                       "inner_steps": POSITIVE_INT, "inner_steps_test": NON_NEGATIVE_INT,
                       "trajectories": Range(2, integer=True), "discount": FRACTION,
                       "initial_log_std": Range(-5, 2)}

    def __init__(self, environment, policy: keras.Model | None = None, hidden_units=(100, 100),
                 initial_log_std: float = 0.0, inner_lr: float = 0.1,
                 later_steps_lr_scale: float = 0.5, inner_steps: int = 1,
                 inner_steps_test: int = 3, trajectories: int = 20, discount: float = 0.99,
                 baseline: str = "linear", first_order: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.check_arguments(locals())
        self.environment = environment
        self.policy = policy or gaussian_mlp_policy(
            environment.observation_dim, environment.action_dim, tuple(hidden_units),
            initial_log_std)
        if int(self.policy.output_shape[-1]) != 2 * environment.action_dim:
            raise UserError(f"The policy must output {2 * environment.action_dim} values per "
                            "observation (means, then log-stds); got "
                            f"{self.policy.output_shape}. Use tfmeta.rl.gaussian_mlp_policy.")
        self.inner_lr = float(inner_lr)
        self.later_steps_lr_scale = float(later_steps_lr_scale)
        self.inner_steps = int(inner_steps)
        self.inner_steps_test = int(inner_steps_test)
        self.trajectories = int(trajectories)
        self.discount = float(discount)
        self.baseline = baseline
        self.first_order = bool(first_order)
        self.return_before = keras.metrics.Mean(name="return_before")
        self.return_after = keras.metrics.Mean(name="return_after")

    # ------------------------------------------------------------ the policy
    def task_params(self, tasks):
        """The meta-parameters, one copy per task: each `[B, *shape]` (differentiable)."""
        return [tf.broadcast_to(v[None], tf.concat([[tasks], tf.shape(v)], 0))
                for v in weights.values(self.policy.trainable_variables)]

    def policy_outputs(self, params, observations):
        """Outputs `[B, m, 2A]` of the policy run with task `b`'s weights `params[i][b]` on
        its observations `observations[b] [m, D]`."""
        state = weights.values(self.policy.non_trainable_variables)

        def one_task(args):
            outputs, _ = self.policy.stateless_call(list(args[0]), state, args[1])
            return tf.cast(outputs, tf.float32)

        return tf.vectorized_map(one_task, (list(params), observations))

    def sample(self, params, goals, seed):
        """`trajectories` rollouts per goal `[B, 2]` of the policies `params` (see
        `tfmeta.rl.policy_gradient.rollout`), noise a pure function of `seed [2]`."""
        params = [tf.stop_gradient(p) for p in params]
        shape = [self.environment.horizon, tf.shape(goals)[0], self.trajectories,
                 self.environment.action_dim]
        noise = tf.random.stateless_normal(shape, seed)
        return rollout(lambda positions: self.policy_outputs(params, positions),
                       self.environment, goals, noise)

    def surrogate(self, params, trajectories):
        """The REINFORCE surrogate of each task `[B]` under the policies `params`."""
        observations = trajectories["observations"]
        shape = tf.shape(observations)
        outputs = self.policy_outputs(params, tf.reshape(observations, [shape[0], -1, shape[-1]]))
        outputs = tf.reshape(outputs, tf.concat([shape[:3], [-1]], 0))
        task_advantages = advantages(trajectories, self.discount, self.baseline)
        return surrogate_loss(outputs, trajectories, task_advantages)

    # ------------------------------------------------------------ the method
    def inner_lr_at(self, step: int) -> float:
        return self.inner_lr * (1.0 if step == 0 else self.later_steps_lr_scale)

    def inner_update(self, params, trajectories, step: int, first_order: bool):
        """One policy-gradient step of every task's fast weights on its trajectories."""
        with tf.GradientTape() as tape:
            tape.watch(params)
            # Task b's loss depends only on params[i][b], so the gradient of the sum is
            # every task's own gradient.
            loss = tf.reduce_sum(self.surrogate(params, trajectories))
        # (With one task, vectorized_map's gradient can come back as IndexedSlices.)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, params)]
        if first_order:
            grads = [tf.stop_gradient(g) for g in grads]
        return weights.gradient_step(params, grads, self.inner_lr_at(step))

    def adapt(self, params, goals, seed, steps: int, first_order: bool):
        """(fast weights after `steps` inner steps, the `steps + 1` trajectory batches: the
        one sampled before each step, and one of the adapted policies)."""
        batches = []
        for step in range(steps + 1):
            step_seed = tf.stack([seed[0], seed[1] * 16 + step])
            batches.append(self.sample(params, goals, step_seed))
            if step < steps:
                params = self.inner_update(params, batches[-1], step, first_order)
        return params, batches

    def meta_loss(self, batch, seed=None):
        """(meta-loss, (mean return before adaptation, after)) of `{"goals": [B, 2]}`: the
        mean surrogate of the adapted policies on their own trajectories."""
        goals = batch["goals"]
        seed = self.step_seed(TRAIN_SALT) if seed is None else seed
        params = self.task_params(tf.shape(goals)[0])
        fast, batches = self.adapt(params, goals, seed, self.inner_steps, self.first_order)
        loss = tf.reduce_mean(self.surrogate(fast, batches[-1]))
        return loss, (tf.reduce_mean(episode_returns(batches[0])),
                      tf.reduce_mean(episode_returns(batches[-1])))

    # ------------------------------------------------------ Keras integration
    @property
    def metrics(self):
        return [self.loss_tracker, self.return_before, self.return_after]

    def test_step(self, data):
        batch = self.check_batch(data)
        loss, outputs = self.meta_loss(batch, self.step_seed(VALIDATION_SALT))
        return self.update_metrics(batch, loss, outputs)

    def update_metrics(self, batch, loss, outputs):
        """The mean meta-loss and the mean returns before and after adaptation."""
        before, after = outputs
        self.return_before.update_state(before)
        self.return_after.update_state(after)
        return super().update_metrics(batch, loss, outputs)

    def call(self, data, training=False):
        return self.meta_loss(self.check_batch(data))

    def check_batch(self, data):
        data = super().check_batch(data)
        goals = data["goals"]
        if goals.shape.rank is not None and goals.shape.rank != 2:
            raise UserError(f"{type(self).__name__} takes {{'goals': [B, 2]}} meta-batches; "
                            f"got goals of shape {goals.shape}. Build them with "
                            f"{type(self).__name__}.training_episodes().")
        return data

    # --------------------------------------------------- data and evaluation
    def training_episodes(self, dataset, spec, replicas: int = 1, start_step: int = 0,
                          worker: int = 0, workers: int = 1):
        """(train, validation) streams of `{"goals": [B, 2]}`: training meta-batch `s` is a
        pure function of (`spec.seed`, `s`) (under several workers, each takes its share
        of it); validation is `spec.val_episodes` goals of the val stream."""
        size = spec.meta_batch_size
        share = size // workers

        def train_batch(step):
            goals = dataset.goals("train", size, spec.seed, step)
            return {"goals": goals[worker * share:(worker + 1) * share]}

        train = tf.data.Dataset.range(start_step, 2 ** 62).map(train_batch)
        val_size = validation_batch_size(spec, replicas)
        batches = math.ceil(spec.val_episodes / val_size)
        validation = tf.data.Dataset.range(batches).map(
            lambda i: {"goals": dataset.goals("val", val_size, spec.seed, i)})
        return train, validation

    def adaptation_returns(self, goals, seed, steps: int):
        """Mean return `[B, steps + 1]` over `trajectories` rollouts per goal of the policy
        after 0, 1, ..., `steps` inner steps."""
        params = self.task_params(tf.shape(goals)[0])
        _, batches = self.adapt(params, goals, seed, steps, first_order=True)
        return tf.stack([tf.reduce_mean(episode_returns(b), axis=1) for b in batches], axis=1)

    def meta_test(self, dataset, spec, split: str = "test", num_episodes: int | None = None,
                  seed: int = 1234, ways: int | None = None, shots: int | None = None,
                  log_dir: str | None = None, step: int = 0) -> dict:
        """Mean return (and its 95% interval over goals) on `num_episodes` (default
        `spec.eval_episodes`) new goals of `split`, after 0..`inner_steps_test` inner
        steps: `returns[k]`, `ci95[k]`. `ways`/`shots` do not apply."""
        del ways, shots, log_dir, step
        count = num_episodes or spec.eval_episodes
        size = min(spec.eval_meta_batch_size, count)
        steps = self.inner_steps_test
        function = self.compiled_function(
            f"adaptation_returns_{steps}", lambda g, s: self.adaptation_returns(g, s, steps))
        values = np.concatenate([
            function(dataset.goals(split, size, seed, i),
                     tf.constant([seed * 8 + 7, i], tf.int64)).numpy()
            for i in range(math.ceil(count / size))])[:count]
        stats = [mean_and_ci95(values[:, k]) for k in range(steps + 1)]
        return {"returns": [m for m, _ in stats], "ci95": [c for _, c in stats],
                "inner_steps": list(range(steps + 1)), "episodes": int(len(values)),
                "trajectories": self.trajectories, "horizon": self.environment.horizon}

    # ----------------------------------------------------------------- serving
    def adapt_and_act(self, goal, observations, seed=SERVING_SEED):
        """Adapts to `goal [2]` with `inner_steps_test` steps on trajectories sampled in the
        graph (noise from `seed`), and returns the adapted policy's mean action at each
        observation `[n, 2]` as the velocity it moves the agent `[n, 2]`."""
        goals = tf.convert_to_tensor(goal, tf.float32)[None]
        params = self.task_params(1)
        fast, _ = self.adapt(params, goals, tf.constant(seed, tf.int64), self.inner_steps_test,
                             first_order=True)
        outputs = self.policy_outputs(fast, tf.convert_to_tensor(observations, tf.float32)[None])
        means, _ = split_outputs(outputs[0])
        return self.environment.velocity(means)

    def serving_module(self, dataset) -> tf.Module:
        return AdaptAndAct(self)

    def feature_model(self) -> keras.Model:
        return self.policy


class MAMLRLRecipe(Recipe):
    """MAML-RL learns from an environment (`config.data` describes it: navigation_2d is
    simulated, so nothing is read and --data_dir has no say in it); its policy is built
    for the environment's observations and actions."""

    input_kinds = ("environment",)
    fixed_arguments = ("policy",)

    def check_input_kind(self, kind, dataset):
        if kind is not None and kind not in self.input_kinds:
            raise UserError(f"{self.name} learns from environments, but --dataset={dataset} "
                            f"gives {kind}; use --dataset=navigation_2d, or a learner of "
                            f"{kind} such as --algo=maml.")

    def build(self, config, input_shape):
        del input_shape
        return self.learner(Navigation2D(**config.data), **config.learner)


RECIPE = MAMLRLRecipe(MAMLRL)

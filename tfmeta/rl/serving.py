"""What an exported MAML-RL SavedModel serves:

    loaded = tf.saved_model.load(f"{workdir}/export")
    actions = loaded.adapt_and_act(goal=g, observations=o)["actions"]     # g [2], o [n, 2]

The learner adapts its policy to the goal in the graph (trajectories sampled with a fixed
seed, so a request is reproducible) and returns the adapted policy's mean action at each
observation, as the velocity it moves the agent (within [-max_speed, max_speed]).
"""

from __future__ import annotations

import tensorflow as tf


class AdaptAndAct(tf.Module):
    """`adapt_and_act(goal [2], observations [n, 2]) -> {"actions": [n, 2]}`, with the
    request checked in the graph first."""

    def __init__(self, learner):
        super().__init__(name="tfmeta_rl_serving")
        self.learner = learner
        dim = learner.environment.observation_dim
        self.adapt_and_act = tf.function(self._adapt_and_act, input_signature=[
            tf.TensorSpec([2], tf.float32, name="goal"),
            tf.TensorSpec([None, dim], tf.float32, name="observations")])

    def signatures(self) -> dict:
        return {"adapt_and_act": self.adapt_and_act.get_concrete_function()}

    def _adapt_and_act(self, goal, observations):
        environment = self.learner.environment
        # A goal the agent cannot reach within its horizon is not a task of this family
        # (and its rewards would swamp the adaptation's baseline fit).
        reach = float(max(environment.goal_bound, environment.max_speed * environment.horizon))
        checks = [
            tf.debugging.assert_all_finite(goal, "goal must be finite (no NaN or inf)"),
            tf.debugging.assert_less_equal(tf.reduce_max(tf.abs(goal)), reach, message=(
                f"goal must be within [-{reach:g}, {reach:g}] in each coordinate, where the "
                f"agent can reach in {environment.horizon} steps (trained goals: within "
                f"+-{environment.goal_bound:g})")),
            tf.debugging.assert_all_finite(observations, "observations must be finite"),
            tf.debugging.assert_positive(tf.shape(observations)[0], message=(
                "observations is empty: send at least one position [n, 2]")),
        ]
        with tf.control_dependencies(checks):
            actions = self.learner.adapt_and_act(tf.identity(goal), tf.identity(observations))
        finite = tf.debugging.assert_all_finite(actions, "the adapted policy's actions are not "
                                                "finite; the observations are too far from "
                                                "where the agent moves")
        with tf.control_dependencies([finite]):
            return {"actions": tf.identity(actions)}

"""Reinforcement-learning tasks in TensorFlow: environments whose rollouts run in the graph,
the Gaussian policy, and the policy-gradient pieces MAML-RL (`tfmeta.algorithms.maml_rl`)
builds on."""

from tfmeta.rl.navigation import Navigation2D, NavigationTasks
from tfmeta.rl.policy import gaussian_mlp_policy

__all__ = ["Navigation2D", "NavigationTasks", "gaussian_mlp_policy"]

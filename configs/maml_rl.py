"""MAML-RL (Finn et al. 2017, section 5.3) on 2D navigation with the paper's settings.

Paper (section 5.3 and appendix A.2): a Gaussian MLP policy with two hidden layers of 100
ReLU units; one inner policy-gradient step with alpha = 0.1 on 20 trajectories per task
(at evaluation 0.1 for the first step and 0.05 after); horizon 100; meta-batch 20 tasks
for 2D navigation (the reference script `maml_trpo_point.py` uses 40); TRPO outer update.
Here the outer update is Adam on the meta-gradient of the post-update REINFORCE surrogate
(see `tfmeta.algorithms.maml_rl`). `ways`/`shots`/`queries` do not apply.
"""

import ml_collections

from . import base


def get_config(dataset: str = "navigation_2d", setting: str = "5w1s"):
    config = base.get_config("maml_rl", dataset, setting)
    config.model = ml_collections.ConfigDict({"name": "none"})  # the learner builds its policy
    config.learner.update(hidden_units=(100, 100), initial_log_std=0.0, inner_lr=0.1,
                          later_steps_lr_scale=0.5, inner_steps=1, inner_steps_test=3,
                          trajectories=20, discount=0.99, baseline="linear", first_order=False)
    if dataset == "navigation_2d":
        config.data.update(horizon=100, max_speed=0.1, goal_bound=0.5)
    config.meta_batch_size = 20
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 1000
    config.log_every = 25
    config.checkpoint_every = 100
    config.val_episodes = 20
    config.eval_episodes = 100  # new goals at meta-test time
    config.eval_meta_batch_size = 50
    return config


TINY = ("learner.hidden_units=(8, 8)", "learner.trajectories=4", "learner.inner_steps_test=1")

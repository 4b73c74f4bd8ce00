"""ANIL (Raghu et al. 2020): MAML's settings, adapting only Conv4's `head` layer."""

from configs import maml


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = maml.get_config(dataset, setting)
    config.algo = "anil"
    config.learner.head = "head"
    # Only the head moves, so the inner loop takes a larger step than MAML's 0.4.
    config.learner.update(inner_lr=0.4, inner_steps=5, inner_steps_test=10)
    return config

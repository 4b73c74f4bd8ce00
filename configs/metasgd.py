"""Meta-SGD (Li et al. 2017) on MAML's Omniglot settings: one inner step, alpha initialised
to 0.4 (MAML's rate; the paper samples it uniformly), Conv4, Adam 1e-3."""

from . import maml


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = maml.get_config(dataset, setting)
    config.algo = "metasgd"
    config.learner.update(inner_steps=1, inner_steps_test=1)
    return config


TINY = maml.TINY

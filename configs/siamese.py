"""Siamese Networks (Koch et al. 2015) trained on same/different pairs drawn from episodes.

Settings: Omniglot 5w1s (default), 5w5s, 20w1s, 20w5s; mini-ImageNet 5w1s, 5w5s (and
tieredImageNet, CIFAR-FS, FC100 alike, 15 queries per class).
Each training episode of the setting's N and K gives every (query, support) pair,
5 queries per class, 8 episodes per update. Deviations: the twin is a Conv4 tower
with Koch's 4096-unit sigmoid layer (his convolutions need 105x105 inputs), and
the optimizer is Adam at 1e-3 instead of SGD with per-layer rates and momentum.
"""

from . import base


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("siamese", dataset, setting)
    config.model.update(name="siamese_twin", filters=64, units=4096)
    config.queries = 5 if dataset == "omniglot" else 15
    config.meta_batch_size = 8
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 20000
    return config


TINY = ("model.filters=4", "model.units=16")

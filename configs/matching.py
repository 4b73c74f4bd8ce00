"""Matching Networks (Vinyals et al. 2016), Section 4.1.

Settings: Omniglot 5w1s (default), 5w5s, 20w1s, 20w5s; mini-ImageNet 5w1s, 5w5s (and
tieredImageNet, CIFAR-FS, FC100 alike).
Trained on episodes of the test setting's N and K. Full context embeddings are on
for mini-ImageNet and off for Omniglot, where the paper found they did not help.
The paper does not give the optimizer, queries or batch size; these are Adam at
1e-3, 5 queries per class (15 on mini-ImageNet) and 8 episodes per update.
"""

from . import base


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("matching", dataset, setting)
    config.learner.update(fce=dataset != "omniglot", processing_steps=5)
    config.model.update(name="conv4", filters=64)
    config.queries = 5 if dataset == "omniglot" else 15
    config.meta_batch_size = 8
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 20000
    return config


TINY = ("model.filters=4", "learner.fce=True")

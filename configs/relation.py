"""Relation Networks (Sung et al. 2018), Section 4 and the reference code.

Settings: Omniglot 5w1s (default), 5w5s, 20w1s, 20w5s; mini-ImageNet 5w1s, 5w5s.
One episode per update, Adam at 1e-3; queries per class as in the paper: Omniglot
19 (5w1s), 15 (5w5s), 10 (20w1s), 5 (20w5s); mini-ImageNet 15 (1-shot), 10 (5-shot),
which tieredImageNet, CIFAR-FS and FC100 (not in the paper) take too.
Deviations: the embedding's convolutions are padded (7x7 maps on 28x28 Omniglot
instead of 5x5), the learning-rate halving every 100k episodes is not applied, and
num_steps is far below the paper's 1M (Omniglot) / 500k (mini-ImageNet) episodes.
"""

from . import base
from .datasets import natural_images

QUERIES = {("omniglot", 5, 1): 19, ("omniglot", 5, 5): 15, ("omniglot", 20, 1): 10,
           ("omniglot", 20, 5): 5, ("mini_imagenet", 5, 1): 15, ("mini_imagenet", 5, 5): 10}


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("relation", dataset, setting)
    config.learner.update(relation_filters=64, relation_units=8)
    config.model.update(name="relation_embedding", filters=64)
    paper_dataset = "mini_imagenet" if natural_images(dataset) else dataset
    config.queries = QUERIES.get((paper_dataset, config.ways, config.shots), 15)
    config.meta_batch_size = 1
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 100000
    return config


TINY = ("model.filters=4", "learner.relation_filters=4")

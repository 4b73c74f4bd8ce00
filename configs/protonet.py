"""Prototypical Networks (Snell et al. 2017) with the paper's settings (Section 3).

Settings name the meta-test episodes: Omniglot 5w1s (default), 5w5s, 20w1s, 20w5s;
mini-ImageNet 5w1s, 5w5s. Training uses more ways than testing, as in the paper:
Omniglot 60-way with 5 queries per class; mini-ImageNet 30-way (1-shot) or 20-way
(5-shot) with 15 queries per class; one episode per update; Adam at 1e-3.
Deviation: the paper halves the learning rate every 2000 episodes and stops on
validation loss; here the rate is constant for `num_steps`.
"""

from configs import base

TRAIN_WAYS = {("omniglot", 1): 60, ("omniglot", 5): 60,
              ("mini_imagenet", 1): 30, ("mini_imagenet", 5): 20}


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("protonet", dataset, setting)
    config.learner.update(distance="squared_euclidean")
    config.model.update(name="conv4", filters=64)
    config.eval_ways, config.eval_shots = config.ways, config.shots
    config.ways = TRAIN_WAYS.get((dataset, config.shots), config.ways)
    config.queries = 5 if dataset == "omniglot" else 15
    config.meta_batch_size = 1
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 20000
    return config

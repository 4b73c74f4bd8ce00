"""MAML (Finn et al. 2017) with the paper's hyperparameters (Table/Section 5.2, appendix A).

Settings: Omniglot 5w1s (default), 5w5s, 20w1s, 20w5s; mini-ImageNet 5w1s, 5w5s.
Deviation: Conv4 uses max-pooling on Omniglot too (the paper used strided
convolutions there); `--set=model.downsample=strided` restores it.
"""

from configs import base


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("maml", dataset, setting)
    config.learner.update(inner_lr=0.4, inner_steps=1, inner_steps_test=3, first_order=False,
                          batch_norm="batch_stats")
    config.model.update(downsample="max_pool")
    config.meta_batch_size = 32
    config.queries = config.shots  # the reference code samples K queries per class
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 60000
    if dataset == "omniglot" and config.ways == 20:
        config.meta_batch_size = 16
        config.learner.update(inner_lr=0.1, inner_steps=5, inner_steps_test=5)
    elif dataset == "mini_imagenet":
        config.model.filters = 32
        config.meta_batch_size = 4 if config.shots == 1 else 2
        config.queries = 15
        config.learner.update(inner_lr=0.01, inner_steps=5, inner_steps_test=10)
        config.num_steps = 60000
    return config

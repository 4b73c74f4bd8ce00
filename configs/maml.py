"""MAML (Finn et al. 2017) with the paper's hyperparameters (Table/Section 5.2, appendix A).

Settings: Omniglot 5w1s (default), 5w5s, 20w1s, 20w5s; mini-ImageNet 5w1s, 5w5s;
sinusoid regression (section 5.1) 1w5s, 1w10s (default), 1w20s: K = 5, 10, 20 points.
tieredImageNet, CIFAR-FS and FC100 (not in the paper) take its mini-ImageNet settings.
Deviation: Conv4 uses max-pooling on Omniglot too (the paper used strided
convolutions there); `--set=model.downsample=strided` restores it.
"""

from . import base
from .datasets import natural_images


def get_config(dataset: str = "omniglot", setting: str | None = None):
    setting = setting or ("1w10s" if dataset == "sinusoid" else "5w1s")
    config = base.get_config("maml", dataset, setting)
    # recompute=True trades compute for memory in second-order runs (docs/performance.md).
    config.learner.update(inner_lr=0.4, inner_steps=1, inner_steps_test=3, first_order=False,
                          batch_norm="batch_stats", recompute=False)
    config.model.update(downsample="max_pool")
    config.meta_batch_size = 32
    config.queries = config.shots  # the reference code samples K queries per class
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 60000
    if dataset == "omniglot" and config.ways == 20:
        config.meta_batch_size = 16
        config.learner.update(inner_lr=0.1, inner_steps=5, inner_steps_test=5)
    elif natural_images(dataset):
        config.model.filters = 32
        config.meta_batch_size = 4 if config.shots == 1 else 2
        config.queries = 15
        config.learner.update(inner_lr=0.01, inner_steps=5, inner_steps_test=10)
        config.num_steps = 60000
    if dataset == "sinusoid":
        sinusoid(config)
    return config


def sinusoid(config):
    """Section 5.1: the MLP (40, 40), K support and K query points per task, meta-batch 25,
    one inner step of 0.01, Adam 1e-3, 70k meta-steps; evaluated on 100 query points per
    task after 1 and 10 steps. The learner is `MAMLRegression` (the mean squared error and
    its meta-test, `tfmeta.algorithms.maml_regression`), which
    `tfmeta.algorithms.build_learner` builds for the dataset's regression tasks."""
    config.model = type(config.model)({"name": "mlp", "hidden_units": (40, 40)})
    config.learner.update(inner_lr=0.01, inner_steps=1, inner_steps_test=10)
    config.ways = 1
    config.queries = config.shots
    config.eval_queries = 100
    config.meta_batch_size = 25
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 70000


TINY = ("model.filters=4", "learner.inner_steps_test=1")

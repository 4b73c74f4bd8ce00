"""Reptile (Nichol et al. 2018) with the paper's hyperparameters (Appendix A, Table 3:
Omniglot, the settings used to compare algorithms).

Omniglot 5w1s (default): Adam inner rate 1e-3 (beta1 = 0 as in the reference code), inner
batch 10, 5 inner iterations, 10 training shots per class, meta-batch 5, meta step size 1.0
annealed linearly to 0 over 100k meta-iterations; meta-test: 50 inner iterations with batch
5, one query per class. Conv4 with strided convolutions and no pooling, as the reference.
Set `learner.transductive=False` for the non-transductive protocol.

mini-ImageNet (and tieredImageNet, CIFAR-FS, FC100, not in the paper, alike): the paper's
mini-ImageNet column and the reference README's commands: Conv4 of 32 filters with
max-pooling, 8 inner iterations of batch 10, 15 training shots; meta-test 50 iterations
of batch 5 (1-shot) or 15 (5-shot).

MNIST (`--dataset=mnist`): no paper numbers; the same hyperparameters on the loader's
"classification" split (train digits 0-4; validate and test on digits 5-9, different
images), so 5-way episodes at test time use exactly the five held-out digits.
"""

from ml_collections import config_dict

from . import base
from .datasets import natural_images


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("reptile", dataset, setting)
    config.model.update(downsample="strided")
    config.learner.update(
        inner_steps=5, inner_batch_size=10, inner_steps_test=50, inner_batch_size_test=5,
        inner_optimizer="adam", inner_lr=1e-3, inner_beta_1=0.0,
        meta_step_size=1.0, meta_step_size_final=0.0, anneal_steps=config_dict.placeholder(int),
        outer_optimizer=False, transductive=True)
    config.train_shots = 10  # examples per class in a meta-training task
    config.queries = 1  # meta-test: one query per class, as the paper evaluates
    config.meta_batch_size = 5
    config.num_steps = 100000
    # With outer_optimizer=False the optimizer only counts meta-steps (and is checkpointed);
    # with outer_optimizer=True it receives phi - mean(W) as the gradient.
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 1.0
    if dataset == "mnist":
        config.data.split = "classification"
    elif natural_images(dataset):
        config.model.update(filters=32, downsample="max_pool")
        config.learner.update(inner_steps=8, inner_batch_size=10, inner_steps_test=50,
                              inner_batch_size_test=5 if config.shots == 1 else 15)
        config.train_shots = 15
    return config


TINY = ("model.filters=4", "learner.inner_steps_test=2", "learner.transductive=False")

"""Reptile (Nichol et al. 2018) with the paper's hyperparameters (Appendix A, Table 3:
Omniglot, the settings used to compare algorithms).

Omniglot 5w1s (default): Adam inner rate 1e-3 (beta1 = 0 as in the reference code), inner
batch 10, 5 inner iterations, 10 training shots per class, meta-batch 5, meta step size 1.0
annealed linearly to 0 over 100k meta-iterations; meta-test: 50 inner iterations with batch
5, one query per class. Conv4 with strided convolutions and no pooling, as the reference.
Set `learner.transductive=False` for the non-transductive protocol.

MNIST (`--dataset=mnist`): no paper numbers; the same hyperparameters on the loader's
"classification" split (train digits 0-4; validate and test on digits 5-9, different
images), so 5-way episodes at test time use exactly the five held-out digits.
"""

from ml_collections import config_dict

from configs import base


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
    return config

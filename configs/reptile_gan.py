"""Reptile-GAN after FIGR (Clouatre and Demers 2019), with FIGR's reference settings.

A task is `shots` images of one class (setting "1w4s": 4 images; ways is unused). Inner
loop: SGD, rate 1e-3, 10 iterations of one critic and one generator step, 4 fakes per
step, gradient penalty weight 10; outer loop: `theta - mean(adapted)` handed to Adam with
rate 1e-4, meta-batch 1. ResNet generator and critic with 64 base filters; 2 blocks
(28 = 7 * 2**2; FIGR used 4 blocks at 32x32). Datasets: MNIST (train digits 0-8, hold
out 9) and Omniglot (hold out whole alphabets: the loader's test split); the natural-image
datasets (not in FIGR) generate their images in [0, 1] (`data.normalize=False`).

Evaluation (`bin/evaluate.py`): 100 episodes; a Conv4 classifier over up to 20 classes
(MNIST: all ten digits) scores 16 samples per episode, adapted vs unadapted.
"""

import ml_collections
from ml_collections import config_dict

from . import base
from .datasets import natural_images


def get_config(dataset: str = "mnist", setting: str = "1w4s"):
    config = base.get_config("reptile_gan", dataset, setting)
    config.model = ml_collections.ConfigDict(
        {"name": "resnet_gan", "filters": 64, "blocks": 2, "units_per_block": 2,
         "latent_dim": 100})
    config.learner.update(inner_steps=10, inner_steps_test=10, inner_optimizer="sgd",
                          inner_lr=1e-3, penalty_weight=10.0, outer_optimizer=True,
                          anneal_steps=config_dict.placeholder(int))
    config.meta_batch_size = 1
    config.queries = 1  # unused by generation tasks
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-4
    config.num_steps = 100000
    config.val_episodes = 20
    config.eval_meta_batch_size = 10
    config.eval_episodes = 100
    # The generation metric (tfmeta.algorithms.generation_eval): samples per evaluation
    # episode, classes the evaluation classifier tells apart, its training steps.
    config.generation = ml_collections.ConfigDict(
        {"samples": 16, "metric_classes": 20, "classifier_steps": 300})
    if dataset == "mnist":
        config.data.split = "generation"
    elif natural_images(dataset):
        config.data.normalize = False
    return config


TINY = ("model.filters=2", "model.blocks=1", "model.units_per_block=1", "model.latent_dim=4",
        "learner.inner_steps_test=1")

"""ANIL (Raghu et al. 2020): MAML's settings, adapting only Conv4's `head` layer
(`learner.head_layer`).

On the natural-image datasets ANIL keeps MAML's mini-ImageNet inner loop (rate 0.01, 5
steps, 10 at test), as the paper does.
"""

from . import maml
from .datasets import natural_images


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = maml.get_config(dataset, setting)
    config.algo = "anil"
    config.learner.head_layer = "head"
    if not natural_images(dataset):
        # Only the head moves, so the inner loop takes more steps than MAML's Omniglot one.
        config.learner.update(inner_lr=0.4, inner_steps=5, inner_steps_test=10)
    return config


TINY = maml.TINY

"""MANN (Santoro et al. 2016) on Omniglot with the paper's settings.

The paper: flattened 20x20 pixels as input, an LSTM controller of 200 units with 4
read/write heads on a 128 x 40 memory, usage decay 0.95, sequences of 50 steps (5
classes x 10 instances), 16 sequences per update. Here the training sequence is the
support set of a `ways`-way `shots=10` episode plus one query step per class; meta-test
episodes are the setting's (5w1s: five support steps, then the queries).
Deviations: Adam at 2e-3 instead of RMSProp at 1e-4, and the read heads' learned key
strength (`learner.key_strength`, see tfmeta/algorithms/mann.py), with which binding
images to labels starts after hundreds of updates instead of tens of thousands.
`--set=model.name=conv4 --set=model.filters=32` feeds Conv4 features instead of pixels;
on the natural-image datasets (not in the paper) that is the default, since 84x84x3
pixels are too many inputs for the controller.
"""

import ml_collections

from . import base
from .datasets import natural_images


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("mann", dataset, setting)
    if dataset == "omniglot":
        config.data.update(image_size=20)
    config.model = ml_collections.ConfigDict({"name": "none"})  # the paper's: pixels
    if natural_images(dataset):
        config.model = ml_collections.ConfigDict({"name": "conv4", "filters": 32})
    config.learner.update(units=200, memory_slots=128, slot_size=40, heads=4, gamma=0.95,
                          write_key=False, key_strength=True)
    config.eval_ways, config.eval_shots, config.eval_queries = config.ways, config.shots, 5
    config.shots, config.queries = 10, 1
    config.meta_batch_size = 16
    config.optimizer.learning_rate = 2e-3
    config.num_steps = 20000
    return config


TINY = ("learner.units=8", "learner.memory_slots=8", "learner.slot_size=4", "learner.heads=1")

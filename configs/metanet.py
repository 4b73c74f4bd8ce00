"""Meta Networks (Munkhdalai and Yu 2017) on Omniglot at a CPU scale.

The paper's Omniglot nets are 5-layer CNNs with 64 filters; here u and b are Conv4
feature extractors with 32 filters, a 64-unit representation layer, meta learners with
20 hidden units, Adam 1e-3.
"""

from . import base


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("metanet", dataset, setting)
    config.model.update(filters=32, downsample="max_pool")
    config.learner.update(representation_units=64, meta_hidden=20, margin=1.0,
                          preprocess_p=10.0)
    config.meta_batch_size = 16
    config.queries = 5
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 20000
    return config


TINY = ("model.filters=4",)

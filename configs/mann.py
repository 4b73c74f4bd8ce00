"""MANN (Santoro et al. 2016) on Omniglot.

The paper's controller is an LSTM of 200 units with 4 read/write heads on a 128 x 40
memory, usage decay 0.95, flattened 20x20 pixels as input and sequences of 50 steps
(5 classes x 10 instances). Deviations for CPU: the inputs are Conv4 features (32
filters, trained end to end; `--set=model.name=''` feeds flattened pixels instead), a
smaller controller and memory, and training sequences of the episode's own size.
"""

from configs import base


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("mann", dataset, setting)
    config.model.update(filters=32, downsample="max_pool")
    config.learner.update(units=128, memory_slots=64, slot_size=40, heads=4, gamma=0.95)
    config.meta_batch_size = 16
    config.queries = 5
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 20000
    return config

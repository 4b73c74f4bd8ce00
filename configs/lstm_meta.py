"""LSTM meta-learner (Ravi and Larochelle 2017) on Omniglot.

The paper's learner is Conv4 with 32 filters and its meta-learner a 2-layer LSTM
(20 hidden units, then the parameter-LSTM), Adam 1e-3 with gradient clipping 0.25.
Deviations for CPU: 5 updates per task (the paper used 12 at meta-training, 5-shot).
"""

from . import base


def get_config(dataset: str = "omniglot", setting: str = "5w1s"):
    config = base.get_config("lstm_meta", dataset, setting)
    config.model.update(filters=32, downsample="max_pool")
    config.learner.update(inner_steps=5, inner_steps_test=5, hidden_units=20, preprocess_p=10.0)
    config.meta_batch_size = 8
    config.queries = 15
    config.optimizer.learning_rate = 1e-3
    config.optimizer.clipnorm = 0.25
    config.num_steps = 20000
    return config


TINY = ("model.filters=4", "learner.inner_steps_test=1")

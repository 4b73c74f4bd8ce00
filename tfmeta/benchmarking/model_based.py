"""Issue 6's learners at their configs' Omniglot 5-way 1-shot settings (28x28, the
configs' backbones, meta-batch sizes and inner steps): median ms per meta-step."""

from __future__ import annotations

import keras

from tfmeta.algorithms import build_learner
from tfmeta.benchmarking.common import time_train_steps
from tfmeta.config import get_config
from tfmeta.data import episode_dataset, load_dataset


def _case(algo: str):
    def run(steps: int) -> dict:
        config = get_config(algo, "omniglot", "5w1s")
        dataset = load_dataset("omniglot")
        episodes = episode_dataset(dataset.split("train"), config.ways, config.shots,
                                   config.queries, config.meta_batch_size)
        learner = build_learner(config, dataset.input_shape)
        learner.compile(optimizer=keras.optimizers.Adam(config.optimizer.learning_rate))
        result = time_train_steps(learner, episodes, steps)
        result["meta_batch_size"] = config.meta_batch_size
        return result

    return run


CASES = {f"{algo}_omniglot_5w1s": _case(algo) for algo in ("metasgd", "anil", "lstm_meta", "metanet", "mann")}

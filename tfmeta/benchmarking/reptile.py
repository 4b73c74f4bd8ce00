"""Reptile at `configs/reptile.py`'s Omniglot 5-way 1-shot settings (the paper's: meta-batch
5, 10 training shots, 5 Adam steps with batch 10, Conv4 with 64 filters and strided
convolutions), transductive or not, with the time of a 50-step meta-test adaptation; and
Reptile-GAN at `configs/reptile_gan.py`'s FIGR settings (4 images per task, 10 inner
steps) on the bundled Omniglot, with 64 (FIGR's) and 16 base filters."""

from __future__ import annotations

import tensorflow as tf

from tfmeta.benchmarking.common import time_config_training, time_function
from tfmeta.data import EpisodeShape, episode_dataset


def _reptile_case(*overrides):
    def run(steps: int) -> dict:
        result, learner, dataset = time_config_training("reptile", steps, overrides=overrides)
        test = next(iter(episode_dataset(dataset.split("test"), EpisodeShape(5, 1, 1), 20,
                                         seed=1)))
        evaluate = tf.function(lambda batch: learner.query_logits(batch, training=False))
        timing = time_function(evaluate, (test,), max(2, steps // 5))
        result["eval_50_steps_ms_per_20_episodes"] = timing["median_ms"]
        return result

    return run


def _reptile_gan_case(*overrides):
    def run(steps: int) -> dict:
        return time_config_training("reptile_gan", steps, "omniglot", "1w4s", overrides)[0]

    return run


CASES = {
    "reptile_omniglot_5w1s": _reptile_case(),
    "reptile_omniglot_5w1s_non_transductive": _reptile_case("learner.transductive=False"),
    "reptile_gan_figr_64": _reptile_gan_case(),
    "reptile_gan_figr_16": _reptile_gan_case("model.filters=16"),
}

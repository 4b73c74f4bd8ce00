"""MAML at the MAML paper's Omniglot 5-way 1-shot settings: meta-batch 32, one inner step,
inner rate 0.4, one query per class, Conv4 (64 filters), Adam 1e-3."""

from __future__ import annotations

import keras

from tfmeta.algorithms import MAML
from tfmeta.benchmarking.common import sampler_rate, time_train_steps
from tfmeta.data import episode_dataset, load_dataset
from tfmeta.models import conv4

WAYS, SHOTS, QUERIES, META_BATCH = 5, 1, 1, 32


def _maml_case(first_order: bool, jit_compile: bool = False):
    def run(steps: int) -> dict:
        dataset = load_dataset("omniglot")
        episodes = episode_dataset(dataset.split("train"), WAYS, SHOTS, QUERIES, META_BATCH)
        learner = MAML(conv4(dataset.input_shape, num_classes=WAYS), inner_lr=0.4,
                       inner_steps=1, first_order=first_order)
        learner.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
        result = time_train_steps(learner, episodes, steps)
        result["sampler_episodes_per_s"] = sampler_rate(episodes, 50, META_BATCH)
        step_episodes_per_s = META_BATCH / (result["median_ms_per_step"] / 1000)
        result["sampler_speedup_over_step"] = result["sampler_episodes_per_s"] / step_episodes_per_s
        return result

    return run


CASES = {
    "maml_second_order": _maml_case(first_order=False),
    "maml_first_order": _maml_case(first_order=True),
    "maml_second_order_xla": _maml_case(first_order=False, jit_compile=True),
}

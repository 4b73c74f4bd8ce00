"""MAML at `configs/maml.py`'s Omniglot 5-way 1-shot settings (the paper's: meta-batch 32,
one inner step, inner rate 0.4, one query per class, Conv4 with 64 filters, Adam 1e-3),
second and first order, in each form of the task loop (the tf.while_loop, every task in one
pass, under XLA); plus the episode sampler's rate on those episodes."""

from __future__ import annotations

from tfmeta.benchmarking.common import build_config_case, sampler_rate, time_train_steps
from tfmeta.episode_spec import DataSpec


def _maml_case(*overrides):
    def run(steps: int) -> dict:
        config, dataset, learner = build_config_case("maml", overrides=overrides)
        episodes, _ = learner.training_episodes(dataset, DataSpec.from_config(config))
        result = time_train_steps(learner, episodes, steps)
        batch = config.meta_batch_size
        result["sampler_episodes_per_s"] = sampler_rate(episodes, 50, batch)
        step_episodes_per_s = batch / (result["median_ms_per_step"] / 1000)
        result["sampler_speedup_over_step"] = result["sampler_episodes_per_s"] / step_episodes_per_s
        result["task_loop"] = learner.task_loop_form()
        return result

    return run


CASES = {
    "maml_second_order": _maml_case("learner.task_parallel=loop"),
    "maml_first_order": _maml_case("learner.task_parallel=loop", "learner.first_order=True"),
    "maml_second_order_vectorized": _maml_case("learner.task_parallel=vectorized"),
    # The task loop unrolled and compiled by XLA (a while_loop would be 33x slower).
    "maml_second_order_xla": _maml_case("learner.task_parallel=loop", "jit_compile=True"),
    # Every task in one pass under XLA: XLA's CPU backend runs grouped convolutions ~100x
    # slower than TensorFlow's kernels (about 50 s a step here); for GPUs.
    "maml_second_order_vectorized_xla": _maml_case("learner.task_parallel=vectorized",
                                                   "jit_compile=True"),
}

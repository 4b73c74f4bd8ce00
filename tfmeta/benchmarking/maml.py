"""MAML at `configs/maml.py`'s Omniglot 5-way 1-shot settings (the paper's: meta-batch 32,
one inner step, inner rate 0.4, one query per class, Conv4 with 64 filters, Adam 1e-3),
second and first order, in each form of the task loop (the tf.while_loop, every task in one
pass, under XLA) and of the CPU threads; plus the episode sampler's rate on those episodes."""

from __future__ import annotations

import statistics

from tfmeta.benchmarking.common import (
    _block,
    alternate_steps,
    build_config_case,
    paired_ratio,
    sampler_rate,
    time_train_steps,
)
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


def _xla_paired(steps: int) -> dict:
    """Second-order MAML with and without XLA in one process, a step of each in turn on the
    same batches (`alternate_steps`): the XLA/plain ratio with the machine's drift paired
    out, which separate processes at separate times do not give on a shared VM."""
    sides, learners = {}, {}
    for name, jit in (("plain", "False"), ("xla", "True")):
        # One process has one set of thread pools: each op on every core for both, which
        # XLA needs (cpu_threads="tasks" would leave it one core).
        config, dataset, learner = build_config_case(
            "maml", overrides=("learner.task_parallel=loop", f"jit_compile={jit}",
                               "cpu_threads=ops"))
        learner.make_train_function()
        learners[name] = learner
        sides[name] = (lambda b, f=learner.train_function: _block(f(iter([b]))), lambda b: b)
    episodes, _ = learners["plain"].training_episodes(dataset, DataSpec.from_config(config))
    times = alternate_steps(sides, list(episodes.take(steps + 1)))
    result = {f"{name}_median_ms_per_step": 1000 * statistics.median(t)
              for name, t in times.items()}
    result.update(median_ratio_xla_over_plain=paired_ratio(times, "xla", "plain"),
                  rounds=steps,
                  task_loop_xla=learners["xla"].task_loop_form())
    return result


CASES = {
    "maml_second_order": _maml_case("learner.task_parallel=loop"),
    # The same with each op split over every core (TensorFlow's default), not a task per
    # core (what cpu_threads="auto" takes for the loop on a CPU).
    "maml_second_order_ops_threads": _maml_case("learner.task_parallel=loop", "cpu_threads=ops"),
    "maml_first_order": _maml_case("learner.task_parallel=loop", "learner.first_order=True"),
    "maml_second_order_vectorized": _maml_case("learner.task_parallel=vectorized"),
    # The task loop unrolled and compiled by XLA (a while_loop would be 33x slower).
    "maml_second_order_xla": _maml_case("learner.task_parallel=loop", "jit_compile=True"),
    # Both of the above in one process, alternated (the fair XLA/plain ratio).
    "maml_second_order_paired_xla": _xla_paired,
    # Every task in one pass under XLA: XLA's CPU backend runs grouped convolutions ~100x
    # slower than TensorFlow's kernels (about 50 s a step here); for GPUs.
    "maml_second_order_vectorized_xla": _maml_case("learner.task_parallel=vectorized",
                                                   "jit_compile=True"),
}

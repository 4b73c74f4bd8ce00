"""MAML at `configs/maml.py`'s Omniglot 5-way 1-shot settings (the paper's: meta-batch 32,
one inner step, inner rate 0.4, one query per class, Conv4 with 64 filters, Adam 1e-3),
second and first order, and with XLA; plus the episode sampler's rate on those episodes."""

from __future__ import annotations

from tfmeta.benchmarking.common import build_config_case, sampler_rate, time_train_steps


def _maml_case(*overrides):
    def run(steps: int) -> dict:
        config, dataset, learner = build_config_case("maml", overrides=overrides)
        episodes, _ = learner.training_episodes(dataset, config)
        result = time_train_steps(learner, episodes, steps)
        batch = config.meta_batch_size
        result["sampler_episodes_per_s"] = sampler_rate(episodes, 50, batch)
        step_episodes_per_s = batch / (result["median_ms_per_step"] / 1000)
        result["sampler_speedup_over_step"] = result["sampler_episodes_per_s"] / step_episodes_per_s
        return result

    return run


CASES = {
    "maml_second_order": _maml_case(),
    "maml_first_order": _maml_case("learner.first_order=True"),
    "maml_second_order_xla": _maml_case("jit_compile=True"),
}

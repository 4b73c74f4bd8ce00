"""The MAML family from their configs: a MAML++ meta-step (`configs/maml_plusplus.py`, all
options on) next to MAML's at the same settings (its 5 inner steps of 0.1, meta-batch 8,
batch statistics; the MAML++ options off), and sinusoid meta-steps per second
(`configs/maml.py`'s sinusoid branch: the MLP, meta-batch 25, one inner step)."""

from __future__ import annotations

from tfmeta.benchmarking.common import build_config_case, time_train_steps
from tfmeta.episode_spec import DataSpec

# MAML++'s settings with every MAML++ option off: MAML at the same inner loop and batch.
OPTIONS_OFF = ("learner.multi_step_loss=False", "learner.first_order_steps=0",
               "learner.learned_inner_lrs=False", "learner.per_step_batch_norm=False")


def _omniglot_case(*overrides):
    def run(steps: int) -> dict:
        config, dataset, learner = build_config_case("maml_plusplus", overrides=overrides)
        episodes, _ = learner.training_episodes(dataset, DataSpec.from_config(config))
        result = time_train_steps(learner, episodes, steps)
        result.update(meta_batch_size=config.meta_batch_size,
                      inner_steps=config.learner.inner_steps)
        return result

    return run


def _sinusoid_case(algo: str):
    def run(steps: int) -> dict:
        config, dataset, learner = build_config_case(algo, "sinusoid", "1w10s")
        episodes, _ = learner.training_episodes(dataset, DataSpec.from_config(config))
        result = time_train_steps(learner, episodes, steps)
        result["meta_steps_per_s"] = 1000.0 / result["median_ms_per_step"]
        result["meta_batch_size"] = config.meta_batch_size
        return result

    return run


CASES = {
    "maml_plusplus_omniglot": _omniglot_case(),
    # The first meta-steps of MAML++ are first order (derivative-order annealing): this
    # case times its second-order phase.
    "maml_plusplus_omniglot_second_order": _omniglot_case("learner.first_order_steps=0"),
    "maml_same_settings_omniglot": _omniglot_case(*OPTIONS_OFF),
    "maml_sinusoid": _sinusoid_case("maml"),
}

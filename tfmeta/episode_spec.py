"""What a run's config says about its episodes, read where episodes are made.

Learners (`tfmeta.algorithms`) call these on the config their hooks receive; they live
here, below every layer, so that no learner imports `tfmeta.config` (which imports the
learners to validate a config).
"""

from __future__ import annotations


def eval_spec(config):
    """(ways, shots, queries) of meta-test episodes; eval_* fields default to training's."""
    return (config.eval_ways or config.ways, config.eval_shots or config.shots,
            config.eval_queries or config.queries)


def sampler_options(config) -> dict:
    """`episode_dataset`'s `sampler` and `variable` arguments for the episodes `config` asks
    for (a run recorded before `episode_sampler` existed: fixed episodes)."""
    sampler = config.get("episode_sampler") or "fixed"
    if sampler != "variable":
        return {"sampler": sampler, "variable": None}
    from tfmeta.data.variable_episodes import VariableEpisodes

    return {"sampler": sampler, "variable": VariableEpisodes.from_config(config.variable_episodes)}

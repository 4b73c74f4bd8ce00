"""What a run says about its data and its evaluation, as the typed, frozen specs the
learners' data hooks take (`training_episodes`, `meta_test`).

The trainer, `bin/evaluate.py` and the benchmarks build a `DataSpec` from a run's config
(`DataSpec.from_config`); a learner reads these fields and nothing else of the config.
This module sits below the learners and the config, so that no learner imports
`tfmeta.config` (which imports the learners to validate a config); it reads `tfmeta.models`
and `tfmeta.data` (the augmentation and variable-episode settings it builds). Its episodes
are `tfmeta.data.shape.EpisodeShape`s, what `tfmeta.data.episode_dataset` takes.
"""

from __future__ import annotations

import dataclasses

from tfmeta.data.shape import EpisodeShape, VariableEpisodes, sampler_settings
from tfmeta.models import is_frozen


@dataclasses.dataclass(frozen=True)
class GenerationProtocol:
    """Reptile-GAN's generation metric (`tfmeta.algorithms.generation_eval`): samples per
    evaluation episode, classes its classifier tells apart, that classifier's steps."""

    samples: int
    metric_classes: int
    classifier_steps: int


@dataclasses.dataclass(frozen=True)
class BaselineProtocol:
    """The pretrained baseline a regression meta-test compares with (Finn et al. 2017, 5.1):
    a network of the backbone's architecture trained by plain regression for the run's
    `steps` (capped by `tfmeta.algorithms.regression_protocol`), at the run's
    `learning_rate`."""

    steps: int
    learning_rate: float


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A run's episodes and evaluation protocol (see the module docstring).

    train: meta-training episodes (`train_shots`, else `shots`), drawn within one group of
      classes where the config's `episode_grouping` is "within".
    test: meta-validation and meta-test episodes (the `eval_*` fields, else training's),
      from any classes (`bin/evaluate.py --within_group` asks for "within").
    eval_queries: the config's own `eval_queries` (None: the learner's default, e.g. LEO's
      every remaining example).
    meta_batch_size, eval_meta_batch_size: episodes per training and evaluation meta-batch.
    val_episodes, eval_episodes: episodes of a meta-validation and of a meta-test.
    seed: the run's seed (episode draws are pure functions of it and the step).
    batch_size: examples per batch of supervised pre-training.
    augment: the training augmentation (a `tfmeta.data.augment.RandomAffine`) or None.
    baseline: the regression meta-test's pretrained baseline, trained as long as the run at
      its learning rate (None where the config has no optimizer).
    generation: Reptile-GAN's metric, where the config has one.
    """

    train: EpisodeShape
    test: EpisodeShape
    meta_batch_size: int
    eval_meta_batch_size: int
    val_episodes: int
    eval_episodes: int
    seed: int = 0
    eval_queries: int | None = None
    batch_size: int | None = None
    augment: object = None
    baseline: BaselineProtocol | None = None
    generation: GenerationProtocol | None = None

    @classmethod
    def from_config(cls, config) -> DataSpec:
        """The spec of a run's config (a `tfmeta.config` ConfigDict, or one a run recorded)."""
        from tfmeta.data.augment import RandomAffine

        options = sampler_options(config)
        ways, shots, queries = eval_spec(config)
        generation = config.get("generation")
        optimizer = config.get("optimizer")
        return cls(
            train=EpisodeShape(config.ways, config.get("train_shots") or config.shots,
                               config.queries, **options,
                               grouping=config.episode_grouping),
            test=EpisodeShape(ways, shots, queries, **options),
            meta_batch_size=config.meta_batch_size,
            eval_meta_batch_size=config.eval_meta_batch_size,
            val_episodes=config.val_episodes, eval_episodes=config.eval_episodes,
            seed=config.seed, eval_queries=config.get("eval_queries"),
            batch_size=config.get("batch_size"),
            # (none on a frozen backbone's cached features: tfmeta.training.features)
            augment=None if is_frozen(config.get("model")) else RandomAffine.from_config(
                config.get("augment")),
            baseline=BaselineProtocol(config.num_steps, optimizer.get("learning_rate"))
            if optimizer else None,
            generation=GenerationProtocol(**dict(generation)) if generation else None)


def eval_spec(config):
    """(ways, shots, queries) of meta-test episodes; eval_* fields default to training's."""
    return (config.eval_ways or config.ways, config.eval_shots or config.shots,
            config.eval_queries or config.queries)


def variable_episodes(config) -> VariableEpisodes | None:
    """The variable sampler's settings where `config.episode_sampler.name` is "variable";
    None for fixed episodes."""
    name, bounds = sampler_settings(config.episode_sampler)
    return VariableEpisodes.from_config(bounds) if name == "variable" else None


def sampler_options(config) -> dict:
    """`EpisodeShape`'s `sampler` and `variable` fields for the episodes `config` asks for."""
    variable = variable_episodes(config)
    return {"sampler": "fixed" if variable is None else "variable", "variable": variable}

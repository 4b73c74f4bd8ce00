"""What a run says about its data and its evaluation, as the typed, frozen specs the
learners' data hooks take (`training_episodes`, `meta_test`).

The trainer, `bin/evaluate.py` and the benchmarks build a `DataSpec` from a run's config
(`DataSpec.from_config`); a learner reads these fields and nothing else of the config.
This module sits below the learners and the config, so that no learner imports
`tfmeta.config` (which imports the learners to validate a config); it reads `tfmeta.models`
and `tfmeta.data` (the augmentation and variable-episode settings it builds).
"""

from __future__ import annotations

import dataclasses

from tfmeta.models import is_frozen


@dataclasses.dataclass(frozen=True)
class EpisodeShape:
    """N-way K-shot episodes with `queries` queries per class; `sampler` "fixed" (or another
    `tfmeta.data.episodes.EPISODE_SAMPLERS` name), or "variable" with `variable` a
    `tfmeta.data.variable_episodes.VariableEpisodes` (padded episodes of their own sizes);
    `grouping` "any" (classes from the whole split) or "within" (from one group of classes,
    `tfmeta.data.episodes.EPISODE_GROUPINGS`)."""

    ways: int
    shots: int
    queries: int
    sampler: str = "fixed"
    variable: object = None
    grouping: str = "any"

    def options(self) -> dict:
        """`episode_dataset`'s `sampler`, `variable` and `grouping` arguments."""
        return {"sampler": self.sampler, "variable": self.variable, "grouping": self.grouping}

    def fixed(self, ways: int | None = None, shots: int | None = None) -> EpisodeShape:
        """Fixed episodes of this setting (and grouping), with `ways`/`shots` where given."""
        return EpisodeShape(ways or self.ways, shots or self.shots, self.queries,
                            grouping=self.grouping)


@dataclasses.dataclass(frozen=True)
class GenerationProtocol:
    """Reptile-GAN's generation metric (`tfmeta.algorithms.generation_eval`): samples per
    evaluation episode, classes its classifier tells apart, that classifier's steps."""

    samples: int
    metric_classes: int
    classifier_steps: int


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
    num_steps, learning_rate: the run's length and meta-learning rate (baselines that train
      as long as the run).
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
    num_steps: int = 0
    learning_rate: float | None = None
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
            num_steps=config.num_steps,
            learning_rate=optimizer.get("learning_rate") if optimizer else None,
            generation=GenerationProtocol(**dict(generation)) if generation else None)


def eval_spec(config):
    """(ways, shots, queries) of meta-test episodes; eval_* fields default to training's."""
    return (config.eval_ways or config.ways, config.eval_shots or config.shots,
            config.eval_queries or config.queries)


def sampler_options(config) -> dict:
    """`episode_dataset`'s `sampler` and `variable` arguments for the episodes `config` asks
    for."""
    sampler = config.episode_sampler
    if sampler != "variable":
        return {"sampler": sampler, "variable": None}
    from tfmeta.data.variable_episodes import VariableEpisodes

    return {"sampler": sampler, "variable": VariableEpisodes.from_config(config.variable_episodes)}

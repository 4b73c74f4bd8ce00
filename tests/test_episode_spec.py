"""tfmeta.episode_spec.DataSpec: what the learners' data hooks read of a run's config, typed
and frozen."""

import dataclasses

import pytest

from tfmeta import data
from tfmeta.config import apply_overrides, get_config
from tfmeta.data.augment import RandomAffine
from tfmeta.data.shape import EpisodeShape, VariableEpisodes
from tfmeta.episode_spec import DataSpec, GenerationProtocol


def test_a_spec_reads_the_training_and_the_meta_test_settings():
    config = apply_overrides(get_config("maml", "omniglot", "5w1s"), [
        "train_shots=3", "queries=2", "eval_ways=7", "eval_queries=4", "meta_batch_size=6",
        "eval_meta_batch_size=5", "val_episodes=9", "eval_episodes=11", "seed=13",
        "augment.rotation=10.0"])
    spec = DataSpec.from_config(config)
    assert spec.train == EpisodeShape(5, 3, 2)          # train_shots over shots
    assert spec.test == EpisodeShape(7, 1, 4)           # eval_* over training's
    assert (spec.meta_batch_size, spec.eval_meta_batch_size, spec.val_episodes,
            spec.eval_episodes, spec.seed, spec.eval_queries) == (6, 5, 9, 11, 13, 4)
    assert spec.baseline.learning_rate == config.optimizer.learning_rate
    assert spec.baseline.steps == config.num_steps and spec.generation is None
    assert spec.augment == RandomAffine(rotation=10.0)
    plain = DataSpec.from_config(apply_overrides(config, ["eval_queries=None",
                                                          "augment.rotation=0.0"]))
    assert plain.test.queries == 2 and plain.eval_queries is None  # LEO tells these apart
    assert plain.augment is None  # an affine of zeros does nothing
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train.ways = 2


def test_variable_episodes_and_a_fixed_setting_asked_of_them():
    config = apply_overrides(get_config("protonet", "omniglot", "5w1s"),
                             ["episode_sampler.name='variable'", "episode_sampler.max_ways=6"])
    spec = DataSpec.from_config(config)
    assert spec.train.sampler == spec.test.sampler == "variable"
    assert isinstance(spec.test.variable, VariableEpisodes)
    assert spec.test.variable.max_ways == 6
    assert (spec.test.sampler, spec.test.grouping, spec.test.padded) == ("variable", "any",
                                                                         True)
    fixed = spec.test.fixed(ways=3)
    assert fixed == EpisodeShape(3, spec.test.shots, spec.test.queries)
    assert (fixed.sampler, fixed.variable, fixed.grouping, fixed.padded) == ("fixed", None,
                                                                             "any", False)


def test_the_specs_episodes_are_the_shape_episode_dataset_takes():
    """One `EpisodeShape`: the spec's, `tfmeta.data`'s and `tfmeta.data.shape`'s are the same
    class, so `spec.train` and `spec.test` go to `episode_dataset` as they are."""
    from tfmeta import episode_spec

    assert episode_spec.EpisodeShape is data.EpisodeShape is EpisodeShape
    spec = DataSpec.from_config(get_config("protonet", "omniglot", "5w1s"))
    assert isinstance(spec.train, data.EpisodeShape) and isinstance(spec.test, EpisodeShape)


def test_reptile_gan_gets_its_generation_protocol():
    spec = DataSpec.from_config(get_config("reptile_gan", "omniglot"))
    config = get_config("reptile_gan", "omniglot")
    assert spec.generation == GenerationProtocol(**config.generation.to_dict())

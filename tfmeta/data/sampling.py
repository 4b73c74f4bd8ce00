"""Sampling over a `ClassStore`, written once for every store and every `EpisodeShape`:

    check(classes, shape, split)  -> the classes episodes of `shape` draw from (a UserError
                                     naming the value and the fix where they can't be drawn)
    composer(classes, shape)      -> compose(seed) -> {"classes": [W] int64,
                                                       "support": [W] int32, "queries": [W] int32}
    arrange(examples, composition, shape, example_shape) -> the episode dict

A composition says what an episode is made of, as a pure function of its seed: its classes
in label order and how many support and query examples of each (entries past N are 0 in
padded episodes). A store's reader (in memory: `tfmeta.data.episodes`; records:
`tfmeta.data.record_stream`) gives the examples of a composition class after class, each
class's support examples then its queries, and `arrange` makes the episode: fixed episodes
(`tfmeta.data.fixed_sampling`) or variable ones, padded (`tfmeta.data.variable_sampling`).
`episode_numbers` says which episodes a process samples, for every reader alike.
"""

from __future__ import annotations

import tensorflow as tf

from tfmeta.data.classes import ClassStore
from tfmeta.data.fixed_sampling import check_fixed, fixed_composer, split_episode
from tfmeta.data.shape import EpisodeShape
from tfmeta.data.variable_sampling import arrange_padded, check_variable, variable_composer
from tfmeta.errors import UserError


def check(classes: ClassStore, shape: EpisodeShape, split: str = "") -> ClassStore:
    """The classes episodes of `shape` are drawn from: `classes`, or (a user's own data) those
    of them with examples enough; a UserError naming the value and the fix otherwise."""
    if shape.padded:
        return check_variable(classes, shape, split)
    return check_fixed(classes, shape, split)


def composer(classes: ClassStore, shape: EpisodeShape):
    """`compose(seed) -> composition` of `shape`'s episodes over `classes` (checked)."""
    return (variable_composer if shape.padded else fixed_composer)(classes, shape)


def width(shape: EpisodeShape) -> int:
    """The length of a composition: N, or the most ways of a variable episode."""
    return shape.variable.max_ways if shape.padded else shape.ways


def most_per_class(shape: EpisodeShape) -> int:
    """The most examples an episode of `shape` takes of one class: K + Q, or a variable
    episode's whole support set and its queries."""
    if shape.padded:
        return shape.variable.max_support + shape.variable.max_queries
    return shape.shots + shape.queries


def arrange(examples, composition: dict, shape: EpisodeShape, example_shape) -> dict:
    """The episode dict of `examples` `[T, *example_shape]`, the composition's classes one
    after another, each class's support examples then its queries."""
    if shape.padded:
        return arrange_padded(examples, composition, shape.variable, example_shape)
    return split_episode(examples, shape.ways, shape.shots, shape.queries, example_shape)


def unsharded(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.distribute's auto-sharding off (each worker samples its own share of
    every meta-batch itself, see `episode_numbers`), prefetched."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def episode_numbers(meta_batch_size: int | None = None, start_step: int = 0,
                    num_episodes: int | None = None, worker: int = 0, workers: int = 1):
    """The episode numbers a process samples, in order, as a `tf.data.Dataset` of int64.

    Meta-batch `s` holds episodes `s * B .. s * B + B - 1` (B = meta_batch_size, 1 when
    None), so the stream from `start_step` on is what an uninterrupted stream would give
    there. With `workers > 1`, worker `w` takes its contiguous share `B / workers` of
    every meta-batch: together the workers sample each meta-batch exactly once.
    """
    batch = meta_batch_size or 1
    if workers < 1 or not 0 <= worker < workers or batch % workers:
        raise UserError(f"worker {worker} of {workers}: the meta-batch of {batch} episodes "
                        f"must split evenly over 0 < workers; use a meta_batch_size that is a "
                        f"multiple of {workers}.")
    if num_episodes is not None and (workers > 1 or start_step):
        raise UserError("A finite episode stream (num_episodes) is for evaluation: one worker, "
                        "from step 0.")
    share = batch // workers
    counter = tf.data.Dataset.counter()
    if num_episodes is not None:
        counter = counter.take(num_episodes)
    return counter.map(lambda k: (int(start_step) + k // share) * batch + worker * share
                       + k % share)

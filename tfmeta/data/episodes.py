"""The episode pipeline, the top of `tfmeta.data`: `episode_dataset` streams the episodes of
an `EpisodeShape` from any `ClassStore`, as a `tf.data.Dataset` of meta-batches.

An episode is a dict of tensors (one task):

    support_images  [N * K, *example_shape]   class-major: index = class * K + shot
    support_labels  [N * K]        int32 in 0..N-1
    query_images    [N * Q, *example_shape]
    query_labels    [N * Q]        int32 in 0..N-1

(variable episodes are padded: `tfmeta.data.variable_sampling`). A meta-batch stacks B
episodes along a new leading axis. Classes are drawn without replacement and their order is
random, so labels are permuted per episode; the examples of each class are drawn without
replacement too. Classes held in memory (`ClassImages`) are sampled inside one `tf.data` map
function on tensors (`memory_sampler`): there is no Python generator per episode, and a seed
makes the stream reproducible. Classes held as records (`RecordClasses`) are streamed from
their files (`tfmeta.data.record_stream`), with the same compositions
(`tfmeta.data.sampling`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmeta.data import record_stream, sampling
from tfmeta.data.base import FewShotDataset
from tfmeta.data.classes import ClassImages, ClassStore
from tfmeta.data.record_store import RecordClasses
from tfmeta.data.shape import EpisodeShape

# A tf.data function's graph holds its constants and must stay under protobuf's 2 GB.
CONSTANT_LIMIT_BYTES = 256 << 20


def stored_tensor(array: np.ndarray):
    """The examples as a constant, or (large datasets such as tieredImageNet's pixels) as a
    non-trainable variable the sampler reads, which no graph has to hold."""
    if array.nbytes <= CONSTANT_LIMIT_BYTES:
        return tf.constant(array)
    with tf.init_scope():
        return tf.Variable(array, trainable=False, name="stored_examples")


def memory_sampler(classes: ClassImages, shape: EpisodeShape, augment=None):
    """Returns `sample(seed) -> episode dict`, a pure TF function of a `[2]` int seed, over
    checked classes (`sampling.check`): the episode's composition (`sampling.composer`), then
    each chosen class's examples drawn without replacement, `classes.transform` and
    `augment(images, seed)` (e.g. `augment.RandomAffine`, its own draw for every example)
    applied to the real examples only, and the episode arranged (`sampling.arrange`; padding
    of variable episodes is added after, so padding images are exact zeros)."""
    compose = sampling.composer(classes, shape)
    images = stored_tensor(classes.images)
    offsets = tf.constant(classes.class_offsets, tf.int64)
    counts = tf.constant(classes.class_counts, tf.int64)
    max_count = int(classes.class_counts.max())
    # The most one class gives an episode, and never more than it has.
    picks_per_class = min(max_count, sampling.most_per_class(shape))
    width = sampling.width(shape)
    stored_shape, example_shape = tuple(classes.images.shape[1:]), classes.example_shape

    def sample(seed):
        class_seed, example_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        composition = compose(class_seed)
        chosen = composition["classes"]
        scores = tf.random.stateless_uniform([width, max_count], example_seed)
        valid = tf.range(max_count, dtype=tf.int64)[None, :] < tf.gather(counts, chosen)[:, None]
        scores = tf.where(valid, scores, -1.0)  # beyond a class's count: never chosen
        _, picks = tf.math.top_k(scores, picks_per_class)  # [W, P], without replacement
        taken = tf.range(picks_per_class)[None, :] < (composition["support"]
                                                      + composition["queries"])[:, None]
        # Row-major: class after class, each class's first `support` picks then its queries.
        index = tf.boolean_mask(tf.gather(offsets, chosen)[:, None] + tf.cast(picks, tf.int64),
                                taken)
        examples = tf.reshape(tf.gather(images, index), [-1, *stored_shape])
        if classes.transform is not None:
            examples = classes.transform(examples)
        if augment is not None:
            examples = augment(examples, tf.random.experimental.stateless_fold_in(seed, 2))
        return sampling.arrange(examples, composition, shape, example_shape)

    return sample


def _split_of(data, split: str) -> tuple:
    """(`data` itself, a `ClassStore`, or its split `split` (default "train") when it is a
    whole `FewShotDataset`; the split's name)."""
    if isinstance(data, ClassStore):
        return data, split
    if isinstance(data, FewShotDataset):
        return data.split(split or "train"), split or "train"
    raise TypeError(f"episode_dataset takes a FewShotDataset or one of its splits (a "
                    f"ClassStore); got {type(data).__name__}.")


def episode_dataset(classes, shape: EpisodeShape, meta_batch_size: int | None = None,
                    seed: int = 0, num_episodes: int | None = None, split: str = "",
                    augment=None, start_step: int = 0, worker: int = 0,
                    workers: int = 1) -> tf.data.Dataset:
    """A `tf.data.Dataset` of episodes, batched into meta-batches if `meta_batch_size`.

    Episode number `e` is a pure function of (`seed`, `e`), and meta-batch `s` holds
    episodes `s * B .. s * B + B - 1` (see `sampling.episode_numbers`).

    Args:
      classes: the split to sample from (a `ClassStore`: `ClassImages`, or `RecordClasses`,
        whose episodes are streamed from its files), or a whole `FewShotDataset`, whose split
        `split` (default "train") it then samples.
      shape: the episodes (`EpisodeShape`: N-way K-shot with Q queries a class, or variable
        ones; from any classes or within one group).
      meta_batch_size: episodes per element (a leading axis); None yields single episodes.
      seed: the stream is a pure function of it.
      num_episodes: stop after this many episodes (rounded down to whole meta-batches);
        None repeats forever.
      split: the split's name, for error messages (and which split of a `FewShotDataset`).
      augment: optional `augment(images, seed) -> images` applied to every example
        (training episodes only; see `tfmeta.data.augment`).
      start_step: the first meta-batch (a resumed run starts at its restored step).
      worker, workers: this process's share of each meta-batch under multi-worker training
        (each element then holds `meta_batch_size / workers` episodes).
    """
    if not isinstance(shape, EpisodeShape):
        raise TypeError(f"episode_dataset takes the episodes' EpisodeShape (e.g. "
                        f"EpisodeShape(ways=5, shots=1, queries=15)); got {shape!r}.")
    classes, split = _split_of(classes, split)
    if isinstance(classes, RecordClasses):
        return record_stream.stream_episodes(classes, shape, meta_batch_size, seed,
                                             num_episodes, split, augment, start_step, worker,
                                             workers)
    sample = memory_sampler(sampling.check(classes, shape, split), shape, augment)
    base_seed = tf.constant([seed, 0], tf.int64)
    ds = sampling.episode_numbers(meta_batch_size, start_step, num_episodes, worker,
                                  workers).map(
        lambda e: sample(tf.random.experimental.stateless_fold_in(base_seed, e)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if meta_batch_size:
        ds = ds.batch(meta_batch_size // workers, drop_remainder=True)
    return sampling.unsharded(ds)


def single_class_tasks(classes: ClassStore, shots: int, meta_batch_size: int, seed: int = 0,
                       num_tasks: int | None = None, split: str = "", start_step: int = 0,
                       worker: int = 0, workers: int = 1):
    """`{"images": [meta_batch_size, shots, ...]}`: each task is `shots` examples of one
    random class (classes drawn independently per task), for few-shot generation."""
    tasks = episode_dataset(classes, EpisodeShape(1, shots, 1), meta_batch_size, seed=seed,
                            num_episodes=num_tasks, split=split, start_step=start_step,
                            worker=worker, workers=workers)
    return tasks.map(lambda episodes: {"images": episodes["support_images"]})

"""N-way K-shot episodes sampled in the graph from in-memory class arrays.

An episode is a dict of tensors (one task):

    support_images  [N * K, *example_shape]   class-major: index = class * K + shot
    support_labels  [N * K]        int32 in 0..N-1
    query_images    [N * Q, *example_shape]
    query_labels    [N * Q]        int32 in 0..N-1

A meta-batch stacks B episodes along a new leading axis. Classes are drawn
without replacement and their order is random, so labels are permuted per
episode; the examples of each class are drawn without replacement too. All of
it happens inside one `tf.data` map function on tensors held in memory: there is
no Python generator per episode, and a seed makes the stream reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

EPISODE_KEYS = ("support_images", "support_labels", "query_images", "query_labels")


@dataclasses.dataclass(frozen=True)
class ClassImages:
    """Examples grouped by class, stored flat for in-graph gathering.

    Attributes:
      images: array `[total, *example_shape]`, class after class.
      class_offsets: int array `[C]`, index in `images` of each class's first example.
      class_counts: int array `[C]`, number of examples of each class (may differ).
      class_names: `C` names, for messages and reports.
    """

    images: np.ndarray
    class_offsets: np.ndarray
    class_counts: np.ndarray
    class_names: tuple

    @classmethod
    def from_lists(cls, per_class: list, class_names=None) -> ClassImages:
        """Builds from a list with one `[count_c, *example_shape]` array per class."""
        if not per_class:
            raise ValueError("ClassImages needs at least one class; got an empty list.")
        counts = np.array([len(x) for x in per_class], np.int64)
        empty = [i for i, c in enumerate(counts) if c == 0]
        if empty:
            names = class_names or [str(i) for i in range(len(per_class))]
            raise ValueError(
                f"Class {names[empty[0]]!r} has no examples ({len(empty)} empty classes); "
                "remove empty class folders or fix the data."
            )
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        names = tuple(class_names) if class_names is not None else tuple(
            str(i) for i in range(len(per_class)))
        return cls(np.concatenate(per_class, axis=0), offsets, counts, names)

    @classmethod
    def from_dense(cls, images: np.ndarray, class_names=None) -> ClassImages:
        """Builds from a dense `[C, M, *example_shape]` array (M examples per class)."""
        return cls.from_lists(list(images), class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def example_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    def select(self, class_indices) -> ClassImages:
        """The sub-collection of the given classes, in that order."""
        return ClassImages.from_lists(
            [self.class_examples(i) for i in class_indices],
            [self.class_names[i] for i in class_indices])

    def class_examples(self, index: int) -> np.ndarray:
        start = self.class_offsets[index]
        return self.images[start:start + self.class_counts[index]]


def check_episode_spec(classes: ClassImages, ways: int, shots: int, queries: int, split=""):
    """Raises a ValueError naming the value and the fix if the spec can't be sampled."""
    where = f" in the {split!r} split" if split else ""
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    if ways > classes.num_classes:
        raise ValueError(
            f"ways={ways} is larger than the {classes.num_classes} classes available{where}; "
            f"use ways <= {classes.num_classes} or a dataset with more classes.")
    smallest = int(np.argmin(classes.class_counts))
    if shots + queries > classes.class_counts[smallest]:
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {shots + queries} is more than the "
            f"{classes.class_counts[smallest]} examples of class {classes.class_names[smallest]!r}"
            f"{where}; use shots + queries <= {classes.class_counts[smallest]}.")


def make_episode_sampler(classes: ClassImages, ways: int, shots: int, queries: int,
                         augment=None):
    """Returns `sample(seed) -> episode dict`, a pure TF function of a `[2]` int seed.

    `augment(images [n, *example_shape], seed) -> images` (e.g. `augment.RandomAffine`)
    transforms every example of the episode, support and query, with its own draw.
    """
    images = tf.constant(classes.images)
    offsets = tf.constant(classes.class_offsets, tf.int64)
    counts = tf.constant(classes.class_counts, tf.int64)
    max_count = int(classes.class_counts.max())
    num_classes = classes.num_classes
    per_class = shots + queries

    def sample(seed):
        class_seed, example_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        # top_k of i.i.d. uniforms: a uniformly random ordered subset, i.e. sampling
        # without replacement with the label order permuted at the same time.
        _, chosen = tf.math.top_k(tf.random.stateless_uniform([num_classes], class_seed), ways)
        chosen = tf.cast(chosen, tf.int64)
        chosen_counts = tf.gather(counts, chosen)
        scores = tf.random.stateless_uniform([ways, max_count], example_seed)
        valid = tf.range(max_count, dtype=tf.int64)[None, :] < chosen_counts[:, None]
        scores = tf.where(valid, scores, -1.0)  # padding slots are never chosen
        _, picks = tf.math.top_k(scores, per_class)  # [ways, K + Q]
        index = tf.gather(offsets, chosen)[:, None] + tf.cast(picks, tf.int64)
        examples = tf.gather(images, index)  # [ways, K + Q, ...]
        if augment is not None:
            flat = augment(tf.reshape(examples, [ways * per_class, *classes.example_shape]),
                           tf.random.experimental.stateless_fold_in(seed, 2))
            examples = tf.reshape(flat, [ways, per_class, *classes.example_shape])
        labels = tf.broadcast_to(tf.range(ways, dtype=tf.int32)[:, None], [ways, per_class])
        example_shape = classes.example_shape
        return {
            "support_images": tf.reshape(examples[:, :shots], [ways * shots, *example_shape]),
            "support_labels": tf.reshape(labels[:, :shots], [ways * shots]),
            "query_images": tf.reshape(examples[:, shots:], [ways * queries, *example_shape]),
            "query_labels": tf.reshape(labels[:, shots:], [ways * queries]),
        }

    return sample


def episode_dataset(
    classes: ClassImages,
    ways: int,
    shots: int,
    queries: int,
    meta_batch_size: int | None = None,
    seed: int = 0,
    num_episodes: int | None = None,
    split: str = "",
    augment=None,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of episodes, batched into meta-batches if `meta_batch_size`.

    Args:
      classes: the split to sample from.
      ways, shots, queries: N, K and the number of query examples per class.
      meta_batch_size: episodes per element (a leading axis); None yields single episodes.
      seed: the stream is a pure function of it.
      num_episodes: stop after this many episodes (rounded down to whole meta-batches);
        None repeats forever.
      split: the split's name, for error messages.
      augment: optional `augment(images, seed) -> images` applied to every example
        (training episodes only; see `tfmeta.data.augment`).
    """
    check_episode_spec(classes, ways, shots, queries, split)
    sample = make_episode_sampler(classes, ways, shots, queries, augment)
    base_seed = tf.constant([seed, 0], tf.int64)
    counter = tf.data.Dataset.counter()
    if num_episodes is not None:
        counter = counter.take(num_episodes)
    ds = counter.map(
        lambda i: sample(tf.random.experimental.stateless_fold_in(base_seed, i)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if meta_batch_size:
        ds = ds.batch(meta_batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

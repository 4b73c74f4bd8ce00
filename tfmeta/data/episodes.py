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

`episode_dataset(..., sampler="variable")` samples Meta-Dataset's variable-way,
variable-shot episodes instead, padded to static shapes (`tfmeta.data.variable_episodes`).

`episode_dataset(..., grouping="within")` draws each episode within one group of classes
(`ClassImages.class_groups`: Omniglot's alphabets, a folder's `group/class` folders):

    eligible = groups with at least N classes
    group = uniform(eligible)                          # every eligible group equally likely
    classes = N classes of `group`, uniformly without replacement, in random order

Harder episodes than drawing from every class (`grouping="any"`): an episode's classes
are as alike as the hierarchy makes them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfmeta.errors import UserError

EPISODE_KEYS = ("support_images", "support_labels", "query_images", "query_labels")
# The kinds of episode `episode_dataset` samples: N-way K-shot, or Meta-Dataset's variable
# ways and shots (`tfmeta.data.variable_episodes`).
EPISODE_SAMPLERS = ("fixed", "variable")
# Which classes an episode draws from: any of the split's, or those of one group
# (`ClassImages.class_groups`).
EPISODE_GROUPINGS = ("any", "within")
# The fewest classes an episode tells apart (`EpisodicClassifier.min_ways`; ways >= 2): what a
# split needs whatever `ways` asks, and what to do about one with fewer (a user's own data).
MIN_CLASSES = 2
MORE_CLASSES = ("give the split more classes: more classes in the data, or a data.class_split "
                "or data.split_fractions that puts 2 or more in it")


@dataclasses.dataclass(frozen=True)
class ClassImages:
    """Examples grouped by class, stored flat for in-graph gathering.

    Attributes:
      images: array `[total, *stored_shape]`, class after class: the model inputs, or (with
        `transform`) a compact stored form such as uint8 pixels.
      class_offsets: int array `[C]`, index in `images` of each class's first example.
      class_counts: int array `[C]`, number of examples of each class (may differ).
      class_names: `C` names, for messages and reports.
      transform: optional TF function, stored examples `[n, *stored_shape]` -> model inputs
        `[n, *example_shape]`; the episode sampler applies it after gathering (so a large
        image dataset stays uint8 in memory) and `inputs`/`class_examples` apply it here.
      drop_small_classes: what episodes do with a class that has fewer examples than an
        episode takes of each: leave it out with a warning naming it (a user's own data,
        where some classes are small), or refuse (False: a benchmark's classes are fixed).
      class_groups: `C` group names, one per class (Omniglot's alphabet of each character), or
        None when the classes have no groups; what `grouping="within"` episodes draw in.
    """

    images: np.ndarray
    class_offsets: np.ndarray
    class_counts: np.ndarray
    class_names: tuple
    transform: Callable | None = None
    drop_small_classes: bool = False
    class_groups: tuple | None = None

    def __post_init__(self):
        if self.class_groups is not None:
            groups = tuple(str(g) for g in self.class_groups)
            if len(groups) != len(self.class_counts):
                raise UserError(f"class_groups has {len(groups)} group names for "
                                f"{len(self.class_counts)} classes; give one per class, or "
                                "None for classes without groups.")
            object.__setattr__(self, "class_groups", groups)  # (frozen) as a tuple of str

    @classmethod
    def from_lists(cls, per_class: list, class_names=None, transform=None,
                   drop_small_classes: bool = False, class_groups=None) -> ClassImages:
        """Builds from a list with one `[count_c, *example_shape]` array per class."""
        if not per_class:
            raise UserError("ClassImages needs at least one class; got an empty list.")
        counts = np.array([len(x) for x in per_class], np.int64)
        empty = [i for i, c in enumerate(counts) if c == 0]
        if empty:
            names = class_names or [str(i) for i in range(len(per_class))]
            raise UserError(
                f"Class {names[empty[0]]!r} has no examples ({len(empty)} empty classes); "
                "remove empty class folders or fix the data."
            )
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        names = tuple(class_names) if class_names is not None else tuple(
            str(i) for i in range(len(per_class)))
        return cls(np.concatenate(per_class, axis=0), offsets, counts, names, transform,
                   drop_small_classes, class_groups)

    @classmethod
    def from_dense(cls, images: np.ndarray, class_names=None, transform=None,
                   class_groups=None) -> ClassImages:
        """Builds from a dense `[C, M, *example_shape]` array (M examples per class)."""
        return cls.from_lists(list(images), class_names, transform, class_groups=class_groups)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def example_shape(self) -> tuple:
        """The shape of one model input (after `transform`)."""
        if self.transform is None:
            return tuple(self.images.shape[1:])
        return tuple(self.inputs(self.images[:1]).shape[1:])

    def inputs(self, stored: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Model inputs of stored examples (`transform` applied, in batches)."""
        if self.transform is None:
            return stored
        return np.concatenate([np.asarray(self.transform(stored[i:i + batch_size]))
                               for i in range(0, max(len(stored), 1), batch_size)])

    def select(self, class_indices) -> ClassImages:
        """The sub-collection of the given classes, in that order (stored as they are)."""
        return ClassImages.from_lists(
            [self.stored_examples(i) for i in class_indices],
            [self.class_names[i] for i in class_indices], self.transform,
            self.drop_small_classes, None if self.class_groups is None else
            [self.class_groups[i] for i in class_indices])

    def stored_examples(self, index: int) -> np.ndarray:
        """Class `index`'s examples as stored."""
        start = self.class_offsets[index]
        return self.images[start:start + self.class_counts[index]]

    def class_examples(self, index: int) -> np.ndarray:
        """Class `index`'s examples as model inputs."""
        return self.inputs(self.stored_examples(index))

    def all_inputs(self) -> np.ndarray:
        """Every example as model inputs `[total, *example_shape]`, class after class."""
        return self.inputs(self.images)


def check_episode_spec(classes: ClassImages, ways: int, shots: int, queries: int,
                       split="", grouping: str = "any") -> ClassImages:
    """The classes episodes of this spec are drawn from; raises a ValueError naming the value
    and the fix if the spec can't be sampled.

    A class with fewer than `shots + queries` examples is refused, or, where the classes
    allow it (`drop_small_classes`: a user's own data), left out with a warning naming it.
    With `grouping="within"`, some group must keep at least `ways` classes after that
    (`eligible_groups`).
    """
    check_grouping(grouping)
    where = f" in the {split!r} split" if split else ""
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if int(value) != value or value < 1:
            raise UserError(f"{name} must be a positive integer; got {value!r}.")
    needed = shots + queries
    small = np.flatnonzero(classes.class_counts < needed)
    if classes.drop_small_classes and len(small):
        kept = np.flatnonzero(classes.class_counts >= needed)
        if len(kept) < ways:
            largest = int(classes.class_counts.max())
            few = (f"Only {len(kept)} of the {classes.num_classes} classes{where} have at least "
                   f"shots + queries = {shots} + {queries} = {needed} images")
            if len(kept) < MIN_CLASSES:
                least = min(ways, MIN_CLASSES)
                raise UserError(
                    f"{few}, and an episode needs at least {least} class"
                    f"{'es' if least > 1 else ''}; use fewer shots or queries (the largest class "
                    f"has {largest} images), add images to the small classes, or "
                    f"{MORE_CLASSES}.")
            raise UserError(
                f"{few}, fewer than ways={ways}; use ways <= {len(kept)}, fewer shots or "
                f"queries (the largest class has {largest} images), or add images to the small "
                "classes.")
        names = [f"{classes.class_names[i]!r} ({classes.class_counts[i]})" for i in small]
        logging.warning(
            "Leaving %d class(es)%s out of %d-shot %d-query episodes, which take %d images "
            "of each: %s%s.", len(small), where, shots, queries, needed, ", ".join(names[:10]),
            f" and {len(names) - 10} more" if len(names) > 10 else "")
        classes = classes.select(kept)
    if ways > classes.num_classes and classes.num_classes < MIN_CLASSES:
        least = min(ways, MIN_CLASSES)
        raise UserError(
            f"ways={ways} is larger than the {classes.num_classes} "
            f"class{'' if classes.num_classes == 1 else 'es'} available{where}, and an episode "
            f"needs at least {least} class{'es' if least > 1 else ''}; {MORE_CLASSES}.")
    if ways > classes.num_classes:
        raise UserError(
            f"ways={ways} is larger than the {classes.num_classes} classes available{where}; "
            f"use ways <= {classes.num_classes} or a dataset with more classes.")
    smallest = int(np.argmin(classes.class_counts))
    if needed > classes.class_counts[smallest]:
        raise UserError(
            f"shots + queries = {shots} + {queries} = {needed} is more than the "
            f"{classes.class_counts[smallest]} examples of class {classes.class_names[smallest]!r}"
            f"{where}; use shots + queries <= {classes.class_counts[smallest]}.")
    if grouping == "within":
        group_of, eligible = eligible_groups(classes, ways, split)
        if len(eligible) < group_of.max() + 1:
            names = sorted(set(classes.class_groups))
            logging.info("Episodes within one group%s draw from the %d of its %d groups that "
                         "have at least ways=%d classes; not from %s.", where, len(eligible),
                         len(names), ways, ", ".join(np.delete(names, eligible)[:10]))
    return classes


# ----------------------------------------------------------- episodes within a group
def check_grouping(grouping: str, sampler: str = "fixed") -> None:
    """Raises a ValueError unless `grouping` is one of EPISODE_GROUPINGS that `sampler`'s
    episodes can be drawn with."""
    if grouping not in EPISODE_GROUPINGS:
        raise UserError(f"grouping (episode_grouping) must be one of "
                        f"{list(EPISODE_GROUPINGS)}; got {grouping!r}.")
    if grouping == "within" and sampler == "variable":
        raise UserError(
            "episode_grouping=within draws N-way K-shot episodes within one group, but "
            "episode_sampler=variable draws its ways from every class; use "
            "episode_grouping=any with variable episodes, or fixed ones (bin/evaluate.py "
            "--within_group with --ways and --shots).")


def eligible_groups(classes, ways: int, split: str = "") -> tuple:
    """What `grouping="within"` episodes draw from: (int64 `[C]`, the index of each class's
    group among the sorted group names; int64 `[G']`, the groups that have at least `ways`
    classes). A ValueError naming the value and the fix when `classes` (a `ClassImages` or
    `RecordClasses`) have no groups, or no group has `ways` classes."""
    where = f"the {split!r} split" if split else "these classes"
    if classes.class_groups is None:
        raise UserError(
            f"episode_grouping=within (bin/evaluate.py --within_group) needs classes with "
            f"groups, but those of {where} have none: use --dataset=omniglot (its alphabets), "
            "or --dataset=folder with --set=data.class_depth=2 (DIR/<group>/<class>/...); or "
            "episode_grouping=any.")
    names, class_group = np.unique(np.asarray(classes.class_groups), return_inverse=True)
    sizes = np.bincount(class_group, minlength=len(names))
    eligible = np.flatnonzero(sizes >= ways)
    if not len(eligible):
        largest = int(np.argmax(sizes))
        advice = (f"; use ways <= {sizes[largest]}, or episode_grouping=any" if
                  sizes[largest] >= MIN_CLASSES else f", and an episode needs at least "
                  f"{MIN_CLASSES} classes; use episode_grouping=any, or groups of "
                  f"{MIN_CLASSES} or more classes")
        raise UserError(
            f"ways={ways} is more classes than any one group of {where} has, but "
            f"episode_grouping=within draws every episode's classes from one group: the "
            f"largest group, {str(names[largest])!r}, has {sizes[largest]} "
            f"class{'es' if sizes[largest] > 1 else ''}{advice}.")
    return class_group.astype(np.int64), eligible.astype(np.int64)


def choose_classes(seed, num_classes: int, ways: int, within: tuple | None = None):
    """An episode's `ways` classes, int64 `[ways]` indices, a pure function of the `[2]`
    `seed`: uniformly without replacement, in random order (so labels are permuted); with
    `within` (`eligible_groups`' pair), from one eligible group drawn uniformly:

        group = eligible[uniform_int(0, len(eligible))]
        score[c] = uniform(0, 1) if group_of[c] == group else -1
        classes = top_k(score, ways)          # the group has >= ways classes, all >= 0
    """
    # top_k of i.i.d. uniforms: a uniformly random ordered subset, i.e. sampling
    # without replacement with the label order permuted at the same time.
    scores = tf.random.stateless_uniform([num_classes], seed)
    if within is not None:
        class_group, eligible = within
        which = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, 1),
                                            0, len(eligible), tf.int64)
        group = tf.gather(tf.constant(eligible, tf.int64), which)
        scores = tf.where(tf.constant(class_group, tf.int64) == group, scores, -1.0)
    _, chosen = tf.math.top_k(scores, ways)
    return tf.cast(chosen, tf.int64)


# A tf.data function's graph holds its constants and must stay under protobuf's 2 GB.
CONSTANT_LIMIT_BYTES = 256 << 20


def stored_tensor(array: np.ndarray):
    """The examples as a constant, or (large datasets such as tieredImageNet's pixels) as a
    non-trainable variable the sampler reads, which no graph has to hold."""
    if array.nbytes <= CONSTANT_LIMIT_BYTES:
        return tf.constant(array)
    with tf.init_scope():
        return tf.Variable(array, trainable=False, name="stored_examples")


def make_episode_sampler(classes: ClassImages, ways: int, shots: int, queries: int,
                         augment=None, grouping: str = "any"):
    """Returns `sample(seed) -> episode dict`, a pure TF function of a `[2]` int seed.

    `augment(images [n, *example_shape], seed) -> images` (e.g. `augment.RandomAffine`)
    transforms every example of the episode, support and query, with its own draw.
    `grouping="within"` draws each episode's classes within one group (`choose_classes`).
    """
    check_grouping(grouping)
    within = eligible_groups(classes, ways) if grouping == "within" else None
    images = stored_tensor(classes.images)
    offsets = tf.constant(classes.class_offsets, tf.int64)
    counts = tf.constant(classes.class_counts, tf.int64)
    max_count = int(classes.class_counts.max())
    stored_shape, example_shape = tuple(classes.images.shape[1:]), classes.example_shape
    num_classes = classes.num_classes
    per_class = shots + queries

    def sample(seed):
        class_seed, example_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        chosen = choose_classes(class_seed, num_classes, ways, within)
        chosen_counts = tf.gather(counts, chosen)
        scores = tf.random.stateless_uniform([ways, max_count], example_seed)
        valid = tf.range(max_count, dtype=tf.int64)[None, :] < chosen_counts[:, None]
        scores = tf.where(valid, scores, -1.0)  # padding slots are never chosen
        _, picks = tf.math.top_k(scores, per_class)  # [ways, K + Q]
        index = tf.gather(offsets, chosen)[:, None] + tf.cast(picks, tf.int64)
        examples = tf.gather(images, index)  # [ways, K + Q, *stored_shape]
        if classes.transform is not None or augment is not None:
            flat = tf.reshape(examples, [ways * per_class, *stored_shape])
            if classes.transform is not None:
                flat = classes.transform(flat)
            if augment is not None:
                flat = augment(flat, tf.random.experimental.stateless_fold_in(seed, 2))
            examples = tf.reshape(flat, [ways, per_class, *example_shape])
        return split_episode(examples, ways, shots, queries, example_shape)

    return sample


def split_episode(examples, ways: int, shots: int, queries: int, example_shape) -> dict:
    """`[ways, K + Q, *example_shape]` examples (each class's K support examples, then its
    Q queries) -> the episode dict, class-major, labels 0..N-1 in the classes' order."""
    per_class = shots + queries
    examples = tf.reshape(examples, [ways, per_class, *example_shape])
    labels = tf.broadcast_to(tf.range(ways, dtype=tf.int32)[:, None], [ways, per_class])
    return {
        "support_images": tf.reshape(examples[:, :shots], [ways * shots, *example_shape]),
        "support_labels": tf.reshape(labels[:, :shots], [ways * shots]),
        "query_images": tf.reshape(examples[:, shots:], [ways * queries, *example_shape]),
        "query_labels": tf.reshape(labels[:, shots:], [ways * queries]),
    }


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


def _split_of(data, split: str) -> tuple:
    """(`data` itself, a `ClassImages`, or its split `split` (default "train") when it is a
    whole `FewShotDataset`; the split's name)."""
    if isinstance(data, ClassImages) or getattr(data, "streamed", False):  # or RecordClasses
        return data, split
    if hasattr(data, "split") and hasattr(data, "splits"):
        return data.split(split or "train"), split or "train"
    raise TypeError(f"episode_dataset takes a FewShotDataset or one of its splits (a "
                    f"ClassImages); got {type(data).__name__}.")


def episode_sampler(classes: ClassImages, split: str, ways: int, shots: int, queries: int,
                    sampler: str = "fixed", variable=None, augment=None,
                    grouping: str = "any"):
    """`sample(seed) -> episode` of the kind `sampler` names, after checking that `classes`
    can give it (see `episode_dataset`)."""
    check_grouping(grouping, sampler)
    if sampler == "fixed":
        classes = check_episode_spec(classes, ways, shots, queries, split, grouping)
        return make_episode_sampler(classes, ways, shots, queries, augment, grouping)
    if sampler == "variable":
        from tfmeta.data import variable_episodes  # which imports this module

        variable = variable or variable_episodes.VariableEpisodes()
        classes = variable_episodes.check_variable_spec(classes, variable, split)
        return variable_episodes.make_variable_episode_sampler(classes, variable, augment)
    raise UserError(f"sampler must be one of {list(EPISODE_SAMPLERS)}; got {sampler!r}.")


def episode_dataset(
    classes,
    ways: int,
    shots: int,
    queries: int,
    meta_batch_size: int | None = None,
    seed: int = 0,
    num_episodes: int | None = None,
    split: str = "",
    augment=None,
    start_step: int = 0,
    worker: int = 0,
    workers: int = 1,
    sampler: str = "fixed",
    variable=None,
    grouping: str = "any",
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of episodes, batched into meta-batches if `meta_batch_size`.

    Episode number `e` is a pure function of (`seed`, `e`), and meta-batch `s` holds
    episodes `s * B .. s * B + B - 1` (see `episode_numbers`).

    Args:
      classes: the split to sample from (a `ClassImages`, or a `RecordClasses`, whose
        episodes are streamed from its files), or a whole `FewShotDataset`, whose split
        `split` (default "train") it then samples.
      ways, shots, queries: N, K and the number of query examples per class.
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
      sampler: "fixed" (N-way K-shot episodes) or "variable" (Meta-Dataset's variable ways
        and shots, padded to static shapes: `tfmeta.data.variable_episodes`, whose
        parameters `variable` gives, default its published ones; `ways`, `shots` and
        `queries` are then not used).
      grouping: "any" (each episode's classes drawn from the whole split) or "within" (from
        one group of `classes.class_groups`, drawn uniformly among the groups with at least
        `ways` classes; fixed episodes only).
    """
    classes, split = _split_of(classes, split)
    if getattr(classes, "streamed", False):  # held as records: streamed (tfmeta.data.records)
        from tfmeta.data import records

        return records.stream_episodes(classes, ways, shots, queries, meta_batch_size, seed,
                                       num_episodes, split, augment, start_step, worker,
                                       workers, sampler, variable, grouping)
    sample = episode_sampler(classes, split, ways, shots, queries, sampler, variable, augment,
                             grouping)
    base_seed = tf.constant([seed, 0], tf.int64)
    ds = episode_numbers(meta_batch_size, start_step, num_episodes, worker, workers).map(
        lambda e: sample(tf.random.experimental.stateless_fold_in(base_seed, e)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if meta_batch_size:
        ds = ds.batch(meta_batch_size // workers, drop_remainder=True)
    return unsharded(ds)


def single_class_tasks(classes: ClassImages, shots: int, meta_batch_size: int, seed: int = 0,
                       num_tasks: int | None = None, split: str = "", start_step: int = 0,
                       worker: int = 0, workers: int = 1):
    """`{"images": [meta_batch_size, shots, ...]}`: each task is `shots` examples of one
    random class (classes drawn independently per task), for few-shot generation."""
    tasks = episode_dataset(classes, 1, shots, 1, meta_batch_size, seed=seed,
                            num_episodes=num_tasks, split=split, start_step=start_step,
                            worker=worker, workers=workers)
    return tasks.map(lambda episodes: {"images": episodes["support_images"]})

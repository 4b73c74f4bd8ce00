"""N-way K-shot episodes over a `ClassStore`: which classes (from the whole split, or within
one group), K + Q examples of each, and the episode dict they make.

Within one group (`grouping="within"`; Omniglot's alphabets, a folder's `group/class`
folders):

    eligible = groups with at least N classes
    group = uniform(eligible)                          # every eligible group equally likely
    classes = N classes of `group`, uniformly without replacement, in random order

Harder episodes than drawing from every class (`grouping="any"`): an episode's classes
are as alike as the hierarchy makes them.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfmeta.data.classes import MIN_CLASSES, MORE_CLASSES, ClassStore
from tfmeta.data.shape import EpisodeShape
from tfmeta.errors import UserError


def check_fixed(classes: ClassStore, shape: EpisodeShape, split: str = "") -> ClassStore:
    """The classes fixed episodes of `shape` are drawn from; a UserError naming the value
    and the fix if they can't be sampled.

    A class with fewer than `shots + queries` examples is refused, or, where the classes
    allow it (`drop_small_classes`: a user's own data), left out with a warning naming it.
    With `grouping="within"`, some group must keep at least `ways` classes after that
    (`eligible_groups`).
    """
    ways, shots, queries = shape.ways, shape.shots, shape.queries
    where = f" in the {split!r} split" if split else ""
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
    if shape.grouping == "within":
        group_of, eligible = eligible_groups(classes, ways, split)
        if len(eligible) < group_of.max() + 1:
            names = sorted(set(classes.class_groups))
            logging.info("Episodes within one group%s draw from the %d of its %d groups that "
                         "have at least ways=%d classes; not from %s.", where, len(eligible),
                         len(names), ways, ", ".join(np.delete(names, eligible)[:10]))
    return classes


def eligible_groups(classes: ClassStore, ways: int, split: str = "") -> tuple:
    """What `grouping="within"` episodes draw from: (int64 `[C]`, the index of each class's
    group among the sorted group names; int64 `[G']`, the groups that have at least `ways`
    classes). A UserError naming the value and the fix when `classes` have no groups, or no
    group has `ways` classes."""
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


def fixed_composer(classes: ClassStore, shape: EpisodeShape):
    """`compose(seed) -> composition` of fixed episodes over `classes`, a pure TF function of
    a `[2]` seed: {"classes": `[N]` int64 (`choose_classes`), "support": `[N]` int32, K each,
    "queries": `[N]` int32, Q each}."""
    ways = shape.ways
    within = eligible_groups(classes, ways) if shape.grouping == "within" else None

    def compose(seed):
        return {"classes": choose_classes(seed, classes.num_classes, ways, within),
                "support": tf.fill([ways], tf.constant(shape.shots, tf.int32)),
                "queries": tf.fill([ways], tf.constant(shape.queries, tf.int32))}

    return compose


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

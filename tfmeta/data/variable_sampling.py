"""Variable-way, variable-shot episodes: Meta-Dataset's sampler, in the graph, padded.

Triantafillou et al. 2020, "Meta-Dataset: A Dataset of Datasets for Learning to Learn from
Few Examples", Section 3.2; the reference is google-research/meta-dataset,
`meta_dataset/data/sampling.py` (`sample_num_ways_uniformly`, `sample_class_ids_uniformly`,
`compute_num_query`, `sample_support_set_size`, `sample_num_support_per_class`), with the
defaults its gin configs bind (`EpisodeDescriptionConfig`: min_ways=5,
max_ways_upper_bound=50, max_num_query=10, max_support_set_size=500,
max_support_size_contrib_per_class=100, min_log_weight=log(0.5), max_log_weight=log(2)).
An episode's shape, given the example counts `count[c]` of the split's C classes:

    N = uniform_int(min_ways, min(max_ways, C))                       # both ends included
    chosen = N classes drawn uniformly without replacement, in random order
    q = min(max_queries, min(count[chosen] // 2))                     # queries per class
    remaining = count[chosen] - q
    beta = uniform(0, 1)
    S = min(sum(floor(beta * min(max_support_per_class, remaining) + 1)), max_support)
    weight = count[chosen] * exp(uniform(min_log_weight, max_log_weight, size=N))
    support = min(floor(weight / sum(weight) * (S - N)) + 1, remaining)   # per class, >= 1

(`hierarchy` sampling, ImageNet's DAG and Omniglot's alphabets, is not reproduced: classes
are drawn uniformly, the reference's sampler without an ontology.)

The episode is padded to a static shape so that a `tf.function` sees one signature:

    support_images [max_support, *example_shape]          support_labels [max_support] int32
    query_images   [max_ways * max_queries, *example_shape]  query_labels [max_ways * max_queries]

Real examples come first, class after class (class 0's, then class 1's, ...), then padding:
label -1 and an all-zero image. N = max(support_labels) + 1; every class 0..N-1 has at least
one support example and exactly q queries. `variable_composer` (what an episode is made of)
and `arrange_padded` (the episode of its examples) are the two halves every store's reader
shares, through `tfmeta.data.sampling`.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfmeta.data.classes import MIN_CLASSES, MORE_CLASSES, ClassStore
from tfmeta.data.shape import EpisodeShape, VariableEpisodes
from tfmeta.errors import UserError


def sample_episode_shape(seed, class_counts, spec: VariableEpisodes) -> dict:
    """The composition of one episode, a pure TF function of `seed` (see the module docstring).

    Args:
      seed: `[2]` int64 stateless seed.
      class_counts: `[C]` int, the example count of each class of the split (C >= min_ways,
        every count >= 2: `check_variable`).
      spec: the sampler's parameters.

    Returns:
      {"classes": `[max_ways]` int64 indices into the split's classes, in label order;
       "support": `[max_ways]` int32 support examples per class;
       "queries": `[max_ways]` int32 queries per class (the same q for every class)}.
      Entries from N on are 0.
    """
    counts_all = tf.cast(tf.convert_to_tensor(class_counts), tf.int64)
    num_classes = tf.size(counts_all, out_type=tf.int64)
    ways_seed, class_seed, size_seed, weight_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    width = spec.max_ways

    # sample_num_ways_uniformly
    upper = tf.minimum(tf.constant(spec.max_ways, tf.int64), num_classes)
    ways = tf.random.stateless_uniform([], ways_seed, minval=tf.constant(spec.min_ways, tf.int64),
                                       maxval=upper + 1, dtype=tf.int64)
    real = tf.range(width, dtype=tf.int64) < ways  # [W]: the episode's N classes

    # sample_class_ids_uniformly: top_k of i.i.d. uniforms is a uniformly random ordered
    # subset. The W trailing -1 scores keep top_k defined when C < max_ways; they rank last,
    # so only slots from N on (N <= C) can hold them.
    scores = tf.concat([tf.random.stateless_uniform([num_classes], class_seed),
                        -tf.ones([width])], 0)
    _, order = tf.math.top_k(scores, width)
    classes = tf.where(real, tf.cast(order, tf.int64), 0)
    counts = tf.where(real, tf.gather(counts_all, classes), 0)  # images_per_class

    # compute_num_query, support size unspecified: half the smallest chosen class at most.
    smallest = tf.reduce_min(tf.where(real, counts, tf.int64.max))
    queries = tf.minimum(tf.constant(spec.max_queries, tf.int64), smallest // 2)
    remaining = tf.where(real, counts - queries, 0)  # num_remaining_per_class

    # sample_support_set_size: floor(beta * c + 1) is ceil of beta' * c for beta' in (0, 1],
    # so every class contributes at least 1 and S >= N.
    beta = tf.random.stateless_uniform([], size_seed, dtype=tf.float64)
    contributions = tf.cast(tf.minimum(remaining, spec.max_support_per_class), tf.float64)
    drawn = tf.reduce_sum(tf.where(real, tf.floor(beta * contributions + 1.0), 0.0))
    support_size = tf.minimum(drawn, float(spec.max_support))

    # sample_num_support_per_class: one example each, the rest S - N shared in proportion to
    # the class sizes, each scaled by a log-uniform weight.
    log_weights = tf.random.stateless_uniform([width], weight_seed, spec.min_log_weight,
                                              spec.max_log_weight, dtype=tf.float64)
    unnormalized = tf.where(real, tf.cast(counts, tf.float64) * tf.exp(log_weights), 0.0)
    proportions = unnormalized / tf.reduce_sum(unnormalized)
    desired = tf.cast(tf.floor(proportions * (support_size - tf.cast(ways, tf.float64))),
                      tf.int64) + 1
    support = tf.where(real, tf.minimum(desired, remaining), 0)
    return {"classes": classes,
            "support": tf.cast(support, tf.int32),
            "queries": tf.cast(tf.where(real, queries, 0), tf.int32)}


def _place(examples, starts, sizes, slots: int, example_shape):
    """Class j's `sizes[j]` examples, `examples[starts[j]:]`, laid out class after class in
    `slots` slots; the rest padding. Returns (images `[slots, *example_shape]`, labels
    `[slots]` int32: the class, or -1 in padding)."""
    ends = tf.cumsum(sizes)  # [W]
    slot = tf.range(slots, dtype=sizes.dtype)
    label = tf.searchsorted(ends, slot, side="right")  # a slot's class (W past the last)
    real = slot < ends[-1]
    label = tf.where(real, tf.cast(label, sizes.dtype), 0)
    index = tf.where(real, tf.gather(starts, label) + slot - (tf.gather(ends, label)
                                                             - tf.gather(sizes, label)), 0)
    images = tf.gather(examples, index)
    mask = tf.reshape(real, [slots] + [1] * len(example_shape))
    images = tf.ensure_shape(tf.where(mask, images, tf.zeros_like(images)),
                             [slots, *example_shape])
    return images, tf.where(real, tf.cast(label, tf.int32), -1)


def arrange_padded(examples, shape: dict, spec: VariableEpisodes, example_shape=None) -> dict:
    """The padded episode of an episode's examples.

    Args:
      examples: `[T, *example_shape]`, T = sum(support + queries), class after class (in the
        order of `shape["classes"]`), each class's support examples then its queries.
      shape: `sample_episode_shape`'s dict (`support`, `queries` `[max_ways]`).
      spec: the sampler's parameters (the padded lengths).
      example_shape: the shape of one example, for the static shapes of the result (None:
        `examples`' static shape; an unknown dimension stays unknown).

    Returns:
      The episode dict: `support_images [spec.support_slots, *example_shape]`,
      `support_labels [spec.support_slots]` int32, `query_images [spec.query_slots, ...]`,
      `query_labels [spec.query_slots]`; labels 0..N-1 then -1, images zero in padding.
    """
    example_shape = tuple(examples.shape[1:] if example_shape is None else example_shape)
    support = tf.cast(shape["support"], tf.int32)
    queries = tf.cast(shape["queries"], tf.int32)
    starts = tf.cumsum(support + queries, exclusive=True)  # each class's first example
    support_images, support_labels = _place(examples, starts, support, spec.support_slots,
                                            example_shape)
    query_images, query_labels = _place(examples, starts + support, queries, spec.query_slots,
                                        example_shape)
    return {"support_images": support_images, "support_labels": support_labels,
            "query_images": query_images, "query_labels": query_labels}


def check_variable(classes: ClassStore, shape: EpisodeShape, split: str = "") -> ClassStore:
    """The classes variable episodes are drawn from; raises a ValueError naming the counts and
    the fix if there are too few.

    A class needs 2 examples (one support, one query). A smaller class is refused, or where
    the classes allow it (`drop_small_classes`: a user's own data) left out with a warning.
    """
    spec = shape.variable
    where = f" in the {split!r} split" if split else ""
    small = np.flatnonzero(classes.class_counts < 2)
    if len(small) and not classes.drop_small_classes:
        index = small[0]
        raise UserError(
            f"Class {classes.class_names[index]!r}{where} has {classes.class_counts[index]} "
            f"example ({len(small)} such class{'es' if len(small) > 1 else ''}), but a variable "
            "episode takes at least 2 of each class (a support example and a query); add "
            "examples to it or remove it.")
    if len(small):
        names = [f"{classes.class_names[i]!r} ({classes.class_counts[i]})" for i in small]
        logging.warning("Leaving %d class(es)%s with fewer than 2 images out of variable "
                        "episodes: %s%s.", len(small), where, ", ".join(names[:10]),
                        f" and {len(names) - 10} more" if len(names) > 10 else "")
        classes = classes.select(np.flatnonzero(classes.class_counts >= 2))
    if classes.num_classes < spec.min_ways:
        few = (f"Variable episodes take at least min_ways={spec.min_ways} classes, but only "
               f"{classes.num_classes} class{'es' if classes.num_classes != 1 else ''}{where} "
               f"{'have' if classes.num_classes != 1 else 'has'} 2 or more examples")
        if classes.num_classes < MIN_CLASSES:
            raise UserError(f"{few}, and an episode needs at least {MIN_CLASSES} classes; add "
                            f"examples to the small classes, or {MORE_CLASSES}.")
        raise UserError(f"{few}; set episode_sampler.min_ways <= {classes.num_classes} (and "
                        "max_ways) or use a dataset with more classes.")
    return classes


def variable_composer(classes: ClassStore, shape: EpisodeShape):
    """`compose(seed) -> composition` of variable episodes over `classes`: `sample_episode_shape`
    with the split's class counts and `shape.variable`."""
    counts = tf.constant(classes.class_counts, tf.int64)
    return lambda seed: sample_episode_shape(seed, counts, shape.variable)

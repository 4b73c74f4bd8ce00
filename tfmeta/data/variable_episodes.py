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
one support example and exactly q queries. `sample_episode_shape` and `arrange_padded` are
the two halves any reader of examples shares (in memory here, records elsewhere).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import tensorflow as tf

from tfmeta.data.episodes import MIN_CLASSES, MORE_CLASSES, ClassImages, stored_tensor
from tfmeta.errors import UserError
from tfmeta.ranges import Range, check_all

# Meta-Dataset's class weights: a class's share of the support set is scaled by a factor
# drawn log-uniformly in [1/2, 2].
LOG_HALF, LOG_TWO = math.log(0.5), math.log(2.0)

# Far above the published settings, low enough that a typo (an extra zero or two) is refused
# here rather than exhausting memory in the padded episodes.
FIELD_RANGES = {
    "min_ways": Range(2, 1000, integer=True),
    "max_ways": Range(2, 1000, integer=True),
    "max_queries": Range(1, 1000, integer=True),
    "max_support": Range(2, 10000, integer=True),
    "max_support_per_class": Range(1, 10000, integer=True),
    "min_log_weight": Range(-10, 10),
    "max_log_weight": Range(-10, 10),
}


def check_variable_fields(values, prefix: str = "") -> None:
    """Raises a ValueError naming the first field of `values` (a mapping of `VariableEpisodes`'
    fields) outside its range, or the pair that contradict each other; `prefix` is prepended
    to the names (a config's section)."""
    unknown = sorted(set(values) - set(FIELD_RANGES))
    if unknown:
        raise UserError(f"Unknown variable-episode field{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(prefix + k for k in unknown)}; valid fields: "
                        f"{sorted(FIELD_RANGES)}.")
    check_all(FIELD_RANGES, values, prefix)
    field = {k: prefix + k for k in FIELD_RANGES}
    if values["max_ways"] < values["min_ways"]:
        raise UserError(f"{field['max_ways']}={values['max_ways']} is less than "
                        f"{field['min_ways']}={values['min_ways']}; set max_ways >= min_ways.")
    if values["max_support"] < values["max_ways"]:
        raise UserError(
            f"{field['max_support']}={values['max_support']} is less than "
            f"{field['max_ways']}={values['max_ways']}, but every class of an episode needs a "
            f"support example; set max_support >= {values['max_ways']} or fewer max_ways.")
    if values["max_log_weight"] < values["min_log_weight"]:
        raise UserError(f"{field['max_log_weight']}={values['max_log_weight']} is less than "
                        f"{field['min_log_weight']}={values['min_log_weight']}; set "
                        "min_log_weight <= max_log_weight.")


@dataclasses.dataclass(frozen=True)
class VariableEpisodes:
    """The variable-episode sampler's parameters (Meta-Dataset's defaults).

    Attributes:
      min_ways, max_ways: N is uniform in [min_ways, min(max_ways, C)] (reference:
        `min_ways`, `max_ways_upper_bound`).
      max_queries: the most query examples per class (`max_num_query`).
      max_support: the most support examples in an episode (`max_support_set_size`); also
        the padded support length.
      max_support_per_class: the most a class adds to the drawn support-set size, which is
        not a limit on its support examples (`max_support_size_contrib_per_class`).
      min_log_weight, max_log_weight: each class's share of the support set is its example
        count times exp(uniform(min_log_weight, max_log_weight)): class imbalance.
    """

    min_ways: int = 5
    max_ways: int = 50
    max_queries: int = 10
    max_support: int = 500
    max_support_per_class: int = 100
    min_log_weight: float = LOG_HALF
    max_log_weight: float = LOG_TWO

    def __post_init__(self):
        check_variable_fields(dataclasses.asdict(self))

    @classmethod
    def from_config(cls, values, prefix: str = "variable_episodes.") -> VariableEpisodes:
        """From a config section (a mapping of some of the fields; the others keep their
        defaults); errors name the fields as `prefix + field`."""
        values = {**dataclasses.asdict(cls()), **dict(values)}
        check_variable_fields(values, prefix)
        return cls(**values)

    @property
    def support_slots(self) -> int:
        """The padded support length: `max_support`."""
        return self.max_support

    @property
    def query_slots(self) -> int:
        """The padded query length: `max_ways * max_queries`."""
        return self.max_ways * self.max_queries


def sample_episode_shape(seed, class_counts, spec: VariableEpisodes) -> dict:
    """The composition of one episode, a pure TF function of `seed` (see the module docstring).

    Args:
      seed: `[2]` int64 stateless seed.
      class_counts: `[C]` int, the example count of each class of the split (C >= min_ways,
        every count >= 2: `check_variable_spec`).
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


def check_variable_spec(classes: ClassImages, spec: VariableEpisodes, split="") -> ClassImages:
    """The classes variable episodes are drawn from; raises a ValueError naming the counts and
    the fix if there are too few.

    A class needs 2 examples (one support, one query). A smaller class is refused, or where
    the classes allow it (`drop_small_classes`: a user's own data) left out with a warning.
    """
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
        raise UserError(f"{few}; set variable_episodes.min_ways <= {classes.num_classes} (and "
                        "max_ways) or use a dataset with more classes.")
    return classes


def make_variable_episode_sampler(classes: ClassImages, spec: VariableEpisodes, augment=None):
    """Returns `sample(seed) -> padded episode dict`, a pure TF function of a `[2]` int seed.

    Like `tfmeta.data.episodes.make_episode_sampler`, but the episode's shape is drawn by
    `sample_episode_shape`; each chosen class's examples are drawn without replacement,
    `classes.transform` and `augment(images, seed)` see only the real examples, and padding
    is added after them (so padding images are exact zeros).
    """
    images = stored_tensor(classes.images)
    offsets = tf.constant(classes.class_offsets, tf.int64)
    counts = tf.constant(classes.class_counts, tf.int64)
    max_count = int(classes.class_counts.max())
    # The most one class gives an episode: its support (at most the whole support set) and
    # its queries, and never more than it has.
    picks_per_class = min(max_count, spec.max_support + spec.max_queries)
    stored_shape, example_shape = tuple(classes.images.shape[1:]), classes.example_shape

    def sample(seed):
        shape_seed, example_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        shape = sample_episode_shape(shape_seed, counts, spec)
        chosen = shape["classes"]
        scores = tf.random.stateless_uniform([spec.max_ways, max_count], example_seed)
        valid = tf.range(max_count, dtype=tf.int64)[None, :] < tf.gather(counts, chosen)[:, None]
        scores = tf.where(valid, scores, -1.0)  # beyond a class's count: never chosen
        _, picks = tf.math.top_k(scores, picks_per_class)  # [W, P], without replacement
        taken = tf.range(picks_per_class)[None, :] < (shape["support"] + shape["queries"])[:, None]
        # Row-major: class after class, each class's first `support` picks then its queries.
        index = tf.boolean_mask(tf.gather(offsets, chosen)[:, None] + tf.cast(picks, tf.int64),
                                taken)
        examples = tf.reshape(tf.gather(images, index), [-1, *stored_shape])
        if classes.transform is not None:
            examples = classes.transform(examples)
        if augment is not None:
            examples = augment(examples, tf.random.experimental.stateless_fold_in(seed, 2))
        return arrange_padded(examples, shape, spec, example_shape)

    return sample

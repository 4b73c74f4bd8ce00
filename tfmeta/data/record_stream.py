"""Episodes streamed from records (`RecordClasses`): `stream_episodes` is `episode_dataset`
for a split held as files, `stream_examples` supervised pre-training's batches of it.

Each class is a stream of its records, permuted within windows (`shuffle_buffer`), epoch
after epoch; an episode takes the next examples of the classes it chooses. What an episode
is made of, its composition (which classes, and for variable episodes how many examples of
each: `tfmeta.data.sampling`, as for classes in memory), is a pure function of (seed, episode
number), so the whole stream is too:

    composition(e) = classes and counts of episode e      # from (seed, e) only
    position(c, e) = sum of counts of class c over episodes < e
    episode e = next counts[c] records of class c's stream, from position(c, e)
    class c's stream = epoch k: shuffle(records of c, seed(c, k)), k = 0, 1, ...

A run resumed at step s recomputes the positions at episode s * B (from the compositions
alone, reading nothing), so it continues exactly as a run that never stopped. Worker w of W
computes the whole stream's positions but reads only its share of each meta-batch, so the
workers' episodes are disjoint and together the single-process stream. The stream holds
record numbers, not records: an episode's records are read on demand by their index, so
memory is the index (24 bytes a record) and the episodes in flight, whatever the number of
classes, the buffer or the record size (`bin/benchmark.py --cases=records_rss_by_classes`).

Several sources (`--data_dir=A,B`): every episode draws its classes from one source, chosen
uniformly (as Meta-Dataset trains) or by `source_weights`, then composes itself from that
source's classes alone (`_per_source`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfmeta.data import sampling
from tfmeta.data.classes import MIN_CLASSES
from tfmeta.data.fixed_sampling import eligible_groups
from tfmeta.data.record_store import RecordClasses
from tfmeta.data.shape import EpisodeShape
from tfmeta.errors import UserError


# ------------------------------------------------------------------------------ class streams
def record_numbers(classes: RecordClasses, record_classes, positions, seed: int):
    """Which record of its file (int64 `[n]`) is at position `positions[i]` of the stream of
    class `record_classes[i]` of `classes`. Class c's stream is its file epoch after epoch;
    epoch k starts at a random record r(k) (wrapping around) and permutes each window of
    `shuffle_buffer` records:

        stream(c) = concat(order(k) for k = 0, 1, ...)
        order(k) = concat(permute(w) for w in windows(rotate(file, r(k)), buffer))

    statelessly seeded by (seed, c, k, window), so any position is computed without the
    ones before; the file itself is in a random order (`record_writer.convert`), and the
    rotation moves the window boundaries every epoch. Only record numbers are permuted: the
    records are read on demand (`RecordReader`), so the buffer costs no memory."""
    counts = tf.constant(classes.class_counts, tf.int64)
    buffer = tf.constant(classes.shuffle_buffer, tf.int64)

    def one(item):
        c, position = item
        count = tf.gather(counts, c)
        window = tf.maximum(tf.constant(1, tf.int64), tf.minimum(buffer, count))
        epoch_seed = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(int(seed), tf.int64), c]), position // count)
        start = tf.random.stateless_uniform([], epoch_seed, 0, count, tf.int64)
        within = position % count
        w = within // window
        size = tf.minimum(window, count - w * window)
        seed_w = tf.random.experimental.stateless_fold_in(epoch_seed, w + 1)
        order = tf.argsort(tf.random.stateless_uniform(tf.reshape(size, [1]), seed_w))
        return (start + w * window + tf.cast(tf.gather(order, within % window), tf.int64)
                ) % count

    return tf.map_fn(one, (tf.cast(record_classes, tf.int64), tf.cast(positions, tf.int64)),
                     fn_output_signature=tf.int64)


def _taking(classes: RecordClasses, composition_of: Callable):
    """`step(positions [C], episode) -> (positions after it, (episode, classes [W], start
    [W], take [W]))`: an episode takes `take[j] = support[j] + queries[j]` records of class
    `classes[j]` (its composition, `composition_of(episode)`) from its stream, from position
    `start[j]`; a take that would run past the end of the class's epoch first skips the rest
    of the epoch, so no episode holds one record twice."""
    counts = tf.constant(classes.class_counts, tf.int64)

    def step(positions, episode):
        composition = composition_of(episode)
        chosen = composition["classes"]
        take = tf.cast(composition["support"] + composition["queries"], tf.int64)
        at = tf.gather(positions, chosen)
        size = tf.gather(counts, chosen)
        offset = at % size
        start = at + tf.where((offset > 0) & (offset + take > size), size - offset, 0)
        used = take > 0  # (variable episodes pad `chosen` with class 0, taking nothing)
        positions = tf.tensor_scatter_nd_update(
            positions, tf.boolean_mask(chosen, used)[:, None],
            tf.boolean_mask(start + take, used))
        return positions, (episode, chosen, start, take)

    return step


def start_positions(classes: RecordClasses, composition_of: Callable, first_episode: int):
    """Where each class's stream stands after the episodes `0 .. first_episode - 1`:
    `[C]` int64 (see `_taking`)."""
    zeros = tf.zeros([classes.num_classes], tf.int64)
    if first_episode <= 0:
        return zeros
    step = _taking(classes, composition_of)
    return tf.data.Dataset.range(first_episode).reduce(zeros, lambda p, e: step(p, e)[0])


def _stream_examples(classes: RecordClasses, composition_of: Callable,
                     episodes: tf.data.Dataset, positions, seed: int,
                     keep: Callable) -> tf.data.Dataset:
    """`(episode, stored examples [T, ...])` for each episode of `episodes` that `keep`
    accepts: its examples class by class, `support[j] + queries[j]` of class `classes[j]` of
    its composition (`composition_of(episode)`). Every episode advances the class streams
    (as in the single-process stream); only kept ones are read, on demand."""
    reader = classes.reader

    def read(episode, chosen, start, take):
        record_classes = tf.repeat(chosen, take)
        within = tf.range(tf.reduce_sum(take)) - tf.repeat(tf.cumsum(take, exclusive=True),
                                                           take)
        numbers = record_numbers(classes, record_classes, tf.repeat(start, take) + within,
                                 seed)
        return episode, classes.decode_batch(reader.read(record_classes, numbers),
                                             record_classes)

    taken = episodes.scan(positions, _taking(classes, composition_of))
    return taken.filter(lambda episode, *_: keep(episode)).map(
        read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ------------------------------------------------------------------------------ sources
def _per_source(classes: RecordClasses, shape: EpisodeShape) -> Callable:
    """`compose(seed) -> composition` (`tfmeta.data.sampling`) over the split's classes: the
    episode's source drawn by `source_weights`, then the composition of `shape` over that
    source's classes alone (`sampling.composer`), its classes mapped to the split's
    indices."""
    sources = sorted(set(int(s) for s in classes.class_sources))
    members = [np.flatnonzero(classes.class_sources == s) for s in sources]
    composers = [sampling.composer(classes.select(index), shape) for index in members]
    logits = tf.math.log(tf.constant([[classes.source_weights[s] for s in sources]], tf.float32))

    def compose(seed):
        source_seed, class_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

        def branch(index, compose_in_source):
            def draw():
                composition = compose_in_source(class_seed)
                return {"classes": tf.gather(tf.constant(index, tf.int64),
                                             composition["classes"]),
                        "support": composition["support"], "queries": composition["queries"]}
            return draw

        if len(sources) == 1:
            return branch(members[0], composers[0])()
        which = tf.random.stateless_categorical(logits, 1, source_seed, dtype=tf.int32)[0, 0]
        return tf.switch_case(which, [branch(index, compose_in_source) for index,
                                      compose_in_source in zip(members, composers)])

    return compose


def _check_sources(classes: RecordClasses, shape: EpisodeShape, split: str) -> None:
    """Every source can give episodes of `shape` by itself (an episode draws its classes from
    one source): enough classes (`ways`, or a variable episode's `min_ways`), enough records
    of each (`shots + queries`, or a variable episode's 2), and with `grouping="within"` a
    group of `ways` classes; a UserError naming the source and the fix otherwise."""
    if shape.padded:
        ways, needed = shape.variable.min_ways, 2
    else:
        ways, needed = shape.ways, shape.shots + shape.queries
    for source in sorted(set(int(s) for s in classes.class_sources)):
        members = np.flatnonzero(classes.class_sources == source)
        if shape.grouping == "within":  # an episode's group is one of its source's
            eligible_groups(classes.select(members), ways, split)
        counts = classes.class_counts[members]
        if len(counts) < min(ways, MIN_CLASSES):
            raise UserError(
                f"Records source {source} has {len(counts)} "
                f"class{'es' if len(counts) != 1 else ''} in the {split!r} split, but an episode "
                f"draws all its classes from one source and needs at least {MIN_CLASSES}; give "
                "that source more classes in the split (more classes in its data, or a "
                "data.class_split or data.split_fractions that puts 2 or more of them there), "
                "then convert the records again.")
        if len(counts) < ways:
            raise UserError(f"ways={ways} is more than the {len(counts)} classes of records "
                            f"source {source} in the {split!r} split (an episode draws its "
                            f"classes from one source); use ways <= {len(counts)}.")
        if needed and counts.min() < needed:
            raise UserError(f"shots + queries = {needed} is more than the {counts.min()} "
                            f"records of the smallest class of source {source} in the "
                            f"{split!r} split; use shots + queries <= {counts.min()}.")


def _inputs(classes: RecordClasses, stored, source):
    """Stored examples `[n, ...]` -> model inputs, with the transform of `source`."""
    def apply(transform):
        if transform is None:
            return lambda: tf.cast(stored, tf.float32) if stored.dtype == tf.uint8 else stored
        return lambda: transform(tf.cast(stored, tf.float32) / 255.0)

    distinct = {id(t) for t in classes.transforms}
    if len(distinct) == 1:
        return apply(classes.transforms[0])()
    return tf.switch_case(source, [apply(t) for t in classes.transforms])


# ------------------------------------------------------------------------------ streams
def stream_episodes(classes: RecordClasses, shape: EpisodeShape,
                    meta_batch_size: int | None = None, seed: int = 0,
                    num_episodes: int | None = None, split: str = "", augment=None,
                    start_step: int = 0, worker: int = 0, workers: int = 1) -> tf.data.Dataset:
    """`episode_dataset` for a split held as records (its arguments; see the module
    docstring for how the stream is made)."""
    batch = meta_batch_size or 1
    sampling.episode_numbers(meta_batch_size, start_step, num_episodes, worker,
                             workers)  # (validates them)
    share = batch // workers
    classes = sampling.check(classes, shape, split)
    _check_sources(classes, shape, split)
    compose = _per_source(classes, shape)
    base_seed = tf.constant([seed, 0], tf.int64)

    def episode_seed(episode):
        return tf.random.experimental.stateless_fold_in(base_seed, episode)

    def composition_of(episode):
        return compose(tf.random.experimental.stateless_split(episode_seed(episode), 2)[0])

    first = int(start_step) * batch
    positions = start_positions(classes, composition_of, first)
    episodes = (tf.data.Dataset.range(first, first + num_episodes) if num_episodes is not None
                else tf.data.Dataset.counter(first))
    examples = _stream_examples(classes, composition_of, episodes, positions, seed,
                                lambda e: (e % batch) // share == worker)
    sources = tf.constant(classes.class_sources, tf.int32)
    example_shape = classes.example_shape

    def assemble(episode, stored):
        composition = composition_of(episode)
        inputs = _inputs(classes, stored, tf.gather(sources, composition["classes"][0]))
        if augment is not None:
            inputs = augment(inputs, tf.random.experimental.stateless_fold_in(
                episode_seed(episode), 2))
        return sampling.arrange(inputs, composition, shape, example_shape)

    ds = examples.map(assemble, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if meta_batch_size:
        ds = ds.batch(share, drop_remainder=True)
    return sampling.unsharded(ds)


def stream_examples(classes: RecordClasses, batch_size: int, seed: int = 0, start_step: int = 0,
                    worker: int = 0, workers: int = 1) -> tf.data.Dataset:
    """Endless `{"images", "labels"}` batches (supervised pre-training on records): example
    `i` of batch `s` is the next record of a class drawn in proportion to the class sizes,
    a pure function of (seed, s * batch_size + i); labels are class indices in the split.
    Model inputs (transform applied), not augmented."""
    logits = tf.math.log(tf.constant([classes.class_counts], tf.float32))
    base_seed = tf.constant([seed, 9], tf.int64)
    share = batch_size // workers

    def composition_of(example):  # one record of one class
        seed_e = tf.random.experimental.stateless_fold_in(base_seed, example)
        chosen = tf.random.stateless_categorical(logits, 1, seed_e, dtype=tf.int64)[0]
        return {"classes": chosen, "support": tf.ones([1], tf.int32),
                "queries": tf.zeros([1], tf.int32)}

    first = int(start_step) * batch_size
    positions = start_positions(classes, composition_of, first)
    examples = _stream_examples(classes, composition_of, tf.data.Dataset.counter(first),
                                positions, seed, lambda e: (e % batch_size) // share == worker)
    sources = tf.constant(classes.class_sources, tf.int32)

    def labelled(example, stored):
        label = composition_of(example)["classes"][0]
        inputs = _inputs(classes, stored, tf.gather(sources, label))[0]
        return {"images": inputs, "labels": tf.cast(label, tf.int32)}

    return sampling.unsharded(examples.map(labelled, num_parallel_calls=tf.data.AUTOTUNE,
                                           deterministic=True).batch(share, drop_remainder=True))

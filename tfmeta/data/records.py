"""Per-class TFRecord files: datasets larger than memory, streamed as episodes.

The layout (Meta-Dataset's, Triantafillou et al. 2020): one TFRecord file per class, each
record a `tf.train.Example` with the encoded example (`image`: PNG for uint8 images,
`tf.io.serialize_tensor` for anything else, so the round trip is exact) and its class
(`label`), plus `dataset_spec.json`: the classes (name, split, count, file, and the group
where the dataset's classes have groups: `ClassImages.class_groups`), the stored
example's shape and dtype, how stored examples become model inputs (`transform`), and the
source's fingerprint. `convert` writes it from any `FewShotDataset`; `load` reads it back
(`--dataset=records --data_dir=DIR[,DIR2,...]`).

Streaming. Each class is a stream of its records, shuffled within a buffer
(`shuffle_buffer`), epoch after epoch; an episode takes the next examples of the classes
it chooses. Which classes (and, for variable episodes, how many examples of each) is a pure
function of (seed, episode number), so the whole stream is too:

    shape(e) = classes and counts of episode e            # from (seed, e) only
    position(c, e) = sum of counts of class c over episodes < e
    episode e = next counts[c] records of class c's stream, from position(c, e)
    class c's stream = epoch k: shuffle(records of c, seed(c, k)), k = 0, 1, ...

A run resumed at step s recomputes the positions at episode s * B and skips there (at most
one class file's worth of records per class), so it continues exactly as a run that never
stopped. Worker w of W reads the whole stream's records but decodes only its share of each
meta-batch, so the workers' episodes are disjoint and together the single-process stream.
Memory is the shuffle buffers (classes x buffer x record size), not the dataset.

Several sources (`--data_dir=A,B`): every episode draws its classes from one source, chosen
uniformly (as Meta-Dataset trains) or by `source_weights`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfmeta import files
from tfmeta.data.base import FewShotDataset
from tfmeta.data.episodes import (
    check_episode_spec,
    check_grouping,
    choose_classes,
    eligible_groups,
    episode_numbers,
    split_episode,
    unsharded,
)

SPEC_FILE = "dataset_spec.json"
FORMAT = "tfmeta-records"
VERSION = 1
DEFAULT_SHUFFLE_BUFFER = 256
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------ writing
def stored_encoding(shape, dtype) -> str:
    """"png" for uint8 images `[H, W, 1 or 3]` (lossless), else "tensor"."""
    if np.dtype(dtype) == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3):
        return "png"
    return "tensor"


def describe_transform(classes) -> dict | None:
    """How stored examples become model inputs, as data: None (they are the inputs), or
    `{"size": [h, w], "scale": [C], "offset": [C]}` for uint8 pixels whose transform is

        inputs = resize(pixels / 255, size) * scale + offset     # per channel

    (what every image loader here does: `(x - mean) / std` is scale 1/std, offset
    -mean/std). Found by probing the transform with black and white images and checked on
    real examples; a ValueError when it is anything else."""
    if classes.transform is None:
        return None
    stored = classes.stored_examples(0)
    if stored.dtype != np.uint8 or stored.ndim != 4:
        raise ValueError(f"Cannot describe the preprocessing of examples of shape "
                         f"{stored.shape[1:]} and dtype {stored.dtype} as data; records hold "
                         "uint8 images [H, W, C] with a transform, or model inputs as they are.")
    probe = np.stack([np.zeros(stored.shape[1:], np.uint8), np.full(stored.shape[1:], 255,
                                                                      np.uint8)])
    black, white = (np.asarray(x, np.float64) for x in classes.inputs(probe))
    offset, scale = black[0, 0], white[0, 0] - black[0, 0]
    size = list(black.shape[:2])
    sample = stored[:8]
    expected = tf.cast(sample, tf.float32) / 255.0
    if size != list(sample.shape[1:3]):
        expected = tf.image.resize(expected, size, antialias=True)
    expected = np.asarray(expected) * scale + offset
    got = np.asarray(classes.inputs(sample), np.float64)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise ValueError("This dataset's preprocessing is not a resize and a per-channel "
                         "normalization of its pixels, so records cannot reproduce it; "
                         "convert with --set=data.normalize=False or load it as it is.")
    return {"size": size, "scale": scale.tolist(), "offset": offset.tolist()}


def _class_plan(dataset: FewShotDataset) -> list:
    plan = []
    for split in [s for s in SPLITS if s in dataset.splits] + sorted(
            set(dataset.splits) - set(SPLITS)):
        classes = dataset.splits[split]
        for i in range(classes.num_classes):
            group = ({} if getattr(classes, "class_groups", None) is None else
                     {"group": str(classes.class_groups[i])})
            plan.append({"name": str(classes.class_names[i]), "split": split,
                         "count": int(classes.class_counts[i]), **group,
                         "file": f"{split}/class_{len(plan):05d}.tfrecord", "index": i})
    return plan


def _encode(example: np.ndarray, encoding: str) -> bytes:
    if encoding == "png":
        return tf.io.encode_png(example).numpy()
    return tf.io.serialize_tensor(tf.constant(example)).numpy()


def _write_class(classes, entry: dict, label: int, encoding: str, path: str, seed: int):
    """One class's file, its records in a seeded random order (so that a shuffle buffer
    smaller than the class still mixes the whole class over epochs), written to a temporary
    name and renamed: a file that exists is complete."""
    examples = classes.stored_examples(entry["index"])
    order = np.random.RandomState([seed, label]).permutation(len(examples))
    with files.atomic_path(path, ".partial") as partial, tf.io.TFRecordWriter(partial) as writer:
        for i in order:
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[_encode(examples[i], encoding)])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(
                feature=feature)).SerializeToString())


def convert(dataset: FewShotDataset, output_dir: str, threads: int | None = None,
            progress: Callable[[int, int], None] | None = None, seed: int = 0) -> dict:
    """Writes `dataset` as per-class records in `output_dir`; returns the spec.

    Resumable: a rerun into the same folder keeps the class files already written (each is
    written under a temporary name and renamed) and writes the rest; a folder holding
    records of other data is refused. Classes are written `threads` at a time (default:
    the CPU count). `progress(done, total)` is called after each class."""
    first = next(iter(dataset.splits.values()))
    stored_shape = tuple(int(d) for d in first.stored_examples(0).shape[1:])
    dtype = first.stored_examples(0).dtype
    for split, classes in dataset.splits.items():
        other = classes.stored_examples(0)
        if tuple(other.shape[1:]) != stored_shape or other.dtype != dtype:
            raise ValueError(f"Split {split!r} stores {other.shape[1:]} {other.dtype} examples "
                             f"but another split {stored_shape} {dtype}; records need one shape.")
    encoding = stored_encoding(stored_shape, dtype)
    plan = _class_plan(dataset)
    spec = {
        "format": FORMAT, "version": VERSION, "name": dataset.name,
        "description": dataset.description, "source_fingerprint": dataset.fingerprint(),
        "encoding": encoding, "stored_shape": list(stored_shape), "stored_dtype": dtype.name,
        "transform": describe_transform(first), "raw_shape": list(dataset.raw_shape),
        "value_range": list(dataset.value_range) if dataset.value_range else None,
        "decoding": dataset.file_decoding(), "shuffle_seed": int(seed),
        "classes": [{k: v for k, v in entry.items() if k != "index"} for entry in plan],
    }
    os.makedirs(output_dir, exist_ok=True)
    final, partial = os.path.join(output_dir, SPEC_FILE), os.path.join(output_dir,
                                                                       SPEC_FILE + ".partial")
    for existing in (final, partial):
        if os.path.exists(existing):
            with open(existing, encoding="utf-8") as f:
                previous = json.load(f)
            if previous != spec:
                raise ValueError(f"{output_dir} already holds records of other data (or other "
                                 "options); convert into an empty folder.")
            if existing == final:
                return spec
    if not os.path.exists(partial) and any(not name.startswith(".")
                                           for name in os.listdir(output_dir)):
        raise ValueError(f"--output_dir={output_dir} is not empty; convert into a new folder.")
    with files.atomic_write(partial) as f:
        json.dump(spec, f, indent=1)
    for split in {entry["split"] for entry in plan}:
        os.makedirs(os.path.join(output_dir, split), exist_ok=True)
    todo = [(label, entry) for label, entry in enumerate(plan)
            if not os.path.exists(os.path.join(output_dir, entry["file"]))]
    done = len(plan) - len(todo)
    with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        jobs = [pool.submit(_write_class, dataset.splits[entry["split"]], entry, label, encoding,
                            os.path.join(output_dir, entry["file"]), seed)
                for label, entry in todo]
        for job in concurrent.futures.as_completed(jobs):
            job.result()
            done += 1
            if progress is not None:
                progress(done, len(plan))
    os.replace(partial, final)
    return spec


# ------------------------------------------------------------------------------ reading
def is_url(path: str) -> bool:
    """A path `tf.io.gfile` reads remotely (`gs://bucket/records`, `s3://`, `hdfs://`)."""
    return "://" in path


def read_spec(data_dir: str) -> dict:
    """A records folder's spec (local, or any `tf.io.gfile` URL such as gs://); a one-line
    error when it is not one (or is unfinished)."""
    path = data_dir.rstrip("/") + "/" + SPEC_FILE
    gfile = tf.io.gfile
    if not gfile.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir={data_dir} does not exist; write records there "
                                "with bin/convert.py --output_dir=" + data_dir + ".")
    if not gfile.exists(path):
        hint = (" (the conversion did not finish: rerun bin/convert.py with the same flags to "
                "complete it)" if gfile.exists(path + ".partial") else
                "; write records with bin/convert.py --dataset=NAME --output_dir=" + data_dir)
        raise FileNotFoundError(f"{data_dir} has no {SPEC_FILE}{hint}.")
    try:
        with gfile.GFile(path, "r") as f:
            spec = json.loads(f.read())
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}); convert the data again.") \
            from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or \
            spec.get("version") != VERSION:
        raise ValueError(f"{path} is not a {FORMAT} v{VERSION} spec; convert the data again "
                         "with this tfmeta's bin/convert.py.")
    present = set() if is_url(data_dir) else None
    for entry in spec["classes"]:
        file = data_dir.rstrip("/") + "/" + entry["file"]
        if present is None and not os.path.isfile(file):
            raise FileNotFoundError(f"{file} (class {entry['name']!r}) is missing; copy the "
                                    "whole records folder, or convert again.")
    return spec


def _transform(spec: dict, normalize: bool = True):
    """Stored examples -> model inputs, from the spec's `transform` (see
    `describe_transform`); None when the stored examples are the inputs."""
    described = spec["transform"]
    if described is None:
        return None
    size = tuple(described["size"])
    scale = tf.constant(described["scale"] if normalize else [1.0] * len(described["scale"]),
                        tf.float32)
    offset = tf.constant(described["offset"] if normalize else [0.0] * len(described["scale"]),
                         tf.float32)
    resize = size != tuple(spec["stored_shape"][:2])

    def from_raw(images):  # raw: pixels / 255, in [0, 1]
        images = tf.convert_to_tensor(images, tf.float32)
        if resize:
            images = tf.image.resize(images, size, antialias=True)
        return images * scale + offset

    return from_raw


@dataclasses.dataclass(frozen=True)
class RecordClasses:
    """The classes of one split, held as files (the streaming counterpart of `ClassImages`:
    `episode_dataset` streams episodes from it).

    Attributes:
      files: one TFRecord file per class.
      class_counts: int array `[C]`, records per class.
      class_names: `C` names.
      class_sources: int array `[C]`, the source (records folder) of each class.
      source_weights: one weight per source: the chance an episode draws from it.
      encoding: "png" or "tensor" (see `stored_encoding`).
      stored_shape, stored_dtype: one decoded record.
      transforms: per source, stored examples -> model inputs (None: they are the inputs).
      shuffle_buffer: records each class stream shuffles over.
      drop_small_classes: as `ClassImages`'s.
      class_groups: `C` group names (records of a dataset whose classes have groups), or
        None; as `ClassImages`'s.
    """

    files: tuple
    class_counts: np.ndarray
    class_names: tuple
    class_sources: np.ndarray
    source_weights: tuple
    encoding: str
    stored_shape: tuple
    stored_dtype: str
    transforms: tuple
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    drop_small_classes: bool = False
    class_groups: tuple | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def transform(self):
        return self.transforms[0]

    @property
    def example_shape(self) -> tuple:
        if self.transform is None:
            return tuple(self.stored_shape)
        zero = tf.zeros([1, *self.stored_shape], tf.float32)
        return tuple(self.transform(zero).shape[1:])

    def select(self, class_indices) -> RecordClasses:
        index = np.asarray(class_indices, np.int64)
        return dataclasses.replace(
            self, files=tuple(self.files[i] for i in index), class_counts=self.class_counts[index],
            class_names=tuple(self.class_names[i] for i in index),
            class_sources=self.class_sources[index],
            class_groups=None if self.class_groups is None else tuple(
                self.class_groups[i] for i in index))

    def decode(self, serialized):
        """One serialized record -> the stored example (uint8 pixels or the tensor)."""
        return self.decode_batch(serialized[None])[0]

    def decode_batch(self, serialized):
        """Serialized records `[n]` -> stored examples `[n, *stored_shape]`: one parse op
        for the batch, then the images one by one (PNG decoding is per image)."""
        encoded = tf.io.parse_example(serialized, {
            "image": tf.io.FixedLenFeature([], tf.string)})["image"]
        if self.encoding == "png":
            def one(data):
                return tf.io.decode_png(data, channels=self.stored_shape[-1])
        else:
            def one(data):
                return tf.io.parse_tensor(data, tf.as_dtype(self.stored_dtype))
        examples = tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec(
            self.stored_shape, tf.as_dtype(self.stored_dtype)))
        return tf.ensure_shape(examples, [None, *self.stored_shape])

    def stored_examples(self, index: int) -> np.ndarray:
        """Class `index`'s records, decoded (one class is read into memory)."""
        records = tf.data.TFRecordDataset(self.files[index]).map(self.decode)
        return np.stack([x.numpy() for x in records])

    def inputs(self, stored, source: int = 0) -> np.ndarray:
        transform = self.transforms[source]
        if transform is None:
            return np.asarray(stored)
        return np.asarray(transform(tf.cast(stored, tf.float32) / 255.0))

    def class_examples(self, index: int) -> np.ndarray:
        """Class `index`'s examples as model inputs."""
        return self.inputs(self.stored_examples(index), int(self.class_sources[index]))

    def all_inputs(self):
        raise ValueError("This split is streamed from records and is not held in memory; "
                         "write features from a dataset that fits in memory (or convert a "
                         "subset of its classes).")

    # ------------------------------------------------------------------ streams
    def class_stream(self, index: int, position, seed: int) -> tf.data.Dataset:
        """Class `index`'s serialized records from `position` (a count of records already
        taken from the start of the stream) on, epoch after epoch. Epoch k reads the file
        from a random record r on (wrapping around) and permutes each window of
        `shuffle_buffer` records:

            order(k) = concat(permute(window) for window in chunks(rotate(file, r(k)), buffer))

        Statelessly seeded by (seed, class, k, window), so any epoch is reached without
        reading the ones before; the file itself is in a random order (`convert`), and the
        rotation moves the window boundaries every epoch."""
        count = int(self.class_counts[index])
        buffer = max(1, min(self.shuffle_buffer, count))
        file = self.files[index]
        class_seed = tf.constant([int(seed), index], tf.int64)

        def epoch(k):
            epoch_seed = tf.random.experimental.stateless_fold_in(class_seed, k)
            start = tf.random.stateless_uniform([], epoch_seed, 0, count, tf.int64)
            records = tf.data.TFRecordDataset(file)
            rotated = records.skip(start).concatenate(records.take(start))

            def permute(window_index, window):
                seed_w = tf.random.experimental.stateless_fold_in(epoch_seed, window_index + 1)
                order = tf.argsort(tf.random.stateless_uniform(tf.shape(window), seed_w))
                return tf.gather(window, order)

            return rotated.batch(buffer).enumerate().map(permute).unbatch()

        position = tf.cast(position, tf.int64)
        return tf.data.Dataset.counter(position // count).flat_map(epoch).skip(position % count)


def _taking(classes: RecordClasses, shape_of: Callable):
    """`step(positions [C], episode) -> (positions after it, (episode, classes [W], skip [W],
    take [W]))`: an episode takes `take[j] = support + queries` records of class
    `classes[j]` from its stream; a take that would run past the end of the class's epoch
    first skips the rest of the epoch, so no episode holds one record twice."""
    counts = tf.constant(classes.class_counts, tf.int64)

    def step(positions, episode):
        chosen, support, queries = shape_of(episode)
        take = tf.cast(support + queries, tf.int64)
        at = tf.gather(positions, chosen)
        size = tf.gather(counts, chosen)
        offset = at % size
        skip = tf.where((offset > 0) & (offset + take > size), size - offset, 0)
        used = take > 0  # (variable episodes pad `chosen` with class 0, taking nothing)
        positions = tf.tensor_scatter_nd_update(
            positions, tf.boolean_mask(chosen, used)[:, None],
            tf.boolean_mask(at + skip + take, used))
        return positions, (episode, chosen, skip, take)

    return step


def start_positions(classes: RecordClasses, shape_of: Callable, first_episode: int):
    """Where each class's stream stands after the episodes `0 .. first_episode - 1`:
    `[C]` int64 (see `_taking`)."""
    zeros = tf.zeros([classes.num_classes], tf.int64)
    if first_episode <= 0:
        return zeros
    step = _taking(classes, shape_of)
    return tf.data.Dataset.range(first_episode).reduce(zeros, lambda p, e: step(p, e)[0])


def _stream_examples(classes: RecordClasses, shape_of: Callable, episodes: tf.data.Dataset,
                     positions, seed: int, keep: Callable) -> tf.data.Dataset:
    """`(episode, stored examples [T, ...])` for each episode of `episodes` that `keep`
    accepts: its examples class by class, `support + queries` of class `classes[j]` where
    `(classes, support, queries) = shape_of(episode)`. Every episode's records are read (so
    the class streams advance as in the single-process stream); only kept ones decode."""
    def picks_of(episode, chosen, skip, take):
        block = skip + take
        picks = tf.repeat(chosen, block)
        within = tf.range(tf.reduce_sum(block)) - tf.repeat(tf.cumsum(block, exclusive=True),
                                                             block)
        used = (within >= tf.repeat(skip, block)) & keep(episode)
        return tf.data.Dataset.from_tensor_slices(
            (picks, tf.fill(tf.shape(picks), episode), used))

    taken = episodes.scan(positions, _taking(classes, shape_of))
    picks = taken.flat_map(picks_of)
    streams = [classes.class_stream(c, positions[c], seed) for c in range(classes.num_classes)]
    records = tf.data.Dataset.choose_from_datasets(streams, picks.map(lambda c, e, u: c),
                                                   stop_on_empty_dataset=False)
    kept = tf.data.Dataset.zip((records, picks)).filter(lambda record, pick: pick[2])

    def size_of(episode):
        _, support, queries = shape_of(episode)
        return tf.reduce_sum(tf.cast(support + queries, tf.int64))

    # An episode's records are consecutive and exactly size_of(e) many, so each window
    # fills, and is emitted, in stream order; each is then decoded as one batch.
    grouped = kept.group_by_window(
        key_func=lambda record, pick: pick[1],
        reduce_func=lambda episode, window: tf.data.Dataset.zip(
            (tf.data.Dataset.from_tensors(episode),
             window.map(lambda record, pick: record).batch(size_of(episode)))),
        window_size_func=size_of)
    return grouped.map(lambda episode, serialized: (episode, classes.decode_batch(serialized)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ---------------------------------------------------------------------- episode shapes
def _per_source(classes: RecordClasses, shape_in_source: Callable):
    """`shape_of(seed) -> (classes [W] int64, support [W] int32, queries [W] int32)`: the
    episode's source drawn by `source_weights`, then `shape_in_source(seed, that source's
    classes)` (a `RecordClasses`; class indices within it), mapped to the split's indices."""
    sources = sorted(set(int(s) for s in classes.class_sources))
    members = [np.flatnonzero(classes.class_sources == s) for s in sources]
    logits = tf.math.log(tf.constant([[classes.source_weights[s] for s in sources]], tf.float32))

    def shape_of(seed):
        source_seed, class_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

        def branch(index):
            def draw():
                chosen, support, queries = shape_in_source(class_seed, classes.select(index))
                return tf.gather(tf.constant(index, tf.int64), chosen), support, queries
            return draw

        if len(sources) == 1:
            return branch(members[0])()
        which = tf.random.stateless_categorical(logits, 1, source_seed, dtype=tf.int32)[0, 0]
        return tf.switch_case(which, [branch(index) for index in members])

    return shape_of


def fixed_shape(ways: int, shots: int, queries: int, grouping: str = "any") -> Callable:
    """N classes uniformly without replacement (in random order; with `grouping="within"`,
    of one group: `choose_classes`), K + Q examples of each."""
    def shape(seed, source_classes):
        within = eligible_groups(source_classes, ways) if grouping == "within" else None
        chosen = choose_classes(seed, source_classes.num_classes, ways, within)
        return (chosen, tf.fill([ways], tf.constant(shots, tf.int32)),
                tf.fill([ways], tf.constant(queries, tf.int32)))
    return shape


def variable_shape(spec) -> Callable:
    """Meta-Dataset's variable ways and shots (`tfmeta.data.variable_episodes`)."""
    from tfmeta.data import variable_episodes

    def shape(seed, source_classes):
        counts = tf.constant(source_classes.class_counts, tf.int64)
        drawn = variable_episodes.sample_episode_shape(seed, counts, spec)
        return (tf.cast(drawn["classes"], tf.int64), tf.cast(drawn["support"], tf.int32),
                tf.cast(drawn["queries"], tf.int32))
    return shape


def _check_sources(classes: RecordClasses, ways: int, needed: int, split: str,
                   grouping: str = "any") -> None:
    for source in sorted(set(int(s) for s in classes.class_sources)):
        members = np.flatnonzero(classes.class_sources == source)
        if grouping == "within":  # an episode's group is one of its source's
            eligible_groups(classes.select(members), ways, split)
        counts = classes.class_counts[members]
        if len(counts) < ways:
            raise ValueError(f"ways={ways} is more than the {len(counts)} classes of records "
                             f"source {source} in the {split!r} split (an episode draws its "
                             f"classes from one source); use ways <= {len(counts)}.")
        if needed and counts.min() < needed:
            raise ValueError(f"shots + queries = {needed} is more than the {counts.min()} "
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


def stream_episodes(classes: RecordClasses, ways, shots, queries, meta_batch_size=None,
                    seed=0, num_episodes=None, split="", augment=None, start_step=0, worker=0,
                    workers=1, sampler="fixed", variable=None,
                    grouping="any") -> tf.data.Dataset:
    """`episode_dataset` for a split held as records (its arguments; see the module
    docstring for how the stream is made)."""
    batch = meta_batch_size or 1
    episode_numbers(meta_batch_size, start_step, num_episodes, worker, workers)  # validates
    check_grouping(grouping, sampler)
    share = batch // workers
    if sampler == "variable":
        from tfmeta.data import variable_episodes

        variable = variable or variable_episodes.VariableEpisodes()
        classes = variable_episodes.check_variable_spec(classes, variable, split)
        _check_sources(classes, variable.min_ways, 2, split)
        in_source = variable_shape(variable)
    else:
        classes = check_episode_spec(classes, ways, shots, queries, split, grouping)
        _check_sources(classes, ways, shots + queries, split, grouping)
        in_source = fixed_shape(ways, shots, queries, grouping)
    shape_from_seed = _per_source(classes, in_source)
    base_seed = tf.constant([seed, 0], tf.int64)

    def episode_seed(episode):
        return tf.random.experimental.stateless_fold_in(base_seed, episode)

    def shape_of(episode):
        return shape_from_seed(tf.random.experimental.stateless_split(episode_seed(episode),
                                                                      2)[0])

    first = int(start_step) * batch
    positions = start_positions(classes, shape_of, first)
    episodes = (tf.data.Dataset.range(first, first + num_episodes) if num_episodes is not None
                else tf.data.Dataset.counter(first))
    examples = _stream_examples(classes, shape_of, episodes, positions, seed,
                                lambda e: (e % batch) // share == worker)
    sources = tf.constant(classes.class_sources, tf.int32)
    example_shape = classes.example_shape

    def assemble(episode, stored):
        chosen, support, query_counts = shape_of(episode)
        inputs = _inputs(classes, stored, tf.gather(sources, chosen[0]))
        if augment is not None:
            inputs = augment(inputs, tf.random.experimental.stateless_fold_in(
                episode_seed(episode), 2))
        if sampler == "variable":
            return variable_episodes.arrange_padded(
                inputs, {"classes": chosen, "support": support, "queries": query_counts},
                variable)
        return split_episode(inputs, ways, shots, queries, example_shape)

    ds = examples.map(assemble, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if meta_batch_size:
        ds = ds.batch(share, drop_remainder=True)
    return unsharded(ds)


def stream_examples(classes: RecordClasses, batch_size: int, seed: int = 0, start_step: int = 0,
                    worker: int = 0, workers: int = 1) -> tf.data.Dataset:
    """Endless `{"images", "labels"}` batches (supervised pre-training on records): example
    `i` of batch `s` is the next record of a class drawn in proportion to the class sizes,
    a pure function of (seed, s * batch_size + i); labels are class indices in the split.
    Model inputs (transform applied), not augmented."""
    logits = tf.math.log(tf.constant([classes.class_counts], tf.float32))
    base_seed = tf.constant([seed, 9], tf.int64)
    share = batch_size // workers

    def shape_of(example):
        seed_e = tf.random.experimental.stateless_fold_in(base_seed, example)
        chosen = tf.random.stateless_categorical(logits, 1, seed_e, dtype=tf.int64)[0]
        return chosen, tf.ones([1], tf.int32), tf.zeros([1], tf.int32)

    first = int(start_step) * batch_size
    positions = start_positions(classes, shape_of, first)
    examples = _stream_examples(classes, shape_of, tf.data.Dataset.counter(first), positions,
                                seed, lambda e: (e % batch_size) // share == worker)
    sources = tf.constant(classes.class_sources, tf.int32)

    def labelled(example, stored):
        label = shape_of(example)[0][0]
        inputs = _inputs(classes, stored, tf.gather(sources, label))[0]
        return {"images": inputs, "labels": tf.cast(label, tf.int32)}

    return unsharded(examples.map(labelled, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True).batch(share, drop_remainder=True))


# ------------------------------------------------------------------------------ loading
def load(data_dir: str | None = None, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
         source_weights=None, normalize: bool = True) -> FewShotDataset:
    """Records written by `convert` (bin/convert.py), from one folder or several
    (`"A,B"`: each episode from one of them, chosen by `source_weights`, default uniform).

    Args:
      data_dir: the records folder(s), comma-separated.
      shuffle_buffer: records each class stream shuffles over (memory: classes x buffer x
        record size).
      source_weights: one weight per folder (None: equal).
      normalize: False leaves pixels in [0, 1] (Reptile-GAN), else the spec's normalization.
    """
    if not data_dir:
        raise ValueError("--dataset=records needs --data_dir=<a folder written by "
                         "bin/convert.py> (or several, comma-separated).")
    if int(shuffle_buffer) != shuffle_buffer or shuffle_buffer < 1:
        raise ValueError(f"data.shuffle_buffer must be a positive integer; got "
                         f"{shuffle_buffer!r}.")
    folders = [d.strip() if is_url(d.strip()) else os.path.abspath(os.path.expanduser(d.strip()))
               for d in str(data_dir).split(",") if d.strip()]
    specs = [read_spec(folder) for folder in folders]
    weights = [1.0] * len(folders) if source_weights is None else list(source_weights)
    if len(weights) != len(folders) or any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"data.source_weights={source_weights!r} must be one positive weight "
                         f"per records folder ({len(folders)}: {', '.join(folders)}).")
    first = specs[0]
    for folder, spec in zip(folders[1:], specs[1:]):
        for key in ("encoding", "stored_shape", "stored_dtype"):
            if spec[key] != first[key]:
                raise ValueError(f"Records in {folder} have {key} {spec[key]!r} but those in "
                                 f"{folders[0]} {first[key]!r}; convert every source with the "
                                 "same --set=data.image_size and data.channels.")
    transforms = tuple(_transform(spec, normalize) for spec in specs)

    def qualified(name, folder):  # several sources: each one's classes and groups apart
        return name if len(folders) == 1 else f"{os.path.basename(folder)}/{name}"

    splits = {}
    for split in SPLITS + tuple(sorted({e["split"] for s in specs for e in s["classes"]}
                                       - set(SPLITS))):
        entries = [(source, folder, e) for source, (folder, spec) in enumerate(zip(folders, specs))
                   for e in spec["classes"] if e["split"] == split]
        if not entries:
            continue
        names = tuple(qualified(e["name"], folder) for _, folder, e in entries)
        grouped = all("group" in e for _, _, e in entries)
        splits[split] = RecordClasses(
            files=tuple(folder.rstrip("/") + "/" + e["file"] for _, folder, e in entries),
            class_counts=np.array([e["count"] for _, _, e in entries], np.int64),
            class_names=names,
            class_sources=np.array([source for source, _, _ in entries], np.int64),
            source_weights=tuple(float(w) for w in weights), encoding=first["encoding"],
            stored_shape=tuple(first["stored_shape"]), stored_dtype=first["stored_dtype"],
            transforms=transforms, shuffle_buffer=int(shuffle_buffer),
            class_groups=tuple(qualified(e["group"], folder) for _, folder, e in entries)
            if grouped else None)
    shapes = {split: classes.example_shape for split, classes in splits.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"The records' sources give model inputs of different shapes {shapes}; "
                         "convert them with the same image size.")
    if len({json.dumps(s["transform"]) for s in specs}) > 1:
        logging.warning("The records folders normalize differently; each episode uses its "
                        "source's normalization, and exports use the first folder's (%s).",
                        folders[0])
    stored_shape = tuple(first["stored_shape"])
    preprocess = transforms[0] or (lambda x: tf.convert_to_tensor(x))
    value_range = (0.0, 1.0) if first["transform"] is not None else (
        tuple(first["value_range"]) if first["value_range"] and
        list(first["raw_shape"]) == list(stored_shape) else None)
    # (Remote folders are not fingerprinted: their files are not local to stat.)
    source_files = [os.path.join(f, SPEC_FILE) for f in folders if not is_url(f)] + [
        os.path.join(f, e["file"]) for f, s in zip(folders, specs) for e in s["classes"]
        if not is_url(f)]
    described = ", ".join(f"{s} {c.num_classes} classes / {int(c.class_counts.sum())} records"
                          for s, c in splits.items())
    return FewShotDataset(
        "records", splits, stored_shape, preprocess,
        f"Records of {' + '.join(s['name'] for s in specs)} from {', '.join(folders)} "
        f"(streamed, shuffle buffer {shuffle_buffer}): {described}.",
        value_range=value_range, data_dir=",".join(folders), source_files=tuple(source_files),
        decoding=first["decoding"] if first["transform"] is not None else None)

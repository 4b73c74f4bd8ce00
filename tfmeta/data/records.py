"""Per-class TFRecord files: datasets larger than memory, streamed as episodes.

The layout (Meta-Dataset's, Triantafillou et al. 2020): one TFRecord file per class, each
record a `tf.train.Example` with the encoded example (`image`: PNG for uint8 images,
`tf.io.serialize_tensor` for anything else, so the round trip is exact) and its class
(`label`), serialized deterministically (a conversion is byte for byte reproducible); beside
each file its index (`<file>.index`: offset, length and CRC-32 of every record); and
`dataset_spec.json`: the classes (name, split, count, file, and the group where the
dataset's classes have groups: `ClassImages.class_groups`), the stored example's shape and
dtype, how stored examples become model inputs (`transform`), and the source's fingerprint.
`convert` writes it from any `FewShotDataset`; `load` reads it back
(`--dataset=records --data_dir=DIR[,DIR2,...]`).

Untrusted input. Everything read from a records folder is checked at the boundary
(`check_spec`, `read_index`, `RecordReader`): each spec field has its type, class files stay
inside the folder after resolving links, each index matches its file's size and the spec's
count, and each record read matches its CRC. A failure is one line naming the file.

Streaming. Each class is a stream of its records, permuted within windows
(`shuffle_buffer`), epoch after epoch; an episode takes the next examples of the classes
it chooses. Which classes (and, for variable episodes, how many examples of each) is a pure
function of (seed, episode number), so the whole stream is too:

    shape(e) = classes and counts of episode e            # from (seed, e) only
    position(c, e) = sum of counts of class c over episodes < e
    episode e = next counts[c] records of class c's stream, from position(c, e)
    class c's stream = epoch k: shuffle(records of c, seed(c, k)), k = 0, 1, ...

A run resumed at step s recomputes the positions at episode s * B (from the shapes alone,
reading nothing), so it continues exactly as a run that never stopped. Worker w of W
computes the whole stream's positions but reads only its share of each meta-batch, so the
workers' episodes are disjoint and together the single-process stream. The stream holds
record numbers, not records: an episode's records are read on demand by their index, so
memory is the index (24 bytes a record) and the episodes in flight, whatever the number of
classes, the buffer or the record size (`bin/benchmark.py --cases=records_rss_by_classes`).

Several sources (`--data_dir=A,B`): every episode draws its classes from one source, chosen
uniformly (as Meta-Dataset trains) or by `source_weights`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import logging
import os
import zlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfmeta import files
from tfmeta.data.base import FewShotDataset
from tfmeta.data.episodes import (
    MIN_CLASSES,
    check_episode_spec,
    check_grouping,
    choose_classes,
    eligible_groups,
    episode_numbers,
    split_episode,
    unsharded,
)
from tfmeta.errors import PIPELINE_END, PIPELINE_MARK, UserError, in_pipeline, pipeline_message

SPEC_FILE = "dataset_spec.json"
FORMAT = "tfmeta-records"
VERSION = 2  # 2: each record file has an index (`write_records`)
INDEX_SUFFIX = ".index"
RECORD_HEADER, RECORD_FRAMING = 12, 16  # a TFRecord: length, its CRC, the data, its CRC
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
        raise UserError(f"Cannot describe the preprocessing of examples of shape "
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
        raise UserError("This dataset's preprocessing is not a resize and a per-channel "
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


def record_bytes(example: np.ndarray, label: int, encoding: str) -> bytes:
    """One record: a `tf.train.Example` of the encoded example and its class, serialized
    deterministically (a protobuf map's order otherwise varies from process to process, and
    two conversions of the same data would differ in bytes)."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_encode(example,
                                                                            encoding)])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def index_path(file: str) -> str:
    """The index of a class's record file: `<file>.index`."""
    return file + INDEX_SUFFIX


def write_records(path: str, serialized) -> int:
    """Writes the records `serialized` (bytes) as a TFRecord file at `path` and beside it
    their index (`index_path`): a `.npy` of int64 rows (offset of the record's data in the
    file, its length, its CRC-32), with which a reader reads any record on demand and checks
    it. Both are written to temporary names and renamed, the index first, so a record file
    that exists is complete and indexed. Returns the number of records."""
    rows, offset = [], 0
    with files.atomic_path(path, ".partial") as partial:
        with tf.io.TFRecordWriter(partial) as writer:
            for data in serialized:
                writer.write(data)
                rows.append((offset + RECORD_HEADER, len(data), zlib.crc32(data)))
                offset += len(data) + RECORD_FRAMING
        with files.atomic_path(index_path(path), ".partial") as partial_index, \
                open(partial_index, "wb") as f:
            np.save(f, np.array(rows, np.int64).reshape(-1, 3), allow_pickle=False)
    return len(rows)


def _write_class(classes, entry: dict, label: int, encoding: str, path: str, seed: int):
    """One class's file, its records in a seeded random order (so that a shuffle buffer
    smaller than the class still mixes the whole class over epochs)."""
    examples = classes.stored_examples(entry["index"])
    order = np.random.RandomState([seed, label]).permutation(len(examples))
    write_records(path, (record_bytes(examples[i], label, encoding) for i in order))


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
            raise UserError(f"Split {split!r} stores {other.shape[1:]} {other.dtype} examples "
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
                raise UserError(f"{output_dir} already holds records of other data (or other "
                                "options); convert into an empty folder.")
            if existing == final:
                return spec
    if not os.path.exists(partial) and any(not name.startswith(".")
                                           for name in os.listdir(output_dir)):
        raise UserError(f"--output_dir={output_dir} is not empty; convert into a new folder.")
    try:
        with files.atomic_write(partial) as f:
            json.dump(spec, f, indent=1)
    except OSError as error:
        raise OSError(f"Cannot write {partial} ({error.strerror or error}); free space in "
                      f"{output_dir} (or fix the cause) and rerun bin/convert.py.") from None
    for split in {entry["split"] for entry in plan}:
        os.makedirs(os.path.join(output_dir, split), exist_ok=True)
    todo = [(label, entry) for label, entry in enumerate(plan)
            if not os.path.exists(os.path.join(output_dir, entry["file"]))]
    done = len(plan) - len(todo)
    try:
        with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            jobs = [pool.submit(_write_class, dataset.splits[entry["split"]], entry, label,
                                encoding, os.path.join(output_dir, entry["file"]), seed)
                    for label, entry in todo]
            for job in concurrent.futures.as_completed(jobs):
                job.result()
                done += 1
                if progress is not None:
                    progress(done, len(plan))
        os.replace(partial, final)
    except (OSError, tf.errors.OpError) as error:  # a full disk, a quota, a lost mount
        reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise OSError(f"Writing records to {output_dir} failed after {done} of {len(plan)} "
                      f"classes ({reason.splitlines()[0] if reason else type(error).__name__}); "
                      "free space there (or fix the cause) and rerun the same bin/convert.py "
                      "command: it keeps the classes written and writes the rest.") from None
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
        raise UserError(f"{path} is not readable JSON ({error}); convert the data again.") \
            from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise UserError(f"{path} is not a {FORMAT} spec; convert the data with bin/convert.py.")
    if spec.get("version") != VERSION:
        raise UserError(f"{path} is {FORMAT} version {spec.get('version')!r}, not {VERSION} "
                        "(version 2 indexes every record file, to read records on demand and "
                        "check them); convert the data again with this tfmeta's "
                        "bin/convert.py.")
    check_spec(spec, path, data_dir)
    return spec


def _spec_error(path: str, what: str) -> UserError:
    return UserError(f"{path}: {what}; the spec is damaged or was edited: convert the data "
                     "again with bin/convert.py.")


def _positive_ints(value, length=None) -> bool:
    return isinstance(value, list) and bool(value) and (length is None or len(value) ==
                                                        length) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)


def _inside(data_dir: str, file: str) -> bool:
    """Whether relative `file` stays inside `data_dir`: no absolute path, no `..`, and, on a
    local disk, inside it after resolving links."""
    if not file or file.startswith(("/", "\\")) or "\\" in file or ":" in file or any(
            part in ("", ".", "..") for part in file.split("/")):
        return False
    if is_url(data_dir):
        return True
    root = os.path.realpath(data_dir)
    return os.path.realpath(os.path.join(data_dir, file)).startswith(root + os.sep)


def check_spec(spec: dict, path: str, data_dir: str) -> None:
    """A spec read from disk is untrusted input: every field `load` uses has its type, every
    class file stays inside the folder (after resolving links) and exists, no two classes
    share a file; a ValueError naming the spec and the entry otherwise."""
    encoding = spec.get("encoding")
    if encoding not in ("png", "tensor"):
        raise _spec_error(path, f"encoding {encoding!r} is not 'png' or 'tensor'")
    if not _positive_ints(spec.get("stored_shape")):
        raise _spec_error(path, f"stored_shape {spec.get('stored_shape')!r} is not a list of "
                                "positive integers")
    try:
        dtype = np.dtype(spec.get("stored_dtype"))
    except TypeError:
        dtype = None
    if dtype is None or not isinstance(spec.get("stored_dtype"), str) or dtype.kind not in "uif":
        raise _spec_error(path, f"stored_dtype {spec.get('stored_dtype')!r} is not a numeric "
                                "dtype")
    if encoding == "png" and (dtype != np.uint8 or len(spec["stored_shape"]) != 3 or
                              spec["stored_shape"][-1] not in (1, 3)):
        raise _spec_error(path, f"PNG records hold uint8 [H, W, 1 or 3] images, not "
                                f"{spec['stored_dtype']} {spec['stored_shape']}")
    transform = spec.get("transform")
    channels = spec["stored_shape"][-1]
    if transform is not None and not (
            isinstance(transform, dict) and _positive_ints(transform.get("size"), 2) and all(
                isinstance(transform.get(k), list) and len(transform[k]) == channels and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                    for v in transform[k]) for k in ("scale", "offset"))):
        raise _spec_error(path, f"transform {transform!r} is not null or {{size: [h, w], "
                                f"scale: [{channels} numbers], offset: [{channels} numbers]}}")
    classes = spec.get("classes")
    if not isinstance(classes, list) or not classes:
        raise _spec_error(path, "'classes' is not a non-empty list")
    seen = {}
    for i, entry in enumerate(classes):
        where = f"class entry {i}"
        if not isinstance(entry, dict):
            raise _spec_error(path, f"{where} is not an object")
        for key in ("name", "split", "file"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise _spec_error(path, f"{where} has no {key!r} text")
        count = entry.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise _spec_error(path, f"{where} ({entry['name']!r}) has count {count!r}, not a "
                                    "positive integer")
        if "group" in entry and not isinstance(entry["group"], str):
            raise _spec_error(path, f"{where} ({entry['name']!r}) has a group that is not text")
        if not _inside(data_dir, entry["file"]):
            raise _spec_error(path, f"{where} ({entry['name']!r}) names the file "
                                    f"{entry['file']!r}, which is not a relative path inside "
                                    f"{data_dir}")
        if entry["file"] in seen:
            raise _spec_error(path, f"{where} ({entry['name']!r}) and class entry "
                                    f"{seen[entry['file']]} name the same file "
                                    f"{entry['file']!r}")
        seen[entry["file"]] = i
        file = data_dir.rstrip("/") + "/" + entry["file"]
        if not is_url(data_dir) and not os.path.isfile(file):
            raise FileNotFoundError(f"{file} (class {entry['name']!r}) is missing; copy the "
                                    "whole records folder, or convert again.")


# ------------------------------------------------------------------------------ index
def read_index(file: str, count: int) -> np.ndarray:
    """The index of record file `file` (`write_records`), `[count, 3]` int64 (offset,
    length, CRC-32 of each record's data), checked against the file: as many records as the
    spec counts, each where the last one ends, the last ending where the file does. A
    truncated or extended file, a count that is not the file's, or a damaged index is a
    ValueError naming the file."""
    path = index_path(file)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            index = np.load(io.BytesIO(f.read()), allow_pickle=False)
        size = tf.io.gfile.stat(file).length
    except (OSError, ValueError, EOFError, tf.errors.OpError) as error:
        reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise UserError(f"Cannot read the index {path} ({reason.splitlines()[0]}); copy the "
                        "whole records folder, or convert the data again.") from None
    if index.dtype != np.int64 or index.ndim != 2 or index.shape[1] != 3:
        raise UserError(f"{path} is not a records index (int64 rows of offset, length, "
                        "CRC); convert the data again.")
    if len(index) != count:
        raise UserError(f"The spec counts {count} records of {file} but the file holds "
                        f"{len(index)}; the spec was changed: convert the data again.")
    lengths = index[:, 1]
    ends = np.cumsum(lengths + RECORD_FRAMING)
    starts = RECORD_HEADER + np.concatenate([[0], ends[:-1]])
    if (lengths < 0).any() or not np.array_equal(index[:, 0], starts) or \
            (index[:, 2] < 0).any() or (index[:, 2] >= 2 ** 32).any():
        raise UserError(f"{path} is damaged (its offsets do not follow each other); convert "
                        "the data again.")
    if size != ends[-1]:
        raise UserError(f"{file} holds {size} bytes but its {count} records take "
                        f"{int(ends[-1])}: it was {'truncated' if size < ends[-1] else 'changed'}"
                        " since conversion; copy it again, or convert the data again.")
    return index


class RecordReader:
    """Reads records of a split's files by (class, record number), checking each against
    the CRC-32 written at conversion: memory is the index (24 bytes a record), never the
    records. In a pipeline (`read`), a corrupt record stops it with a message that
    `tfmeta.cli` prints as one line."""

    def __init__(self, files: tuple, indexes: tuple):
        self.files, self.indexes = files, indexes

    def _read(self, file: str, rows: np.ndarray) -> list:
        if is_url(file):
            with tf.io.gfile.GFile(file, "rb") as f:
                out = []
                for offset, length, _ in rows:
                    f.seek(int(offset))
                    out.append(f.read(int(length)))
                return out
        fd = os.open(file, os.O_RDONLY)
        try:
            return [os.pread(fd, int(length), int(offset)) for offset, length, _ in rows]
        finally:
            os.close(fd)

    def __call__(self, classes: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """The records (bytes) `numbers` of classes `classes`; a ValueError naming the file
        when one is not what was written."""
        out = np.empty(len(classes), object)
        for c in np.unique(classes):
            at = np.flatnonzero(classes == c)
            rows = self.indexes[c][numbers[at]]
            for k, data, (_, length, crc) in zip(at, self._read(self.files[c], rows), rows):
                if len(data) != length or zlib.crc32(data) != crc:
                    raise UserError(
                        f"Record {int(numbers[k])} of {self.files[c]} is corrupt (it differs "
                        "from what was written at conversion: a damaged disk or copy); copy "
                        "the file again, or convert the data again.")
                out[k] = data
        return out

    def _in_pipeline(self, classes, numbers):
        try:
            return self(classes, numbers), np.bytes_(b"")
        except (ValueError, OSError) as error:  # (raised here, TF would log its traceback)
            return np.full(len(classes), b"", object), np.bytes_(
                pipeline_message(" ".join(str(error).split())).encode())

    def read(self, classes, numbers):
        """`tf.string [n]`: the records `numbers` of classes `classes` (int64 `[n]`)."""
        records, problem = tf.numpy_function(self._in_pipeline, [classes, numbers],
                                             [tf.string, tf.string], stateful=False)
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(problem, ""), [problem])]):
            records = tf.identity(records)
        records.set_shape([None])
        return records


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
      indexes: per class, its file's index (`read_index`).
    """

    streamed = True  # episodes are streamed (`stream_episodes`), not sampled from memory

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
    indexes: tuple = ()

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
            indexes=tuple(self.indexes[i] for i in index),
            class_groups=None if self.class_groups is None else tuple(
                self.class_groups[i] for i in index))

    @property
    def reader(self) -> RecordReader:
        return RecordReader(self.files, self.indexes)

    def decode_batch(self, serialized, classes=None):
        """Serialized records `[n]` -> stored examples `[n, *stored_shape]`: one parse op
        for the batch, then the images one by one (PNG decoding is per image). With the
        records' `classes` `[n]`, an example of another shape than the spec's is an error
        naming its file (`tfmeta.errors.pipeline_message`)."""
        encoded = tf.io.parse_example(serialized, {
            "image": tf.io.FixedLenFeature([], tf.string)})["image"]
        if self.encoding == "png":
            def one(data):
                return tf.io.decode_png(data, channels=self.stored_shape[-1])
        else:
            def one(data):
                return tf.io.parse_tensor(data, tf.as_dtype(self.stored_dtype))
        files = tf.constant(self.files)
        expected = tf.constant(self.stored_shape, tf.int32)

        def checked(item):
            data, c = item
            example = one(data)
            if classes is None:
                return example
            shape, rank = tf.shape(example, out_type=tf.int32), len(self.stored_shape)
            fits = tf.equal(tf.size(shape), rank) & tf.reduce_all(
                tf.equal(tf.pad(shape, [[0, rank]])[:rank], expected))
            message = tf.strings.join([
                PIPELINE_MARK, "A record of ", tf.gather(files, c), " holds an example of shape ",
                tf.strings.reduce_join(tf.strings.as_string(shape), separator="x"),
                f", not the spec's stored_shape {'x'.join(map(str, self.stored_shape))}; the "
                "spec or the file was changed: convert the data again.", PIPELINE_END])
            with tf.control_dependencies([tf.debugging.Assert(fits, [message])]):
                return tf.identity(example)

        examples = tf.map_fn(checked, (encoded, tf.zeros_like(encoded, tf.int64)
                                       if classes is None else tf.cast(classes, tf.int64)),
                             fn_output_signature=tf.TensorSpec(None, tf.as_dtype(
                                 self.stored_dtype)))
        return tf.ensure_shape(examples, [None, *self.stored_shape])

    def stored_examples(self, index: int) -> np.ndarray:
        """Class `index`'s records, decoded (one class is read into memory)."""
        count = int(self.class_counts[index])
        classes = np.full([count], index, np.int64)
        serialized = self.reader(classes, np.arange(count))
        return self.decode_batch(tf.constant(serialized.tolist(), tf.string),
                                 tf.constant(classes)).numpy()

    def inputs(self, stored, source: int = 0) -> np.ndarray:
        transform = self.transforms[source]
        if transform is None:
            return np.asarray(stored)
        return np.asarray(transform(tf.cast(stored, tf.float32) / 255.0))

    def class_examples(self, index: int) -> np.ndarray:
        """Class `index`'s examples as model inputs."""
        return self.inputs(self.stored_examples(index), int(self.class_sources[index]))

    def all_inputs(self):
        raise UserError("This split is streamed from records and is not held in memory; "
                        "write features from a dataset that fits in memory (or convert a "
                        "subset of its classes).")

    # ------------------------------------------------------------------ streams
    def record_numbers(self, classes, positions, seed: int):
        """Which record of its file (int64 `[n]`) is at position `positions[i]` of the
        stream of class `classes[i]`. Class c's stream is its file epoch after epoch; epoch
        k starts at a random record r(k) (wrapping around) and permutes each window of
        `shuffle_buffer` records:

            stream(c) = concat(order(k) for k = 0, 1, ...)
            order(k) = concat(permute(w) for w in windows(rotate(file, r(k)), buffer))

        statelessly seeded by (seed, c, k, window), so any position is computed without the
        ones before; the file itself is in a random order (`convert`), and the rotation moves
        the window boundaries every epoch. Only record numbers are permuted: the records are
        read on demand (`RecordReader`), so the buffer costs no memory."""
        counts = tf.constant(self.class_counts, tf.int64)
        buffer = tf.constant(self.shuffle_buffer, tf.int64)

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

        return tf.map_fn(one, (tf.cast(classes, tf.int64), tf.cast(positions, tf.int64)),
                         fn_output_signature=tf.int64)


def _taking(classes: RecordClasses, shape_of: Callable):
    """`step(positions [C], episode) -> (positions after it, (episode, classes [W], start
    [W], take [W]))`: an episode takes `take[j] = support + queries` records of class
    `classes[j]` from its stream, from position `start[j]`; a take that would run past the
    end of the class's epoch first skips the rest of the epoch, so no episode holds one
    record twice."""
    counts = tf.constant(classes.class_counts, tf.int64)

    def step(positions, episode):
        chosen, support, queries = shape_of(episode)
        take = tf.cast(support + queries, tf.int64)
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
    `(classes, support, queries) = shape_of(episode)`. Every episode advances the class
    streams (as in the single-process stream); only kept ones are read, on demand."""
    reader = classes.reader

    def read(episode, chosen, start, take):
        record_classes = tf.repeat(chosen, take)
        within = tf.range(tf.reduce_sum(take)) - tf.repeat(tf.cumsum(take, exclusive=True),
                                                           take)
        numbers = classes.record_numbers(record_classes, tf.repeat(start, take) + within, seed)
        return episode, classes.decode_batch(reader.read(record_classes, numbers),
                                             record_classes)

    taken = episodes.scan(positions, _taking(classes, shape_of))
    return taken.filter(lambda episode, *_: keep(episode)).map(
        read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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
def check_first_record(classes: RecordClasses) -> None:
    """Decodes the first record of the split's first class, so that records that are not
    what the spec says (another stored shape or dtype, not PNG) are a ValueError naming the
    file when they load, not an error of the pipeline later (which checks every record's
    CRC and shape too)."""
    first = np.zeros([1], np.int64)
    try:
        classes.decode_batch(tf.constant(classes.reader(first, first).tolist(), tf.string),
                             tf.constant(first)).numpy()
    except (tf.errors.OpError, ValueError) as error:
        message = in_pipeline(error)
        if message is None:
            reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
            message = (f"The first record of {classes.files[0]} does not decode as the spec's "
                       f"{classes.encoding} {classes.stored_dtype} "
                       f"{'x'.join(map(str, classes.stored_shape))} examples "
                       f"({reason.strip().splitlines()[0]}); convert the data again.")
        raise UserError(message) from None


def load(data_dir: str | None = None, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
         source_weights=None, normalize: bool = True) -> FewShotDataset:
    """Records written by `convert` (bin/convert.py), from one folder or several
    (`"A,B"`: each episode from one of them, chosen by `source_weights`, default uniform).

    Args:
      data_dir: the records folder(s), comma-separated.
      shuffle_buffer: records each class stream permutes together (their numbers only:
        records are read on demand, so memory does not grow with it).
      source_weights: one weight per folder (None: equal).
      normalize: False leaves pixels in [0, 1] (Reptile-GAN), else the spec's normalization.
    """
    if not data_dir:
        raise UserError("--dataset=records needs --data_dir=<a folder written by "
                        "bin/convert.py> (or several, comma-separated).")
    if int(shuffle_buffer) != shuffle_buffer or shuffle_buffer < 1:
        raise UserError(f"data.shuffle_buffer must be a positive integer; got "
                        f"{shuffle_buffer!r}.")
    folders = [d.strip() if is_url(d.strip()) else os.path.abspath(os.path.expanduser(d.strip()))
               for d in str(data_dir).split(",") if d.strip()]
    specs = [read_spec(folder) for folder in folders]
    weights = [1.0] * len(folders) if source_weights is None else list(source_weights)
    if len(weights) != len(folders) or any(not np.isfinite(w) or w <= 0 for w in weights):
        raise UserError(f"data.source_weights={source_weights!r} must be one positive weight "
                        f"per records folder ({len(folders)}: {', '.join(folders)}).")
    first = specs[0]
    for folder, spec in zip(folders[1:], specs[1:]):
        for key in ("encoding", "stored_shape", "stored_dtype"):
            if spec[key] != first[key]:
                raise UserError(f"Records in {folder} have {key} {spec[key]!r} but those in "
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
        paths = tuple(folder.rstrip("/") + "/" + e["file"] for _, folder, e in entries)
        splits[split] = RecordClasses(
            files=paths,
            indexes=tuple(read_index(path, e["count"]) for path, (_, _, e) in
                          zip(paths, entries)),
            class_counts=np.array([e["count"] for _, _, e in entries], np.int64),
            class_names=names,
            class_sources=np.array([source for source, _, _ in entries], np.int64),
            source_weights=tuple(float(w) for w in weights), encoding=first["encoding"],
            stored_shape=tuple(first["stored_shape"]), stored_dtype=first["stored_dtype"],
            transforms=transforms, shuffle_buffer=int(shuffle_buffer),
            class_groups=tuple(qualified(e["group"], folder) for _, folder, e in entries)
            if grouped else None)
    for classes in splits.values():
        check_first_record(classes)
    shapes = {split: classes.example_shape for split, classes in splits.items()}
    if len(set(shapes.values())) != 1:
        raise UserError(f"The records' sources give model inputs of different shapes {shapes}; "
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

"""Conversion: any `FewShotDataset` written as per-class records (bin/convert.py), in the
format of `tfmeta.data.record_format`, for `tfmeta.data.record_store` to read back.

A conversion is byte for byte reproducible (records serialized deterministically, each
class's order seeded) and resumable (every file written under a temporary name and renamed,
so a file that exists is complete).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import zlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfmeta import files
from tfmeta.data.base import FewShotDataset
from tfmeta.data.record_format import (
    FORMAT,
    RECORD_FRAMING,
    RECORD_HEADER,
    SPEC_FILE,
    SPLITS,
    VERSION,
    index_path,
)
from tfmeta.errors import UserError


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
            group = ({} if classes.class_groups is None else
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

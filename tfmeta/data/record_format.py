"""The records' on-disk format, and the boundary where reading it trusts nothing.

The layout (Meta-Dataset's, Triantafillou et al. 2020): one TFRecord file per class, each
record a `tf.train.Example` with the encoded example (`image`: PNG for uint8 images,
`tf.io.serialize_tensor` for anything else, so the round trip is exact) and its class
(`label`), serialized deterministically (a conversion is byte for byte reproducible); beside
each file its index (`<file>.index`: offset, length and CRC-32 of every record); and
`dataset_spec.json`: the classes (name, split, count, file, and the group where the
dataset's classes have groups: `ClassStore.class_groups`), the stored example's shape and
dtype, how stored examples become model inputs (`transform`), and the source's fingerprint.
`tfmeta.data.record_writer.convert` writes it from any `FewShotDataset`;
`tfmeta.data.record_store.load` reads it back (`--dataset=records --data_dir=DIR[,DIR2,...]`).

Untrusted input. Everything read from a records folder is checked at the boundary
(`check_spec`, `read_index`, `RecordReader`): each spec field has its type, class files stay
inside the folder after resolving links, each index matches its file's size and the spec's
count, and each record read matches its CRC. A failure is one line naming the file.
"""

from __future__ import annotations

import io
import json
import os
import zlib

import numpy as np
import tensorflow as tf

from tfmeta.errors import UserError, pipeline_message

SPEC_FILE = "dataset_spec.json"
FORMAT = "tfmeta-records"
VERSION = 2  # 2: each record file has an index (`record_writer.write_records`)
INDEX_SUFFIX = ".index"
RECORD_HEADER, RECORD_FRAMING = 12, 16  # a TFRecord: length, its CRC, the data, its CRC
DEFAULT_SHUFFLE_BUFFER = 256
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------ paths, spec
def index_path(file: str) -> str:
    """The index of a class's record file: `<file>.index`."""
    return file + INDEX_SUFFIX


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
    """A spec read from disk is untrusted input: every field `record_store.load` uses has its
    type, every class file stays inside the folder (after resolving links) and exists, no two
    classes share a file; a ValueError naming the spec and the entry otherwise."""
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
    """The index of record file `file` (`record_writer.write_records`), `[count, 3]` int64
    (offset, length, CRC-32 of each record's data), checked against the file: as many records
    as the spec counts, each where the last one ends, the last ending where the file does. A
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

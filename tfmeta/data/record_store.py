"""Records read as a `ClassStore`: `load` (`--dataset=records`) opens one records folder
or several (`--data_dir=A,B`, each a source) as a `FewShotDataset` whose splits are
`RecordClasses`, their examples read from the files on demand (the format, and the checks of
everything read: `tfmeta.data.record_format`; the episodes streamed from them:
`tfmeta.data.record_stream`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
import tensorflow as tf

from tfmeta.data.base import FewShotDataset
from tfmeta.data.classes import ClassStore
from tfmeta.data.record_format import (
    DEFAULT_SHUFFLE_BUFFER,
    SPEC_FILE,
    SPLITS,
    RecordReader,
    is_url,
    read_index,
    read_spec,
)
from tfmeta.errors import PIPELINE_END, PIPELINE_MARK, UserError, in_pipeline


def _transform(spec: dict, normalize: bool = True):
    """Stored examples -> model inputs, from the spec's `transform` (see
    `record_writer.describe_transform`); None when the stored examples are the inputs."""
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
class RecordClasses(ClassStore):
    """The classes of one split, held as files: the `ClassStore` whose examples are not in
    memory (`episode_dataset` streams its episodes: `tfmeta.data.record_stream`).

    Attributes:
      files: one TFRecord file per class.
      class_counts: int array `[C]`, records per class.
      class_names: `C` names.
      class_sources: int array `[C]`, the source (records folder) of each class.
      source_weights: one weight per source: the chance an episode draws from it.
      encoding: "png" or "tensor" (see `record_writer.stored_encoding`).
      stored_shape, stored_dtype: one decoded record.
      transforms: per source, stored examples -> model inputs (None: they are the inputs).
      shuffle_buffer: records each class stream shuffles over.
      drop_small_classes: as `ClassStore`'s.
      class_groups: `C` group names (records of a dataset whose classes have groups), or
        None; as `ClassStore`'s.
      indexes: per class, its file's index (`read_index`).
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
    indexes: tuple = ()

    @property
    def transform(self):
        """The first source's transform (what exports use; episodes use each source's,
        `transforms`)."""
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
    """Records written by `record_writer.convert` (bin/convert.py), from one folder or several
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

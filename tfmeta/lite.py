"""Serving a LiteRT (`.tflite`) or ONNX (`.onnx`) export without TensorFlow: numpy plus the
LiteRT interpreter (`ai-edge-litert`) or onnxruntime.

    from tfmeta import lite

    model = lite.load("protonet.tflite")          # or "protonet.onnx"
    logits = model.adapt_and_predict(support_images=s, support_labels=l,
                                     query_images=q)["logits"]     # [m, N]

`bin/export.py --format=litert|onnx` writes the file (`tfmeta.training.portable`); the
export's `tfmeta.json` travels inside it and `model.metadata` gives it back (raw image
shape, value range, most ways, decoding). The converted graph has no assertions, so this
module makes the SavedModel's request checks (`tfmeta.serving`, and
`EpisodicClassifier.episode_checks`) before it calls the interpreter, with the same
messages; a refused request raises `RequestError` (a ValueError).

Nothing here imports TensorFlow: this file, numpy and one runtime are what a device or a
server needs (`pip install ai-edge-litert` or `pip install onnxruntime`).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from tfmeta.errors import UserError

SIGNATURE = "adapt_and_predict"
METADATA_KEY = "tfmeta"
SUFFIXES = (".tflite", ".onnx")
# The most values (examples x pixels) one request may send: 1 GiB of float32. A larger
# request is refused in one line (send the queries in chunks) instead of exhausting memory.
MAX_REQUEST_VALUES = 1 << 28
IMAGE_DTYPES = (np.float32, np.float64)
LABEL_DTYPES = (np.int32, np.int64)
# What every export's metadata holds (`tfmeta.training.export.export_metadata`; a value may
# be null, except raw_shape's): what serving an export reads of it.
REQUIRED_METADATA = ("raw_shape", "max_ways", "decoding")


class RequestError(UserError):
    """A request the export refuses (what the SavedModel raises InvalidArgumentError for)."""


def is_portable(path: str) -> bool:
    """Whether `path` names a LiteRT or ONNX export (by its suffix)."""
    return str(path).lower().endswith(SUFFIXES)


def load(path: str, num_threads: int | None = None) -> PortableExport:
    """A `.tflite` or `.onnx` export, ready to serve (`num_threads`: the runtime's threads,
    default its own)."""
    if not is_portable(path):
        raise UserError(f"{path} is neither a .tflite nor an .onnx file; bin/export.py "
                        "--format=litert|onnx writes those.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No export file {os.path.abspath(path)}; write one with "
                                "bin/export.py --workdir=<run> --format=litert|onnx.")
    with open(path, "rb") as f:
        content = f.read()
    runner = (_litert_runner if path.lower().endswith(".tflite") else _onnx_runner)
    call, metadata = runner(content, path, num_threads)
    return PortableExport(path, call, metadata)


class PortableExport:
    """A loaded export: `adapt_and_predict` with the SavedModel's request checks."""

    def __init__(self, path, call, metadata):
        self.path, self._call, self.metadata = path, call, metadata
        self.raw_shape = tuple(int(d) for d in metadata["raw_shape"])
        self.value_range = metadata.get("value_range")
        self.max_ways = metadata.get("max_ways")

    def adapt_and_predict(self, support_images, support_labels, query_images) -> dict:
        """{"logits": float32 `[m, N]`} for one episode, N = max(support_labels) + 1, or a
        `RequestError` naming what is wrong with the request."""
        support, labels, queries = self.checked(support_images, support_labels, query_images)
        return {"logits": np.asarray(self._call(support, labels, queries), np.float32)}

    def checked(self, support_images, support_labels, query_images):
        """The request as float32 images and int32 labels, after the SavedModel's checks."""
        support, queries = _images(support_images, "support_images"), _images(
            query_images, "query_images")
        labels = np.asarray(support_labels)
        if labels.dtype not in LABEL_DTYPES:
            raise RequestError(f"support_labels must be int32 or int64; got {labels.dtype}")
        if support.size + queries.size > MAX_REQUEST_VALUES:
            raise RequestError(f"the request holds more than {MAX_REQUEST_VALUES} values (1 GiB "
                               "of float32); send the queries in smaller chunks")
        if labels.size and (labels.min() < -2 ** 31 or labels.max() >= 2 ** 31):
            raise RequestError("support_labels must be 0..N-1; got labels that do not even fit "
                               "in int32")
        for images, name in ((support, "support_images"), (queries, "query_images")):
            self._check_images(images, name)
        self._check_episode(support, labels.reshape(-1), queries)
        return support, labels.reshape(-1).astype(np.int32), queries

    def _check_images(self, images, name):
        shape = ", ".join(str(d) for d in self.raw_shape)
        if images.ndim != len(self.raw_shape) + 1 or images.shape[1:] != self.raw_shape:
            raise RequestError(f"{name} must be [n, {shape}], the dataset files' own size; got "
                               f"{list(images.shape)}")
        if not np.all(np.isfinite(images)):
            raise RequestError(f"{name} must be finite (no NaN or inf)")
        if self.value_range is not None and images.size:
            low, high = self.value_range
            if images.min() < low or images.max() > high:
                message = f"{name} must be float32 in [{low:g}, {high:g}]"
                if (low, high) == (0.0, 1.0):
                    message += " (divide uint8 images by 255)"
                raise RequestError(message)

    def _check_episode(self, support, labels, queries) -> None:
        if not len(support):
            raise RequestError("support_images is empty: an episode needs at least one support "
                               "example of each class")
        if not len(queries):
            raise RequestError("query_images is empty: send at least one query")
        if labels.shape != (len(support),):
            raise RequestError("support_labels must have one label per support image")
        if labels.min() < 0:
            raise RequestError("support_labels must be in 0..N-1")
        if labels.max() > labels.size:
            raise RequestError("support_labels must be 0..N-1 with N at most the number of "
                               "support examples")
        ways = int(labels.max()) + 1
        if np.any(np.bincount(labels, minlength=ways) == 0):
            raise RequestError("support_labels must cover every class 0..N-1 (N = max label + "
                               "1): some class below the largest label has no support "
                               "example; relabel the classes 0..N-1")
        if self.max_ways is not None and ways > self.max_ways:
            raise RequestError(f"This {self.metadata.get('learner')} learner has "
                               f"{self.max_ways} outputs, so it serves at most {self.max_ways} "
                               f"ways; support_labels must be in 0..{self.max_ways - 1}")


def _images(values, name) -> np.ndarray:
    """Images as float32, from float32 or float64 only (as the SavedModel takes them)."""
    images = np.asarray(values)
    if images.dtype not in IMAGE_DTYPES:
        raise RequestError(f"{name} must be float32 (or float64) in the export's value range; "
                           f"got {images.dtype}")
    return images.astype(np.float32, copy=False)


# ------------------------------------------------------------------- runtimes
def _litert_runner(content: bytes, path: str, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UserError(f"{path} needs the LiteRT interpreter: pip install ai-edge-litert "
                        '(or ".[litert]")') from None
    if content[4:8] != b"TFL3":  # the LiteRT flatbuffer's file identifier
        raise UserError(f"{path} is not a LiteRT model (no TFL3 identifier); write it with "
                        "bin/export.py --format=litert.")
    metadata = _metadata(tflite_metadata(content, METADATA_KEY), path)
    interpreter = Interpreter(model_content=content, num_threads=num_threads)
    if SIGNATURE not in interpreter.get_signature_list():
        raise UserError(f"{path} serves {sorted(interpreter.get_signature_list())}, not "
                        f"{SIGNATURE}; it was not written by bin/export.py.")
    runner = interpreter.get_signature_runner(SIGNATURE)

    def call(support, labels, queries):
        return runner(support_images=support, support_labels=labels,
                      query_images=queries)["logits"]

    return call, metadata


def _onnx_runner(content: bytes, path: str, num_threads):
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{path} needs onnxruntime: pip install onnxruntime (or "
                        '".[onnx]")') from None
    options = onnxruntime.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    try:
        session = onnxruntime.InferenceSession(content, options,
                                               providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own error types
        raise UserError(f"{path} is not a readable ONNX model "
                        f"({str(error).strip().splitlines()[0][:200]}).") from None
    metadata = _metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)

    def call(support, labels, queries):
        return session.run(["logits"], {"support_images": support, "support_labels": labels,
                                        "query_images": queries})[0]

    return call, metadata


def _metadata(text, path) -> dict:
    if text is None:
        raise UserError(f"{path} carries no tfmeta metadata; it was not written by "
                        "bin/export.py (rerun bin/export.py --format=litert|onnx).")
    return parse_metadata(text, f"The tfmeta metadata inside {path}",
                          "export the run again: bin/export.py --workdir=<the run> "
                          "--format=litert|onnx")


def parse_metadata(text, where: str, again: str) -> dict:
    """An export's metadata (`tfmeta.json`, `export_metadata`) from its JSON `text` (str or
    bytes), or a one-line ValueError that names `where` it was read and says how to export
    `again`: for text that is not JSON, JSON that is not an object, or an object without
    REQUIRED_METADATA (or with a value of the wrong kind there)."""
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where} is not valid JSON ({error.msg}, line {error.lineno} column "
                        f"{error.colno}): the export is damaged; {again}.") from None
    except ValueError:  # (bytes that are not UTF-8)
        raise UserError(f"{where} is not UTF-8 text: the export is damaged; {again}.") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{where} holds a JSON {type(metadata).__name__}, not the object of "
                        f"export metadata: the export is damaged; {again}.")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)} (an export's metadata has "
                        f"{', '.join(REQUIRED_METADATA)}): the export is damaged; {again}.")
    wrong = _wrong_metadata(metadata)
    if wrong:
        raise UserError(f"{where} has {wrong}: the export is damaged; {again}.")
    return metadata


def _wrong_metadata(metadata: dict) -> str | None:
    """What of REQUIRED_METADATA is of the wrong kind, or None."""
    def size(value):
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    shape, ways, decoding = (metadata[key] for key in REQUIRED_METADATA)
    if not isinstance(shape, list) or not all(size(d) for d in shape):
        return f"raw_shape={shape!r}, not a list of positive sizes"
    if ways is not None and not size(ways):
        return f"max_ways={ways!r}, not a positive number or null"
    if decoding is not None and not (isinstance(decoding, dict) and size(
            decoding.get("image_size")) and size(decoding.get("channels"))):
        return f"decoding={decoding!r}, not null or an object with image_size and channels"
    return None


def tflite_metadata(content: bytes, name: str) -> str | None:
    """The metadata entry `name` of a LiteRT model (its flatbuffer: `Model.metadata`, a list
    of (name, buffer index), and `Model.buffers`), read with the `flatbuffers` package that
    the interpreter depends on; None where there is none."""
    from flatbuffers import number_types, table
    from flatbuffers.encode import Get

    data = bytearray(content)
    try:
        model = table.Table(data, Get(number_types.UOffsetTFlags.packer_type, data, 0))

        def vector(tab, field):  # (start, length) of the vector in `field`, or None
            offset = tab.Offset(4 + 2 * field)
            return (tab.Vector(offset), tab.VectorLen(offset)) if offset else None

        def entry(start, i):
            return table.Table(data, model.Indirect(start + 4 * i))

        buffers, metadata = vector(model, 4), vector(model, 6)   # Model.buffers, .metadata
        for i in range(metadata[1] if metadata else 0):
            item = entry(metadata[0], i)
            key = item.String(item.Offset(4) + item.Pos).decode()
            if key != name:
                continue
            index = item.Get(number_types.Uint32Flags, item.Offset(6) + item.Pos)
            buffer = entry(buffers[0], index)
            start, length = vector(buffer, 0)                    # Buffer.data
            return bytes(data[start:start + length]).decode()
    except (IndexError, TypeError, UnicodeDecodeError, AttributeError, struct.error):
        return None  # (a damaged file: "carries no tfmeta metadata")
    return None

"""Exports that leave TensorFlow: LiteRT (`.tflite`) for devices and ONNX (`.onnx`), each
serving `adapt_and_predict(support_images, support_labels, query_images) -> logits` as the
SavedModel does, on raw images, for any number of support and query examples and of
classes (up to the learner's `max_ways`).

    python bin/export.py --workdir=runs/protonet --format=litert --output=protonet.tflite
    python bin/export.py --workdir=runs/protonet --format=onnx --output=protonet.onnx

What the graph holds, and why it converts and computes what the SavedModel does:

  preprocessing  the dataset's (resize, then per-channel scale and offset) as matrix
                 products (`tfmeta.linear_images.SeparableMap`): TensorFlow's `ResizeArea`
                 is no LiteRT op and ONNX's `Resize` computes area and antialiased
                 resizing differently. A frozen backbone's features
                 (`model.trainable=none`) follow it as in the SavedModel.
  adaptation     the learner's `portable_logits`: its own `query_logits` of one episode, or
                 (ANIL) its inner steps on the head with the gradient written out. A learner
                 whose adaptation needs gradient ops (backbone fine-tuning, MAML's inner
                 steps on the whole network) or TensorFlow-only ops is refused in one line
                 (`portable_refusal`) naming what converts.
  variables      frozen into constants first (a LiteRT model converted with its variables
                 as resources reads them uninitialised: NaN).
  request checks none in the graph (neither runtime has TensorFlow's assertions): the
                 runtime helper `tfmeta.lite` makes the SavedModel's checks before it calls.

Each file carries the export's `tfmeta.json` (`export_metadata`), in the LiteRT model's
metadata (name "tfmeta") or the ONNX model's `metadata_props` ("tfmeta"), so a client needs
the file alone. The converters are extras: `pip install ".[litert]"`, `".[onnx]"`.
"""

from __future__ import annotations

import json
import re

import tensorflow as tf

from tfmeta.errors import UserError
from tfmeta.linear_images import NotSeparable, SeparableMap
from tfmeta.training.features import FrozenFeatures

FORMATS = ("saved_model", "litert", "onnx")
SUFFIXES = {"saved_model": "", "litert": ".tflite", "onnx": ".onnx"}
METADATA_KEY = "tfmeta"
SIGNATURE = "adapt_and_predict"
INPUTS = ("support_images", "support_labels", "query_images")
OUTPUT = "logits"
ONNX_OPSET = 17


def portable_preprocess(dataset):
    """The dataset's preprocessing (raw images -> model inputs) as matrix products, then a
    frozen backbone where the run has one; raises a ValueError where the preprocessing is
    not a resize and a per-channel affine map."""
    preprocess, backbone = dataset.preprocess, None
    if isinstance(preprocess, FrozenFeatures):
        preprocess, backbone = preprocess.preprocess, preprocess.backbone
    if len(dataset.raw_shape) != 3:  # not images (embeddings): the function as it is
        mapped = preprocess
    else:
        try:
            mapped = SeparableMap.of(preprocess, dataset.raw_shape, dataset.value_range)
        except NotSeparable as error:
            raise UserError(f"The {dataset.name} dataset's preprocessing cannot be written "
                            f"as matrix products for LiteRT and ONNX: {error}. Use "
                            "--format=saved_model.") from None
    if backbone is None:
        return mapped
    return lambda images: tf.cast(backbone(mapped(images), training=False), tf.float32)


class PortableClassifier(tf.Module):
    """`adapt_and_predict` in ops LiteRT and ONNX share (see the module docstring)."""

    def __init__(self, learner, dataset):
        super().__init__(name="tfmeta_portable")
        self.learner = learner
        self._preprocess = portable_preprocess(dataset)
        images = tf.TensorSpec([None, *dataset.raw_shape], tf.float32)
        self.adapt_and_predict = tf.function(self._adapt_and_predict, input_signature=[
            images, tf.TensorSpec([None], tf.int32), images])

    def _adapt_and_predict(self, support_images, support_labels, query_images):
        logits = self.learner.portable_logits(self._preprocess(support_images), support_labels,
                                              self._preprocess(query_images))
        return {OUTPUT: tf.cast(logits, tf.float32)}

    def frozen(self):
        """The concrete `adapt_and_predict` with every variable a constant."""
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        return convert_variables_to_constants_v2(self.adapt_and_predict.get_concrete_function())


def convertible_algorithms() -> str:
    """The learners an export beyond TensorFlow takes, and with which settings."""
    from tfmeta.algorithms import ALGORITHMS, EpisodicClassifier, learner_class
    from tfmeta.algorithms.task_loop import TaskLoopLearner

    default = EpisodicClassifier.portable_refusal
    names = [n for n in sorted(ALGORITHMS) if issubclass(learner_class(n), EpisodicClassifier)
             and learner_class(n).portable_refusal is not default]
    steps = [n for n in names if issubclass(learner_class(n), TaskLoopLearner) and n != "anil"]
    others = [n for n in names if n not in steps]
    return (f"{', '.join(others)} (with learner.finetune_steps=0 where they fine-tune; anil "
            f"with its head the last Dense layer), and {', '.join(steps)} with "
            "learner.inner_steps_test=0")


def check_convertible(learner, algo: str, export_format: str) -> None:
    """Raises a one-line ValueError where `learner` cannot be exported as `export_format`."""
    reason = learner.portable_refusal()
    if reason is not None:
        raise UserError(
            f"A {algo} run cannot be exported to {export_format}: {reason}, which LiteRT and "
            f"ONNX cannot run. These convert: {convertible_algorithms()}; export this run "
            "with --set=learner.<option>=0 to drop those steps, or with "
            "--format=saved_model.")


def to_litert(module: PortableClassifier, metadata: dict) -> bytes:
    """The `.tflite` model: built-in ops only, signature `adapt_and_predict`, `metadata` in
    the model's metadata under "tfmeta"."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.frozen()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(converter.convert()))
    except Exception as error:  # the converter's own error types vary by version
        raise UserError(f"LiteRT could not convert this learner: {first_line(error)}") from None
    if not model.signatureDefs:  # (a module without variables of its own gets none)
        model.signatureDefs = [_signature(schema, model.subgraphs[0])]
    signature = model.signatureDefs[0]
    signature.signatureKey = SIGNATURE
    signature.outputs[0].name = OUTPUT  # a frozen function's output is "output_0"
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(metadata).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _signature(schema, subgraph):
    """A signature over the subgraph's inputs (named as `INPUTS`, which their tensor names
    hold) and its output."""

    def entry(index, name):
        tensor_map = schema.TensorMapT()
        tensor_map.name, tensor_map.tensorIndex = name, index
        return tensor_map

    names = {}
    for index in subgraph.inputs:
        tensor = subgraph.tensors[index].name.decode()
        names[next(n for n in INPUTS if n in tensor)] = index
    signature = schema.SignatureDefT()
    signature.inputs = [entry(index, name) for name, index in names.items()]
    signature.outputs = [entry(subgraph.outputs[0], OUTPUT)]
    signature.subgraphIndex = 0
    return signature


def to_onnx(module: PortableClassifier, metadata: dict) -> bytes:
    """The `.onnx` model (opset `ONNX_OPSET`), inputs and output named as the SavedModel's,
    `metadata` in `metadata_props` under "tfmeta"."""
    try:
        import tf2onnx
    except ImportError:
        raise UserError('--format=onnx needs tf2onnx and onnxruntime: pip install ".[onnx]"'
                        ) from None
    specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for s, n in zip(
        module.adapt_and_predict.input_signature, INPUTS)]
    function = tf.function(lambda support_images, support_labels, query_images:
                           module.adapt_and_predict(support_images, support_labels,
                                                    query_images))
    try:
        model, _ = tf2onnx.convert.from_function(function, input_signature=specs,
                                                 opset=ONNX_OPSET)
    except Exception as error:  # tf2onnx raises many types
        raise UserError(f"tf2onnx could not convert this learner: {first_line(error)}") from None
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return model.SerializeToString()


def first_line(error) -> str:
    """An error's message in one line of at most 300 characters: the ops a converter lacks
    where it names them, else the message's first line."""
    text = str(getattr(error, "message", error))
    missing = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op",
                                    text)))
    if missing:
        return f"ops it lacks: {', '.join(missing)}"
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]

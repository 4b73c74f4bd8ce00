"""Exports: a SavedModel of the module a learner serves (`serving_module`, see
`tfmeta.serving`), with its signatures, so a client needs only TensorFlow; and, for the
learners that convert, a LiteRT or ONNX file (`tfmeta.training.portable`) that a client
serves without TensorFlow (`tfmeta.lite`).

    loaded = tf.saved_model.load(f"{workdir}/export")
    logits = loaded.adapt_and_predict(support_images=s, support_labels=l,
                                      query_images=q)["logits"]

    python bin/export.py --workdir=W --format=saved_model|litert|onnx [--output=F]

A LiteRT or ONNX file is checked before it is written: on random episodes (5-way 1-shot,
and as many ways as the learner serves up to 20) its runtime's logits must equal the
SavedModel module's within `GUARD_TOLERANCE` of their scale, with the same argmax; an
export that does not is refused, never written. (The tests hold each learner to
`PARITY_TOLERANCE`, on Omniglot's test characters.)
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from tfmeta import lite
from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.finetune import OWN_HEAD, FineTuningClassifier
from tfmeta.errors import UserError
from tfmeta.files import atomic_path, atomic_write, check_output_file
from tfmeta.training import portable
from tfmeta.training.run import EXPORT, open_run

# What an export says of itself beside saved_model.pb (`bin/predict.py` reads it).
METADATA_FILE = "tfmeta.json"
# How far a LiteRT or ONNX export's logits may be from the SavedModel's, relative to their
# largest magnitude (at least PARITY_SCALE_FLOOR): what the tests hold every learner to.
PARITY_TOLERANCE = 1e-4
PARITY_SCALE_FLOOR = 1e-2
# What bin/export.py's check before writing holds a file to, on random episodes: conversion
# faults are whole differences (ONNX's area resize: 0.67 on [0, 1] images; NaN from
# unfrozen variables), while an inner loop amplifies float32 rounding on random inputs
# (ANIL's 10 steps at rate 0.4, untrained: the SavedModel's taped steps and the same steps
# written out differ by 5e-4 of the logits' scale in TensorFlow itself).
GUARD_TOLERANCE = 1e-2


def export_metadata(learner, dataset, backbone: dict | None = None) -> dict:
    """What a client needs to know besides the signatures: the learner, the most ways it
    serves, the raw inputs' shape and range, how an image file becomes a raw input
    (`FewShotDataset.file_decoding`: decode, resize, / 255), and the run's backbone (its
    config section: an external one's input size and normalization, which run in the
    graph, and what trained)."""
    return {"learner": type(learner).__name__, "dataset": dataset.name,
            "max_ways": getattr(learner, "max_ways", None),
            "raw_shape": [int(d) for d in dataset.raw_shape],
            "value_range": list(dataset.value_range) if dataset.value_range else None,
            "decoding": dataset.file_decoding(),
            "backbone": backbone, **serving_settings(learner)}


def serving_settings(learner) -> dict:
    """What a classifier's export serves besides logits (`tfmeta.serving.served_outputs`):
    its test head (`tfmeta.heads`; "own": the learner's rule) and whether it reads the
    query set as a whole, the calibrated temperature and the open-set threshold (None: not
    calibrated); {} for a learner that is no classifier."""
    if not isinstance(learner, EpisodicClassifier):
        return {}
    return {"head": learner.test_head if isinstance(learner, FineTuningClassifier) else
            OWN_HEAD, "transductive": learner.transductive,
            "temperature": learner.temperature,
            "open_set_threshold": learner.open_set_threshold}


def backbone_metadata(config) -> dict | None:
    """The run's `model` section as plain JSON (None where the config has none)."""
    model = config.get("model")
    return json.loads(model.to_json()) if hasattr(model, "to_json") else model


def export_learner(learner, dataset, path: str, backbone: dict | None = None) -> str:
    """Writes a SavedModel of `learner` for `dataset`'s raw inputs to `path`, with
    `tfmeta.json` (`export_metadata`, `backbone` the run's model section) beside it.

    Written to a temporary folder and renamed, so a killed export leaves the previous one.
    """
    module = learner.serving_module(dataset)
    with atomic_path(path) as partial:
        try:
            tf.saved_model.save(module, partial, signatures=module.signatures())
            with open(os.path.join(partial, METADATA_FILE), "w") as f:
                json.dump(export_metadata(learner, dataset, backbone), f, indent=2)
        except (OSError, tf.errors.OpError) as error:
            reason = " ".join(str(getattr(error, "message", error)).split())[:200]
            before = ("the previous export is unchanged" if os.path.isdir(path) else
                      "none was there")
            raise OSError(f"Could not write the export to {path} ({reason}); {before}. Free "
                          "disk space, then rerun the same command (a finished run only "
                          "exports).") from None
    return path


def export_workdir(workdir: str, data_dir: str | None = None, export_format: str = "saved_model",
                   output: str | None = None, overrides=()) -> str:
    """Exports the newest checkpoint of a run: a SavedModel (to `<workdir>/export` unless
    `output` says) or a LiteRT or ONNX file (`<workdir>/export.tflite`, `.onnx`).

    `overrides`: `key=value` test-time settings applied first (`open_run`), e.g.
    `learner.inner_steps_test=0` for a learner that converts only without inner steps."""
    if export_format not in portable.FORMATS:
        raise UserError(f"--format must be one of {list(portable.FORMATS)}; got "
                        f"{export_format!r}.")
    if output is not None and export_format != "saved_model":
        check_output_file(output, "model" + portable.SUFFIXES[export_format])  # before loading
    run = open_run(workdir, data_dir, overrides=overrides)
    path = output or run.path(EXPORT) + portable.SUFFIXES[export_format]
    backbone = backbone_metadata(run.config)
    if export_format == "saved_model":
        return export_learner(run.learner, run.dataset, path, backbone)
    portable.check_convertible(run.learner, run.config.algo, export_format)
    return export_portable(run.learner, run.dataset, path, export_format,
                           {**export_metadata(run.learner, run.dataset, backbone),
                            "format": export_format, "overrides": list(overrides)})


def export_portable(learner, dataset, path: str, export_format: str, metadata: dict,
                    reference=None) -> str:
    """Converts `learner` (`portable.PortableClassifier`), checks the file against the
    SavedModel's module (`check_parity`; `reference`, or `learner.serving_module(dataset)`)
    and writes it to `path` atomically."""
    check_output_file(path, "model" + portable.SUFFIXES[export_format])
    module = portable.PortableClassifier(learner, dataset)
    convert = portable.to_litert if export_format == "litert" else portable.to_onnx
    content = convert(module, metadata)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    scratch = path + ".check" + portable.SUFFIXES[export_format]
    try:
        with open(scratch, "wb") as f:
            f.write(content)
        check_parity(lite.load(scratch), reference or learner.serving_module(dataset), dataset)
    finally:
        if os.path.exists(scratch):
            os.remove(scratch)
    with atomic_write(path, "wb") as f:
        f.write(content)
    return path


def parity_episodes(raw_shape, max_ways, seed: int = 0):
    """Random requests `(support, labels, queries)` in [0, 1]: 5-way 1-shot and up to
    20-way 2-shot (at most `max_ways` ways)."""
    rng = np.random.default_rng(seed)
    for ways, shots, queries in ((5, 1, 7), (min(20, max_ways or 20), 2, 3)):
        ways = min(ways, max_ways or ways)
        yield (rng.uniform(0, 1, (ways * shots, *raw_shape)).astype(np.float32),
               np.repeat(np.arange(ways, dtype=np.int32), shots),
               rng.uniform(0, 1, (queries, *raw_shape)).astype(np.float32))


def parity_error(got, expected, tolerance: float = PARITY_TOLERANCE) -> str | None:
    """None where logits `got` answer as `expected` do: within `tolerance` of their largest
    magnitude (at least `PARITY_SCALE_FLOOR`: float32 rounds the features
    behind logits near 0 as it rounds any others), and each row's argmax one of
    `expected`'s top classes (a class within that tolerance of the top: random weights give
    ties that rounding may break either way); else what differs."""
    scale = max(float(np.abs(expected).max()), PARITY_SCALE_FLOOR)
    if got.shape != expected.shape:
        return f"logits of shape {got.shape}, not {expected.shape}"
    if not np.all(np.isfinite(got)):
        return "logits that are not finite"
    error = float(np.abs(got - expected).max())
    chosen = np.take_along_axis(expected, got.argmax(-1)[:, None], -1)[:, 0]
    if error > tolerance * scale or np.any(chosen < expected.max(-1) - tolerance * scale):
        return f"largest difference {error:.3g} at scale {scale:.3g}"
    return None


def check_parity(exported, module, dataset) -> None:
    """Raises a ValueError unless `exported` (`tfmeta.lite`) answers `parity_episodes` as the
    SavedModel's `module` does (`parity_error` within `GUARD_TOLERANCE`)."""
    for support, labels, queries in parity_episodes(tuple(dataset.raw_shape), exported.max_ways):
        expected = module.adapt_and_predict(support_images=tf.constant(support),
                                            support_labels=tf.constant(labels),
                                            query_images=tf.constant(queries))["logits"].numpy()
        error = parity_error(exported.adapt_and_predict(support, labels, queries)["logits"],
                             expected, GUARD_TOLERANCE)
        if error is not None:
            raise UserError(
                f"The converted model answers a {labels.max() + 1}-way episode differently "
                f"from the SavedModel ({error}), so it was not written; use "
                "--format=saved_model and report this learner.")

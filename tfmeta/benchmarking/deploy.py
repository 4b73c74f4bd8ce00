"""Exports beyond TensorFlow (`bin/export.py`): the size of each format and the latency of
one `adapt_and_predict` call in its runtime on this CPU (the SavedModel in TensorFlow, the
`.tflite` file in the LiteRT interpreter, the `.onnx` file in onnxruntime, both through
`tfmeta.lite`, request checks included), for the configs' Omniglot learners (Conv4, 64
filters; weights as built: sizes and latencies do not depend on training). Episodes of raw
105x105 images: 5-way 1-shot with 75 queries, and 20-way 1-shot with 100 queries; the
median of repeated calls after the first. Threads: each runtime's default."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import tensorflow as tf

from tfmeta import lite
from tfmeta.benchmarking.common import build_config_case, time_function
from tfmeta.files import disk_size
from tfmeta.training.export import export_learner, export_metadata, export_portable

EPISODES = {"5way": (5, 1, 75), "20way": (20, 1, 100)}


def _requests(raw_shape, max_ways):
    rng = np.random.default_rng(0)
    for name, (ways, shots, queries) in EPISODES.items():
        if max_ways is not None and ways > max_ways:
            continue
        yield name, (rng.uniform(size=(ways * shots, *raw_shape)).astype(np.float32),
                     np.repeat(np.arange(ways, dtype=np.int32), shots),
                     rng.uniform(size=(queries, *raw_shape)).astype(np.float32))


def _case(algo: str, overrides=()):
    def run(steps: int) -> dict:
        config, dataset, learner = build_config_case(algo, overrides=overrides)
        result, repeats = {"algo": algo, "overrides": list(overrides)}, max(steps, 10)
        with tempfile.TemporaryDirectory() as folder:
            saved = export_learner(learner, dataset, os.path.join(folder, "export"))
            result["saved_model_kb"] = disk_size(saved) / 1024
            serve = tf.saved_model.load(saved).signatures["adapt_and_predict"]
            runtimes = {"saved_model": lambda s, y, q: serve(
                support_images=tf.constant(s), support_labels=tf.constant(y),
                query_images=tf.constant(q))["logits"]}
            for name, suffix in (("litert", ".tflite"), ("onnx", ".onnx")):
                path = export_portable(learner, dataset, os.path.join(folder, "model" + suffix),
                                       name, export_metadata(learner, dataset))
                result[f"{name}_kb"] = disk_size(path) / 1024
                runtimes[name] = lite.load(path).adapt_and_predict
            for episode, request in _requests(tuple(dataset.raw_shape), learner.max_ways):
                for name, call in runtimes.items():
                    timing = time_function(lambda c=call, r=request: c(*r), (), repeats)
                    result[f"{name}_{episode}_median_ms"] = timing["median_ms"]
        return result

    return run


CASES = {
    "deploy_protonet": _case("protonet"),
    "deploy_anil": _case("anil"),
    "deploy_maml_no_inner_steps": _case("maml", ("learner.head=prototypes",
                                                 "learner.inner_steps_test=0")),
}

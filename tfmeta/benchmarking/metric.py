"""The metric-based learners: meta-training episodes per second at their configs' Omniglot
5w1s training settings (Conv4, 64 filters, Adam), and the latency of the exported
SavedModel's `adapt_and_predict` on one 20-way 1-shot episode of raw 105x105 images
(20 support and 100 query images; the median of repeated calls after the first)."""

from __future__ import annotations

import tempfile

import numpy as np
import tensorflow as tf

from tfmeta.benchmarking.common import time_config_training, time_function
from tfmeta.training.export import export_learner

SERVING_WAYS, SERVING_SHOTS, SERVING_QUERIES = 20, 1, 5


def _case(algo: str):
    def run(steps: int) -> dict:
        result, learner, dataset = time_config_training(algo, steps)
        result["train_episodes_per_s"] = result["meta_batch_size"] / (
            result["median_ms_per_step"] / 1000)
        result.update(_serving_latency(learner, dataset, max(steps, 10)))
        return result

    return run


def _serving_latency(learner, dataset, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    support = rng.uniform(size=(SERVING_WAYS * SERVING_SHOTS, *dataset.raw_shape))
    query = rng.uniform(size=(SERVING_WAYS * SERVING_QUERIES, *dataset.raw_shape))
    labels = np.repeat(np.arange(SERVING_WAYS), SERVING_SHOTS).astype(np.int32)
    with tempfile.TemporaryDirectory() as path:
        export_learner(learner, dataset, path)
        serve = tf.saved_model.load(path).signatures["adapt_and_predict"]
        args = dict(support_images=tf.constant(support, tf.float32),
                    support_labels=tf.constant(labels),
                    query_images=tf.constant(query, tf.float32))
        timing = time_function(lambda: serve(**args), (), repeats)
    return {"serve_20way_first_call_s": timing["first_call_s"],
            "serve_20way_median_ms": timing["median_ms"],
            "serve_queries": SERVING_WAYS * SERVING_QUERIES}


CASES = {f"{algo}_omniglot_5w1s": _case(algo)
         for algo in ("protonet", "matching", "relation", "siamese")}

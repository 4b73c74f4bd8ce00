"""SavedModel export: the module a learner serves (`serving_module`, see `tfmeta.serving`),
with its signatures, so a client needs only TensorFlow.

    loaded = tf.saved_model.load(f"{workdir}/export")
    logits = loaded.adapt_and_predict(support_images=s, support_labels=l,
                                      query_images=q)["logits"]
"""

from __future__ import annotations

import os
import shutil

import tensorflow as tf

from tfmeta.training.run import EXPORT, open_run


def export_learner(learner, dataset, path: str) -> str:
    """Writes a SavedModel of `learner` for `dataset`'s raw inputs to `path`.

    Written to a temporary folder and renamed, so a killed export leaves the previous one.
    """
    module = learner.serving_module(dataset)
    partial = path.rstrip("/") + ".part"
    shutil.rmtree(partial, ignore_errors=True)
    tf.saved_model.save(module, partial, signatures=module.signatures())
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(partial, path)
    return path


def export_workdir(workdir: str, data_dir: str | None = None) -> str:
    """Exports the newest checkpoint of a run to `<workdir>/export`."""
    run = open_run(workdir, data_dir)
    return export_learner(run.learner, run.dataset, run.path(EXPORT))

"""SavedModel export: the module a learner serves (`serving_module`, see `tfmeta.serving`),
with its signatures, so a client needs only TensorFlow.

    loaded = tf.saved_model.load(f"{workdir}/export")
    logits = loaded.adapt_and_predict(support_images=s, support_labels=l,
                                      query_images=q)["logits"]
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from tfmeta.files import atomic_path
from tfmeta.training.run import EXPORT, open_run

# What an export says of itself beside saved_model.pb (`bin/predict.py` reads it).
METADATA_FILE = "tfmeta.json"


def export_metadata(learner, dataset, backbone: dict | None = None) -> dict:
    """What a client needs to know besides the signatures: the learner, the most ways it
    serves, the raw inputs' shape and range, how an image file becomes a raw input
    (`FewShotDataset.file_decoding`: decode, resize, / 255), and the run's backbone (its
    config section: an external one's input size and normalization, which run in the
    graph, and what trained)."""
    value_range = getattr(dataset, "value_range", None)
    decoding = getattr(dataset, "file_decoding", None)  # task generators have no files
    return {"learner": type(learner).__name__, "dataset": getattr(dataset, "name", None),
            "max_ways": getattr(learner, "max_ways", None),
            "raw_shape": [int(d) for d in getattr(dataset, "raw_shape", ())],
            "value_range": list(value_range) if value_range else None,
            "decoding": decoding() if decoding else None,
            "backbone": backbone}


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


def export_workdir(workdir: str, data_dir: str | None = None) -> str:
    """Exports the newest checkpoint of a run to `<workdir>/export`."""
    run = open_run(workdir, data_dir)
    return export_learner(run.learner, run.dataset, run.path(EXPORT),
                          backbone_metadata(run.config))

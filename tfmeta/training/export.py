"""SavedModel export with an `adapt_and_predict` signature that adapts inside the graph.

    loaded = tf.saved_model.load(f"{workdir}/export")
    logits = loaded.adapt_and_predict(support_images=s, support_labels=l,
                                      query_images=q)["logits"]

Inputs are images as decoded from the dataset's own files (float32 in [0, 1], the
files' own height and width, e.g. `[n, 105, 105, 1]` for Omniglot) and labels
int32 in 0..N-1; the module applies the training preprocessing itself, so a
client needs only TensorFlow.
"""

from __future__ import annotations

import os

import tensorflow as tf


class AdaptAndPredict(tf.Module):
    """Wraps a learner and its dataset's preprocessing for serving."""

    def __init__(self, learner, preprocess, raw_shape, value_range=(0.0, 1.0)):
        super().__init__(name="tfmeta_serving")
        self.learner = learner
        self._preprocess = preprocess
        self._value_range = value_range
        inputs = tf.TensorSpec([None, *raw_shape], tf.float32)
        self.adapt_and_predict = tf.function(
            self._adapt_and_predict,
            input_signature=[inputs, tf.TensorSpec([None], tf.int32), inputs])

    def input_checks(self, support_images, support_labels, query_images):
        """Assertions on a request: labels, counts, finite values in the dataset's range."""
        checks = [
            tf.debugging.assert_non_negative(support_labels,
                                             message="support_labels must be in 0..N-1"),
            tf.debugging.assert_equal(tf.shape(support_images)[0], tf.shape(support_labels)[0],
                                      message="one support label per support example"),
        ]
        for inputs in (support_images, query_images):
            checks.append(tf.debugging.assert_all_finite(inputs, "inputs must be finite"))
            if self._value_range is not None:
                low, high = self._value_range
                message = f"inputs must be float32 in [{low:g}, {high:g}]"
                checks.append(tf.debugging.assert_greater_equal(inputs, low, message=message))
                checks.append(tf.debugging.assert_less_equal(inputs, high, message=message))
        return checks

    def _adapt_and_predict(self, support_images, support_labels, query_images):
        with tf.control_dependencies(self.input_checks(support_images, support_labels,
                                                       query_images)):
            logits = self.learner.adapt_and_predict(self._preprocess(support_images),
                                                    support_labels,
                                                    self._preprocess(query_images))
        return {"logits": tf.cast(logits, tf.float32)}


def export_learner(learner, dataset, path: str) -> str:
    """Writes a SavedModel of `learner` for `dataset`'s raw inputs to `path`.

    A learner that serves something other than `adapt_and_predict` (Reptile-GAN)
    defines `serving_module(preprocess, raw_shape) -> (tf.Module, signatures dict)`.
    """
    if hasattr(learner, "serving_module"):
        module, signatures = learner.serving_module(dataset.preprocess, dataset.raw_shape)
    else:
        module = AdaptAndPredict(learner, dataset.preprocess, dataset.raw_shape,
                                 dataset.value_range)
        signatures = {"adapt_and_predict": module.adapt_and_predict.get_concrete_function()}
    tf.saved_model.save(module, path, signatures=signatures)
    return path


def export_workdir(workdir: str, data_dir: str | None = None) -> str:
    """Exports the newest checkpoint of a run to `<workdir>/export`."""
    from tfmeta.config import load_config
    from tfmeta.data import load_dataset
    from tfmeta.training.trainer import CONFIG_FILE, build_compiled_learner, restore_latest

    config = load_config(os.path.join(workdir, CONFIG_FILE))
    dataset = load_dataset(config.dataset, data_dir, **config.data)
    learner = build_compiled_learner(config, dataset.input_shape)
    restore_latest(learner, workdir, require=True)
    return export_learner(learner, dataset, os.path.join(workdir, "export"))

"""What an exported SavedModel serves: `tf.Module`s that wrap a learner and its dataset's
preprocessing, so a client sends raw examples (as decoded from the dataset's own files)
and needs only TensorFlow.

    loaded = tf.saved_model.load(f"{workdir}/export")
    outputs = loaded.adapt_and_predict(support_images=s, support_labels=l, query_images=q)
    outputs["logits"], outputs["probabilities"]    # [m, N]; and, for embedding learners,
    outputs["distance"], outputs["unknown"]        # [m]: "none of these" (docs/heads.md)

A learner picks its module with its `serving_module(dataset)` hook: classifiers serve
`AdaptAndPredict`, Reptile-GAN serves `GenerationServing`, MAML on regression tasks
`RegressionServing`. Every request is checked in
the graph before anything runs on it; a bad request raises `InvalidArgumentError` with
a message that says what was wrong.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmeta.errors import UserError

# The most values one request may send (shared with the LiteRT and ONNX runtime helper).
from tfmeta.lite import MAX_REQUEST_VALUES


def range_checks(inputs, value_range, name, raw_shape=None):
    """Assertions that `inputs` are `[n, *raw_shape]` (when given), finite, and inside
    `value_range` (None: finite only)."""
    checks = []
    if raw_shape is not None:
        checks.append(tf.debugging.assert_equal(
            tf.shape(inputs)[1:], tf.constant(raw_shape, tf.int32), message=(
                f"{name} must be [n, {', '.join(str(d) for d in raw_shape)}], the dataset "
                "files' own size")))
    checks.append(tf.debugging.assert_all_finite(inputs, f"{name} must be finite (no NaN or "
                                                         "inf)"))
    if value_range is not None:
        low, high = value_range
        message = f"{name} must be float32 in [{low:g}, {high:g}]"
        if (low, high) == (0.0, 1.0):
            message += " (divide uint8 images by 255)"
        checks.append(tf.debugging.assert_greater_equal(inputs, tf.cast(low, inputs.dtype),
                                                        message=message))
        checks.append(tf.debugging.assert_less_equal(inputs, tf.cast(high, inputs.dtype),
                                                     message=message))
    return checks




def int32_check(labels):
    """An assertion that int64 `labels` fit in int32, so the cast to the learner's int32 is
    exact (the learner checks that they are 0..N-1)."""
    fits = tf.logical_and(tf.reduce_all(labels >= -2 ** 31), tf.reduce_all(labels < 2 ** 31))
    return tf.debugging.Assert(fits, ["support_labels must be 0..N-1; got labels that do not "
                                      "even fit in int32"])


def size_check(*tensors):
    """An assertion that a request holds at most MAX_REQUEST_VALUES values."""
    total = tf.add_n([tf.cast(tf.size(t), tf.int64) for t in tensors])
    return tf.debugging.assert_less_equal(total, tf.constant(MAX_REQUEST_VALUES, tf.int64), (
        f"the request holds more than {MAX_REQUEST_VALUES} values (1 GiB of float32); send "
        "the queries in smaller chunks"))


class ServingModule(tf.Module):
    """What every served module holds: the learner, and its dataset's preprocessing, value
    range and raw example shape (what a request is checked against)."""

    def __init__(self, learner, dataset, name: str):
        super().__init__(name=name)
        self.learner = learner
        self._preprocess = dataset.preprocess
        self._value_range = dataset.value_range
        self._raw_shape = tuple(dataset.raw_shape)


class AdaptAndPredict(ServingModule):
    """`adapt_and_predict(support_images, support_labels, query_images) -> {"logits"}` on raw
    examples: checks the request, preprocesses it in the graph, then calls the learner's
    `adapt_and_predict` (which checks the labels: 0..N-1, every class present).

    The `adapt_and_predict` signature (TF Serving) takes float32 images and int32 labels.
    The Python-callable `loaded.adapt_and_predict` takes int32 or int64 labels and float32
    or float64 images, each exactly as sent: an int64 label that does not fit is refused,
    never wrapped, and float labels match no traced function, so they are refused too
    (an `input_signature` would have converted them silently: 2**32 + 4 to 4, 1.7 to 1).
    Each variant casts and calls one traced serving function."""

    LABEL_DTYPES = (tf.int32, tf.int64)
    IMAGE_DTYPES = (tf.float32, tf.float64)

    def __init__(self, learner, dataset):
        super().__init__(learner, dataset, "tfmeta_serving")
        images = tf.TensorSpec([None, *dataset.raw_shape], tf.float32)
        self._serve = tf.function(self._adapt_and_predict, input_signature=[
            images, tf.TensorSpec([None], tf.int64), images])
        self.adapt_and_predict = tf.function(self._cast_and_serve)
        for image_dtype in self.IMAGE_DTYPES:
            for label_dtype in self.LABEL_DTYPES:
                spec = tf.TensorSpec([None, *dataset.raw_shape], image_dtype)
                self.adapt_and_predict.get_concrete_function(
                    support_images=spec, support_labels=tf.TensorSpec([None], label_dtype),
                    query_images=spec)

    def signatures(self) -> dict:
        images = tf.TensorSpec([None, *self._raw_shape], tf.float32)
        return {"adapt_and_predict": self.adapt_and_predict.get_concrete_function(
            support_images=images, support_labels=tf.TensorSpec([None], tf.int32),
            query_images=images)}

    def _cast_and_serve(self, support_images, support_labels, query_images):
        return self._serve(tf.cast(support_images, tf.float32),
                           tf.cast(support_labels, tf.int64), tf.cast(query_images, tf.float32))

    def _adapt_and_predict(self, support_images, support_labels, query_images):
        checks = [size_check(support_images, query_images),
                  int32_check(support_labels),
                  *range_checks(support_images, self._value_range, "support_images",
                                self._raw_shape),
                  *range_checks(query_images, self._value_range, "query_images",
                                self._raw_shape)]
        with tf.control_dependencies(checks):
            outputs = self.learner.adapt_and_predict_outputs(
                self._preprocess(support_images), tf.cast(support_labels, tf.int32),
                self._preprocess(query_images))
        return served_outputs(outputs, self.learner.temperature,
                              self.learner.open_set_threshold)


def served_outputs(outputs: dict, temperature: float, threshold: float | None) -> dict:
    """What `adapt_and_predict` returns from the learner's outputs: "logits" `[m, N]`,
    "probabilities" `softmax(logits / temperature)` (calibrated where the run was,
    `tfmeta.calibration`) and, where the learner measures it, "distance" `[m]` and "unknown"
    `[m]` (bool: farther than the calibrated open-set threshold; never without one)."""
    logits = tf.cast(outputs["logits"], tf.float32)
    served = {"logits": logits, "probabilities": tf.nn.softmax(logits / temperature, axis=-1)}
    if "distance" in outputs:
        distance = tf.cast(outputs["distance"], tf.float32)
        served["distance"] = distance
        served["unknown"] = (distance > threshold if threshold is not None else
                             tf.zeros(tf.shape(distance), tf.bool))
    return served


def make_postprocess(preprocess, raw_shape):
    """The inverse of a preprocessing that resizes and maps intensities affinely (Omniglot's
    resize-and-invert, MNIST's identity): model inputs -> images of `raw_shape` in [0, 1]."""
    zeros = preprocess(np.zeros([1, *raw_shape], np.float32)).numpy()
    ones = preprocess(np.ones([1, *raw_shape], np.float32)).numpy()
    offset, scale = float(zeros.mean()), float(ones.mean() - zeros.mean())
    if abs(scale) < 1e-3 or zeros.std() > 1e-3 or ones.std() > 1e-3:
        raise UserError("Generation exports need a preprocessing that resizes and maps "
                        "intensities affinely (a * x + b), to map samples back to the "
                        f"dataset's format; this one maps 0 to ~{offset:.3g} and 1 to "
                        f"~{offset + scale:.3g} non-uniformly.")

    def postprocess(samples):
        samples = (samples - offset) / scale
        if tuple(samples.shape[1:3]) != tuple(raw_shape[:2]):
            samples = tf.image.resize(samples, raw_shape[:2])
        return tf.clip_by_value(samples, 0.0, 1.0)

    return postprocess


def random_seed():
    """A fresh int64 seed for a request that did not bring one."""
    return tf.random.uniform([], maxval=2 ** 62, dtype=tf.int64)


class GenerationServing(ServingModule):
    """Generation on raw images (float32 in [0, 1], the dataset's own size) for a learner with
    `adapt_and_generate(images, num_samples, seed)` and `generate(num_samples, seed)`:

        adapt_and_generate(images, num_samples) -> {"samples"}     # a fresh random draw
        generate(num_samples) -> {"samples"}                       # the meta generator
        adapt_and_generate_with_seed(images, num_samples, seed)    # the same, reproducible
        generate_with_seed(num_samples, seed)                      # (seed: int64 scalar)
    """

    def __init__(self, learner, dataset):
        super().__init__(learner, dataset, "tfmeta_generation")
        self._postprocess = make_postprocess(dataset.preprocess, dataset.raw_shape)
        images = tf.TensorSpec([None, *dataset.raw_shape], tf.float32, name="images")
        count = tf.TensorSpec([], tf.int32, name="num_samples")
        seed = tf.TensorSpec([], tf.int64, name="seed")
        self.adapt_and_generate_with_seed = tf.function(
            self._adapt_and_generate, input_signature=[images, count, seed])
        self.generate_with_seed = tf.function(self._generate, input_signature=[count, seed])
        # The unseeded signatures call the seeded ones (traced once) with a fresh seed.
        self.adapt_and_generate = tf.function(
            lambda images, num_samples: self.adapt_and_generate_with_seed(
                images, num_samples, random_seed()), input_signature=[images, count])
        self.generate = tf.function(
            lambda num_samples: self.generate_with_seed(num_samples, random_seed()),
            input_signature=[count])

    def signatures(self) -> dict:
        return {name: getattr(self, name).get_concrete_function()
                for name in ("adapt_and_generate", "generate", "adapt_and_generate_with_seed",
                             "generate_with_seed")}

    def _count_check(self, num_samples):
        return tf.debugging.assert_positive(num_samples, message="num_samples must be >= 1")

    def _adapt_and_generate(self, images, num_samples, seed):
        checks = [
            tf.debugging.assert_positive(tf.shape(images)[0], message=(
                "images is empty; adapting needs at least one image of the new class")),
            *range_checks(images, self._value_range, "images", self._raw_shape),
            self._count_check(num_samples),
        ]
        with tf.control_dependencies(checks):
            samples = self.learner.adapt_and_generate(self._preprocess(images), num_samples,
                                                      seed=seed)
        return {"samples": self._postprocess(samples)}

    def _generate(self, num_samples, seed):
        with tf.control_dependencies([self._count_check(num_samples)]):
            samples = self.learner.generate(num_samples, seed=seed)
        return {"samples": self._postprocess(samples)}


class RegressionServing(ServingModule):
    """`adapt_and_predict(support_x [k, *raw], support_y [k, outputs], query_x [m, *raw])
    -> {"predictions" [m, outputs]}` for a learner of regression tasks (with
    `adapt_and_predict_regression`, `MAMLRegression`): checks the request in the graph, then
    adapts."""

    def __init__(self, learner, dataset):
        super().__init__(learner, dataset, "tfmeta_regression_serving")
        self._outputs = int(learner.num_outputs)
        inputs = tf.TensorSpec([None, *dataset.raw_shape], tf.float32)
        targets = tf.TensorSpec([None, self._outputs], tf.float32)
        self.adapt_and_predict = tf.function(self._adapt_and_predict,
                                             input_signature=[inputs, targets, inputs])

    def signatures(self) -> dict:
        return {"adapt_and_predict": self.adapt_and_predict.get_concrete_function()}

    def _adapt_and_predict(self, support_x, support_y, query_x):
        checks = [
            tf.debugging.assert_positive(tf.shape(support_x)[0], message=(
                "support_x is empty: adapting needs at least one (x, y) support point")),
            tf.debugging.assert_positive(tf.shape(query_x)[0], message=(
                "query_x is empty: send at least one query point")),
            tf.debugging.assert_equal(tf.shape(support_y)[0], tf.shape(support_x)[0], message=(
                "support_y must have one target per support_x point")),
            *range_checks(support_x, self._value_range, "support_x", self._raw_shape),
            *range_checks(query_x, self._value_range, "query_x", self._raw_shape),
            *range_checks(support_y, None, "support_y", (self._outputs,)),
        ]
        with tf.control_dependencies(checks):
            predictions = self.learner.adapt_and_predict_regression(
                self._preprocess(support_x), tf.identity(support_y), self._preprocess(query_x))
        # Inputs far outside the training range can overflow the adapted model's inner
        # steps: a clear error, never NaN predictions.
        finite = tf.debugging.assert_all_finite(predictions, (
            "the adapted model's predictions are not finite: the support or query points are "
            "too far outside the range it was meta-trained on"))
        with tf.control_dependencies([finite]):
            return {"predictions": tf.cast(predictions, tf.float32)}

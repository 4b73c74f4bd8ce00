"""Supervised pre-training: the backbone trained as a plain classifier over every training
class, then few-shot episodes solved by a classifier fitted on its features.

The baseline every meta-learner must beat (Chen et al. 2019, "A Closer Look at Few-shot
Classification", https://arxiv.org/abs/1904.04232; Tian et al. 2020, "Rethinking Few-Shot
Image Classification: a Good Embedding Is All You Need?", https://arxiv.org/abs/2003.11539),
and how LEO's features were made (Rusu et al. 2019). Training is ordinary mini-batch
classification of all C training classes, with Keras `fit`:

    logits = head(f(images))                                   # [b, C]
    loss = cross_entropy(labels, logits) + weight_decay / 2 * sum(||w||^2 for w in params)
    params = optimizer.apply(grad(loss, params), params)       # SGD, momentum 0.9

A few-shot episode is solved in the graph on L2-normalized features
`s = f(support) / |f(support)|` `[B, N*K, D]` and `q` `[B, M, D]` likewise, by
`classifier`:

    "nearest_centroid" (Baseline++'s cosine classifier, SimpleShot's L2 normalization):
        c_n = mean(s[i] for i with label n)                    # [B, N, D]
        logits = scale * cosine(q, c)                          # [B, M, N]

    "logistic" (Tian et al. 2020: multinomial logistic regression on the normalized
    features, here a fixed number of full-batch gradient steps from zero instead of
    their L-BFGS):
        W, b = zeros([D, N]), zeros([N])
        for _ in range(logistic_steps):
            p = softmax(s @ W + b)                             # [N*K, N]
            W -= logistic_lr * (s.T @ (p - onehot(labels)) / (N*K) + logistic_l2 * W)
            b -= logistic_lr * mean(p - onehot(labels), axis=0)
        logits = q @ W + b

Either way N comes from the labels, so the export serves `adapt_and_predict` for any
number of ways. With `finetune_steps > 0` a copy of the backbone is first fine-tuned on each
test episode's support set, the nearest-centroid classifier as its head (P>M>F,
`tfmeta.algorithms.finetune`), whichever `classifier` then scores the queries. On padded
variable episodes (labels -1 in the padding) both classifiers fit the real support examples
only (N*K above is their count), over the episode's own classes: the others, in a
meta-batch of wider episodes, get logit -1e9. `feature_model()` is the backbone without its
head: what `bin/write_embeddings.py` embeds with and what `--set=model.init_from=<this run>`
copies.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.algorithms.base import batch_dict
from tfmeta.algorithms.episodic import ClassifierRecipe
from tfmeta.algorithms.finetune import FineTuningClassifier, flip, translate
from tfmeta.data import record_stream
from tfmeta.data.episodes import stored_tensor
from tfmeta.data.record_store import RecordClasses
from tfmeta.data.sampling import unsharded
from tfmeta.errors import UserError
from tfmeta.ranges import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Choice, Range
from tfmeta.tensors import (
    accuracy,
    class_means,
    cross_entropy,
    embed_support_and_query,
    l2_normalize,
    mask_absent_classes,
    one_hot_classes,
    real,
)

CLASSIFIERS = ("nearest_centroid", "logistic")
BATCH_KEYS = ("images", "labels")


def nearest_centroid_logits(support, labels, queries, scale):
    """`scale * cosine(q, c_n)`: support `[B, S, D]`, labels `[B, S]`, queries `[B, M, D]`
    -> `[B, M, N]`, c_n the mean of class n's L2-normalized support features."""
    centroids = l2_normalize(class_means(l2_normalize(support), labels))
    logits = scale * tf.linalg.matmul(l2_normalize(queries), centroids, transpose_b=True)
    return mask_absent_classes(logits, labels)


def logistic_regression_logits(support, labels, queries, steps, learning_rate, l2):
    """Multinomial logistic regression on L2-normalized features, `steps` full-batch gradient
    steps from zero (the update in the module docstring); shapes as `nearest_centroid_logits`."""
    support, queries = l2_normalize(support), l2_normalize(queries)
    targets = one_hot_classes(labels)                                     # [B, S, N]
    is_real = tf.cast(real(labels), tf.float32)[..., None]               # [B, S, 1]
    # The real support count per episode; with no padding exactly S, and `slots` is 1.
    count = tf.reduce_sum(is_real, axis=1, keepdims=True)                 # [B, 1, 1]
    slots = tf.cast(tf.shape(support)[1], tf.float32) / count
    weights = tf.zeros([tf.shape(support)[0], tf.shape(support)[2], tf.shape(targets)[2]])
    bias = tf.zeros([tf.shape(support)[0], 1, tf.shape(targets)[2]])

    def step(i, weights, bias):
        # Absent classes at -1e9 have probability 0, so zero error: their weights stay 0
        # and the softmax is over the episode's own classes, as without padding.
        probabilities = tf.nn.softmax(mask_absent_classes(support @ weights + bias, labels))
        error = (probabilities - targets) * is_real                       # [B, S, N]
        grad_w = tf.linalg.matmul(support, error, transpose_a=True) / count + l2 * weights
        grad_b = tf.reduce_mean(error, axis=1, keepdims=True) * slots
        return i + 1, weights - learning_rate * grad_w, bias - learning_rate * grad_b

    _, weights, bias = tf.while_loop(lambda i, *_: i < steps, step,
                                     (tf.constant(0), weights, bias))
    return mask_absent_classes(queries @ weights + bias, labels)


class Pretrain(FineTuningClassifier):
    """A backbone trained as a classifier over all training classes (see the module docstring).

    Example:

        learner = Pretrain(conv4((28, 28, 1)), num_classes=161)
        learner.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        train, val = learner.training_episodes(dataset, DataSpec.from_config(config))
        learner.fit(train, validation_data=val, steps_per_epoch=100)
        logits = learner.adapt_and_predict(support_images, support_labels, query_images)

    Args:
      backbone: a built Keras model, images -> feature vectors `[n, D]` (no head).
      num_classes: outputs of the training head: at least the number of training classes
        (a config's None: the training split's, filled in by the trainer).
      classifier: "nearest_centroid" or "logistic", the in-graph few-shot classifier.
      weight_decay: L2 penalty `weight_decay / 2 * ||w||^2` on every trainable weight
        (PyTorch's SGD `weight_decay`, which the papers use).
      scale: the cosine logits' scale (nearest centroid).
      logistic_steps, logistic_lr, logistic_l2: gradient steps, step size and L2 weight
        of the logistic regression.
      finetune_steps, finetune_lr, finetune_augment, finetune_optimizer: fine-tuning the
        backbone on each test episode's support set (`tfmeta.algorithms.finetune`; off with
        the default `finetune_steps=0`).
    """

    takes_padded_episodes = True
    argument_ranges = {"num_classes": Range(1, integer=True, optional=True),
                       "classifier": Choice(CLASSIFIERS), "weight_decay": NON_NEGATIVE,
                       "scale": POSITIVE, "logistic_steps": NON_NEGATIVE_INT,
                       "logistic_lr": POSITIVE, "logistic_l2": NON_NEGATIVE}

    def __init__(self, backbone: keras.Model, num_classes: int = 64,
                 classifier: str = "nearest_centroid", weight_decay: float = 5e-4,
                 scale: float = 10.0, logistic_steps: int = 100, logistic_lr: float = 1.0,
                 logistic_l2: float = 0.1, **kwargs):
        super().__init__(backbone, **kwargs)
        self.check_arguments(locals())
        if num_classes is None:
            raise UserError("Pretrain needs num_classes, the training head's size (at least "
                            "the training split's class count).")
        if len(backbone.output_shape) != 2:
            raise UserError(f"Pretrain needs a built backbone of images to feature vectors "
                            f"[n, D]; {backbone.name!r} returns {backbone.output_shape}. Use a "
                            "backbone with flatten=True or pooling='avg' and no head.")
        self.num_classes = int(num_classes)
        self.head = keras.layers.Dense(self.num_classes, name="head")
        self.head.build(backbone.output_shape)
        self.classifier = classifier
        self.weight_decay = float(weight_decay)
        self.scale = float(scale)
        self.logistic_steps = int(logistic_steps)
        self.logistic_lr = float(logistic_lr)
        self.logistic_l2 = float(logistic_l2)

    # ------------------------------------------------------------ training
    def class_logits(self, images, training=False):
        """Logits `[n, num_classes]` of the training classes."""
        return tf.cast(self.head(self.backbone(images, training=training)), tf.float32)

    def regularization_loss(self):
        if not self.weight_decay:
            return super().regularization_loss()
        penalty = tf.add_n([tf.reduce_sum(tf.square(tf.cast(w, tf.float32)))
                            for w in self.trainable_variables])
        return super().regularization_loss() + 0.5 * self.weight_decay * penalty

    def check_batch(self, data, labelled=True):
        """A training batch `{"images" [b, ...], "labels" [b]}`, or an episode meta-batch
        (validation, as every learner's)."""
        if isinstance(data, tuple | list):
            data, _, _ = keras.utils.unpack_x_y_sample_weight(tuple(data))
        if isinstance(data, dict) and BATCH_KEYS[0] in data:
            return batch_dict(self, data, BATCH_KEYS)
        return super().check_batch(data, labelled)

    def meta_loss(self, batch):
        """(cross-entropy of the training classes plus weight decay, class logits) of a
        training batch: ordinary supervised training through the base's meta-step. Of a
        meta-batch of episodes, the episodic query loss as every classifier's."""
        if "labels" not in batch:
            return super().meta_loss(batch)
        logits = self.class_logits(batch["images"], training=True)
        loss = cross_entropy(tf.cast(batch["labels"], tf.int32), logits)
        return loss + self.regularization_loss(), logits

    def update_metrics(self, batch, loss, logits):
        if "labels" not in batch:  # an episode meta-batch
            return super().update_metrics(batch, loss, logits)
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(accuracy(tf.cast(batch["labels"], tf.int32), logits))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        # Training batches only: a meta-batch of episodes is refused with what to build.
        return super().train_step(batch_dict(self, data, BATCH_KEYS))

    def test_step(self, data):
        """Few-shot episodes (validation) as every learner; a batch of labelled examples is
        scored by the training head."""
        batch = self.check_batch(data)
        if "labels" not in batch:
            return super().test_step(batch)
        labels = tf.cast(batch["labels"], tf.int32)
        logits = self.class_logits(batch["images"], training=False)
        return self.update_metrics(batch, cross_entropy(labels, logits), logits)

    # ------------------------------------------------------------ few-shot
    def query_logits(self, episodes, training=False):
        support, queries = embed_support_and_query(
            self.backbone, episodes["support_images"], episodes["query_images"], training,
            episodes["support_labels"], episodes.get("query_labels"))
        labels = tf.cast(episodes["support_labels"], tf.int32)
        return self.compare(support, labels, queries, training)

    def compare(self, support_features, support_labels, query_features, training):
        """The few-shot classifier on features: `[B, S, D]`, `[B, S]`, `[B, M, D]` ->
        `[B, M, N]`."""
        del training
        if self.classifier == "logistic":
            return logistic_regression_logits(support_features, support_labels, query_features,
                                              self.logistic_steps, self.logistic_lr,
                                              self.logistic_l2)
        return nearest_centroid_logits(support_features, support_labels, query_features,
                                       self.scale)

    def finetune_loss(self, support_features, support_labels, pseudo_query_features):
        """Cross-entropy `[B]` of the nearest-centroid classifier on the pseudo-queries, with
        either `classifier` (logistic regression's fitting loop is not differentiated
        through)."""
        logits = nearest_centroid_logits(support_features, support_labels,
                                         pseudo_query_features, self.scale)
        return cross_entropy(support_labels, logits)

    def feature_model(self) -> keras.Model:
        return self.backbone

    # ------------------------------------------------------------ data
    def training_episodes(self, dataset, spec, replicas: int = 1, start_step: int = 0,
                          worker: int = 0, workers: int = 1):
        """(train, validation): batches `{"images" [b, ...], "labels" [b]}` of every training
        example, and validation few-shot episodes as every learner's.

        Batch `s` holds positions `s*b .. s*b+b-1` of the endless sequence of epochs, epoch
        `e` a permutation drawn from (`spec.seed`, e): a pure function of the step, so a
        resumed run sees what an uninterrupted one would. Each image is augmented with its
        own draw: `spec.augment` (Omniglot's random affine), and for colour images a random
        crop of the zero-padded image and a horizontal flip (Tian et al. 2020's
        `RandomCrop(84, padding=8)`, `RandomHorizontalFlip`; the pad is a tenth of the side,
        at least 4, so 4 on 32x32 CIFAR).
        """
        train = example_batches(dataset.split("train"), spec.batch_size, spec.seed,
                                start_step, worker, workers, spec.augment, self.num_classes)
        return train, self.validation_episodes(dataset, spec, replicas)


def crop_and_flip(images, seed):
    """Random crop of the zero-padded images (pad max(4, side // 10)) and horizontal flip."""
    pad = max(4, min(images.shape[1], images.shape[2]) // 10)
    return flip(translate(images, pad, seed), tf.random.experimental.stateless_fold_in(seed, 1))


def example_batches(classes, batch_size: int, seed: int = 0, start_step: int = 0,
                    worker: int = 0, workers: int = 1, augment=None, num_classes=None):
    """Endless `{"images", "labels"}` batches of every example of `classes` (see
    `Pretrain.training_episodes`); labels are class indices in the split."""
    if batch_size < 1 or batch_size % workers:
        raise UserError(f"batch_size={batch_size} must be a positive multiple of the "
                        f"{workers} workers.")
    if num_classes is not None and classes.num_classes > num_classes:
        raise UserError(f"The training split has {classes.num_classes} classes but the head "
                        f"has learner.num_classes={num_classes} outputs; "
                        f"--set=learner.num_classes={classes.num_classes}.")
    colour = len(classes.example_shape) == 3 and classes.example_shape[-1] == 3
    if isinstance(classes, RecordClasses):  # records: streamed (tfmeta.data.record_stream)
        def augmented(step, batch):
            draw = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(tf.constant([seed, 8], tf.int64),
                                                         step + int(start_step)), worker)
            images = batch["images"] if augment is None else augment(batch["images"], draw)
            if colour:
                images = crop_and_flip(images, tf.random.experimental.stateless_fold_in(draw, 1))
            return {"images": images, "labels": batch["labels"]}

        return record_stream.stream_examples(classes, batch_size, seed, start_step, worker,
                                             workers).enumerate().map(augmented)
    images = stored_tensor(classes.images)
    labels = tf.constant([c for c, n in enumerate(classes.class_counts) for _ in range(n)],
                         tf.int32)
    total = len(classes.images)
    share = batch_size // workers
    base = tf.constant([seed, 7], tf.int64)

    def batch(step):
        position = step * batch_size + worker * share + tf.range(share, dtype=tf.int64)
        epoch, offset = position // total, position % total

        def permutation(e):
            scores = tf.random.stateless_uniform([total], tf.random.experimental
                                                 .stateless_fold_in(base, e))
            return tf.argsort(scores)

        first = epoch[0]  # a batch spans at most two epochs
        orders = tf.stack([permutation(first), permutation(first + 1)])
        index = tf.gather_nd(orders, tf.stack([tf.cast(epoch - first, tf.int32),
                                               tf.cast(offset, tf.int32)], -1))
        batch_images = tf.gather(images, index)
        if classes.transform is not None:
            batch_images = classes.transform(batch_images)
        draw = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(
            tf.constant([seed, 8], tf.int64), step), worker)
        if augment is not None:
            batch_images = augment(batch_images, draw)
        if colour:
            batch_images = crop_and_flip(batch_images, tf.random.experimental.stateless_fold_in(
                draw, 1))
        return {"images": batch_images, "labels": tf.gather(labels, index)}

    steps = tf.data.Dataset.counter().map(lambda k: k + int(start_step))
    return unsharded(steps.map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


class PretrainRecipe(ClassifierRecipe):
    """Supervised pre-training trains on batches of `batch_size` examples; its head has as
    many outputs as the training split has classes unless `learner.num_classes` says."""

    batch_size_field = "batch_size"

    def arguments_from_data(self, arguments, dataset) -> dict:
        """`num_classes=None` becomes the training split's class count."""
        if arguments.get("num_classes") is None:
            return {"num_classes": dataset.split("train").num_classes}
        return {}


RECIPE = PretrainRecipe(Pretrain)

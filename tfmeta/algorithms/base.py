"""`MetaLearner`: the Keras model every tfmeta algorithm subclasses.

A learner wraps an ordinary backbone. Its inputs are meta-batches of episodes
(see `tfmeta.data.episodes`): dicts with `support_images [B, N*K, ...]`,
`support_labels [B, N*K]`, `query_images [B, M, ...]` and, for training and
evaluation, `query_labels [B, M]`. Because `train_step` and `test_step` take such
a batch, Keras does the rest:

    learner = tfmeta.algorithms.MAML(tfmeta.models.conv4(num_classes=5))
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    learner.fit(train_episodes, validation_data=val_episodes, steps_per_epoch=100)

Hooks, from the smallest to the largest a subclass overrides:

  query_logits(episodes, training)  adapt to each support set, score its queries
  query_loss(episodes, logits)      per-episode loss [B] (cross-entropy by default)
  compute_meta_gradients(episodes)  the gradient of the meta-loss (a tape over the
                                    batch by default; MAML loops over tasks)
  train_step(data)                  the whole meta-update (Reptile replaces it)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.data.episodes import EPISODE_KEYS


def replica_mean(loss):
    """Scales a per-replica mean so that the all-reduced SUM of gradients is the global mean."""
    return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


def cross_entropy(labels, logits):
    """Mean softmax cross-entropy over the last axis of labels; logits cast to float32."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32))
    return tf.reduce_mean(losses, axis=-1)


def accuracy(labels, logits):
    """Fraction of correct argmax predictions over the last axis of labels."""
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32),
                          axis=-1)


def num_ways(support_labels):
    """N, read from the labels (0..N-1) so one learner serves any number of ways."""
    return tf.reduce_max(support_labels) + 1


class MetaLearner(keras.Model):
    """Base class of tfmeta's learners; see the module docstring for the hooks."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    # ----------------------------------------------------------------- hooks
    def query_logits(self, episodes, training=False):
        """Adapts to each episode's support set and returns query logits `[B, M, N]`."""
        raise NotImplementedError(f"{type(self).__name__} must implement query_logits().")

    def query_loss(self, episodes, logits):
        """Per-episode loss `[B]`: query cross-entropy."""
        return cross_entropy(episodes["query_labels"], logits)

    def regularization_loss(self):
        """Weight penalties added to the meta-loss (Keras `self.losses` by default)."""
        return tf.add_n(self.losses) if self.losses else 0.0

    def compute_meta_gradients(self, episodes):
        """Returns (gradients for `trainable_variables`, mean meta-loss, query logits)."""
        with tf.GradientTape() as tape:
            logits = self.query_logits(episodes, training=True)
            loss = tf.reduce_mean(self.query_loss(episodes, logits)) + self.regularization_loss()
            scaled = self.optimizer.scale_loss(replica_mean(loss))
        return tape.gradient(scaled, self.trainable_variables), loss, logits

    # ------------------------------------------------------ Keras integration
    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def call(self, episodes, training=False):
        return self.query_logits(episodes, training=training)

    def train_step(self, data):
        episodes = check_episodes(data)
        gradients, loss, logits = self.compute_meta_gradients(episodes)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self.update_metrics(episodes, loss, logits)

    def test_step(self, data):
        episodes = check_episodes(data)
        logits = self.query_logits(episodes, training=False)
        loss = tf.reduce_mean(self.query_loss(episodes, logits))
        return self.update_metrics(episodes, loss, logits)

    def predict_step(self, data):
        return self.query_logits(check_episodes(data, labelled=False), training=False)

    def update_metrics(self, episodes, loss, logits):
        batch = tf.shape(episodes["query_labels"])[0]
        self.loss_tracker.update_state(loss, sample_weight=batch)
        self.accuracy_tracker.update_state(accuracy(episodes["query_labels"], logits))
        return {m.name: m.result() for m in self.metrics}

    # ----------------------------------------------------------------- serving
    @property
    def max_ways(self):
        """The most ways this learner serves (a fixed-size head), or None for any number."""
        return None

    def adapt_and_predict(self, support_images, support_labels, query_images):
        """One unbatched episode -> query logits `[m, N]` (N = max(support_labels) + 1)."""
        if self.max_ways is not None:
            k = self.max_ways
            tf.debugging.assert_less_equal(
                num_ways(support_labels), k,
                message=f"This {type(self).__name__} learner has {k} outputs, so it serves at "
                        f"most {k} ways; support_labels must be in 0..{k - 1}.")
        episodes = {"support_images": support_images[None],
                    "support_labels": support_labels[None],
                    "query_images": query_images[None]}
        logits = self.query_logits(episodes, training=False)[0]
        return logits[:, :num_ways(support_labels)]


def check_episodes(data, labelled=True):
    """Validates the structure of a meta-batch where it enters a learner."""
    if isinstance(data, tuple | list):  # Keras packs (x, y, sample_weight); x is the episodes
        data, _, _ = keras.utils.unpack_x_y_sample_weight(tuple(data))
    needed = EPISODE_KEYS if labelled else EPISODE_KEYS[:3]
    if not isinstance(data, dict) or any(k not in data for k in needed):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"A learner takes a dict of episode tensors with keys {list(needed)}; "
                         f"got {got}. Build batches with tfmeta.data.episode_dataset().")
    if data["support_images"].shape.rank is not None and data["support_images"].shape.rank < 3:
        raise ValueError("support_images must be batched as [B, N*K, ...]; got shape "
                         f"{data['support_images'].shape}.")
    return data

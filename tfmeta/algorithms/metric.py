"""What the metric-based learners share: one embedding pass per meta-batch and class pooling.

Prototypical, Matching, Relation and Siamese networks all classify a query by
comparing its embedding with the embeddings of the support set. None of them
adapts weights at test time: "adaptation" is embedding the support set (and, for
Prototypical and Relation networks, pooling it per class), so they serve any
number of ways N, read from the labels as `max(support_labels) + 1`.

`EmbeddingLearner.query_logits` embeds the support and query images of the whole
meta-batch in one backbone call (the meta-batch folded into the batch axis), then
hands the embeddings to the subclass's `compare`:

    support_features, query_features = embed(episodes)      # [B, N*K, *F], [B, M, *F]
    logits = compare(support_features, support_labels, query_features)   # [B, M, N]
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.algorithms.base import MetaLearner, num_ways


class EmbeddingLearner(MetaLearner):
    """A learner that scores queries against the support set in a learned embedding space.

    Args:
      encoder: a built Keras model mapping images `[n, H, W, C]` to features `[n, *F]`
        (a vector `[n, D]` or a feature map `[n, h, w, c]`).
    """

    def __init__(self, encoder: keras.Model, **kwargs):
        super().__init__(**kwargs)
        if not encoder.built:
            raise ValueError(f"{type(self).__name__} needs a built encoder; build "
                             f"{encoder.name!r} with an input shape.")
        self.encoder = encoder
        self.feature_shape = tuple(encoder.output_shape[1:])

    def compare(self, support_features, support_labels, query_features, training):
        """Query logits `[B, M, N]` from support features `[B, N*K, *F]`, labels `[B, N*K]`
        and query features `[B, M, *F]`."""
        raise NotImplementedError(f"{type(self).__name__} must implement compare().")

    def embed(self, episodes, training=False):
        """(support features `[B, N*K, *F]`, query features `[B, M, *F]`), float32.

        One encoder call on the support and query images of every episode; batch norm
        in training mode therefore normalizes over the whole meta-batch.
        """
        support, query = episodes["support_images"], episodes["query_images"]
        example_shape = support.shape[2:]
        batch, support_size = tf.shape(support)[0], tf.shape(support)[1]
        query_size = tf.shape(query)[1]
        images = tf.concat([tf.reshape(support, [-1, *example_shape]),
                            tf.reshape(query, [-1, *example_shape])], axis=0)
        features = tf.cast(self.encoder(images, training=training), tf.float32)
        split = batch * support_size
        support_features = tf.reshape(features[:split], [batch, support_size, *self.feature_shape])
        query_features = tf.reshape(features[split:], [batch, query_size, *self.feature_shape])
        return support_features, query_features

    def query_logits(self, episodes, training=False):
        support_features, query_features = self.embed(episodes, training)
        labels = tf.cast(episodes["support_labels"], tf.int32)
        return self.compare(support_features, labels, query_features, training)


def one_hot_classes(support_labels, ways=None):
    """`[B, N*K]` labels -> one-hot `[B, N*K, N]` float32 (N from the labels by default)."""
    ways = num_ways(support_labels) if ways is None else ways
    return tf.one_hot(support_labels, ways, dtype=tf.float32)


def class_sums(support_features, support_labels, ways=None):
    """Per-class sums of support features: `[B, N*K, *F]` -> `[B, N, *F]`.

    A one-hot matmul per episode, so the support set may be in any order and N is
    whatever the labels say.
    """
    one_hot = one_hot_classes(support_labels, ways)
    shape = tf.shape(support_features)
    flat = tf.reshape(support_features, [shape[0], shape[1], -1])
    sums = tf.einsum("bsn,bsd->bnd", one_hot, flat)
    return tf.reshape(sums, tf.concat([[shape[0], tf.shape(one_hot)[2]], shape[2:]], axis=0))


def class_means(support_features, support_labels, ways=None):
    """Per-class means (prototypes): `[B, N*K, D]` -> `[B, N, D]`."""
    one_hot = one_hot_classes(support_labels, ways)
    counts = tf.reduce_sum(one_hot, axis=1)  # [B, N]
    sums = tf.einsum("bsn,bsd->bnd", one_hot, support_features)
    # A class without examples would divide by zero; it can only arise from labels
    # with gaps, and then its prototype is 0 rather than NaN.
    return sums / tf.maximum(counts, 1.0)[..., None]


def squared_euclidean(queries, centers):
    """`||q - c||^2` for every pair: `[B, M, D]`, `[B, N, D]` -> `[B, M, N]`."""
    difference = queries[:, :, None, :] - centers[:, None, :, :]
    return tf.reduce_sum(tf.square(difference), axis=-1)


def cosine_similarity(queries, keys, epsilon=1e-8):
    """`q.k / (|q| |k|)` for every pair: `[B, M, D]`, `[B, S, D]` -> `[B, M, S]`."""
    queries = queries * tf.math.rsqrt(tf.reduce_sum(tf.square(queries), -1, keepdims=True) + epsilon)
    keys = keys * tf.math.rsqrt(tf.reduce_sum(tf.square(keys), -1, keepdims=True) + epsilon)
    return tf.einsum("bmd,bsd->bms", queries, keys)


def check_flat_features(learner_name, feature_shape):
    """Raises a ValueError unless the encoder returns vectors `[n, D]`."""
    if len(feature_shape) != 1:
        raise ValueError(f"{learner_name} compares feature vectors, but the encoder returns "
                         f"features of shape {feature_shape}; use a backbone with flatten=True.")


def build_from_config(learner_class, config, input_shape):
    """`learner_class(encoder, **config.learner)` with the encoder `config.model` names."""
    from tfmeta.models import backbone_from_config

    encoder = backbone_from_config(config.model, input_shape)
    return learner_class(encoder, **config.learner)

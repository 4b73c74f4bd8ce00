"""Tensor helpers every learner shares: losses, class pooling, similarities, meta-batch folding.

Shapes use the episode notation of `tfmeta.data.episodes`: B episodes per meta-batch,
N ways, K shots, S = N*K support examples, M queries, D feature size.
"""

from __future__ import annotations

import tensorflow as tf


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


def one_hot_classes(support_labels, ways=None):
    """`[B, S]` labels -> one-hot `[B, S, N]` float32 (N from the labels by default)."""
    ways = num_ways(support_labels) if ways is None else ways
    return tf.one_hot(tf.cast(support_labels, tf.int32), ways, dtype=tf.float32)


def class_sums(features, labels, ways=None):
    """Per-class sums: `[B, S, *F]` -> `[B, N, *F]`.

    A one-hot matmul per episode, so the examples may be in any order and N is
    whatever the labels say.
    """
    one_hot = one_hot_classes(labels, ways)
    shape = tf.shape(features)
    flat = tf.reshape(features, [shape[0], shape[1], -1])
    sums = tf.einsum("bsn,bsd->bnd", one_hot, tf.cast(flat, tf.float32))
    return tf.reshape(sums, tf.concat([[shape[0], tf.shape(one_hot)[2]], shape[2:]], axis=0))


def class_means(features, labels, ways=None):
    """Per-class means (prototypes): `[B, S, *F]` -> `[B, N, *F]`.

    A class without examples (labels with gaps, which serving rejects) gets 0, not NaN.
    """
    one_hot = one_hot_classes(labels, ways)
    counts = tf.reduce_sum(one_hot, axis=1)  # [B, N]
    sums = class_sums(features, labels, ways)
    extra_axes = tf.ones([tf.rank(sums) - 2], tf.int32)
    counts = tf.reshape(counts, tf.concat([tf.shape(counts), extra_axes], 0))
    return sums / tf.maximum(counts, 1.0)


def squared_euclidean(queries, centers):
    """`||q - c||^2` for every pair: `[B, M, D]`, `[B, N, D]` -> `[B, M, N]`."""
    difference = queries[:, :, None, :] - centers[:, None, :, :]
    return tf.reduce_sum(tf.square(difference), axis=-1)


def l2_normalize(x, epsilon=1e-12):
    """`x / sqrt(max(|x|^2, epsilon))` along the last axis (finite at x = 0)."""
    return tf.math.l2_normalize(x, axis=-1, epsilon=epsilon)


def cosine_similarity(queries, keys, epsilon=1e-12):
    """`q.k / (|q| |k|)` for every pair: `[B, M, D]`, `[B, S, D]` -> `[B, M, S]`.

    Leading axes may be any batch axes shared by both arguments (`[R, H, D]`,
    `[R, S, D]` -> `[R, H, S]` for a memory's read heads).
    """
    return tf.linalg.matmul(l2_normalize(queries, epsilon), l2_normalize(keys, epsilon),
                            transpose_b=True)


def _tail(tensor, start):
    """The shape from axis `start` on: static where known (so Keras layers see it)."""
    static = tensor.shape[start:]
    if static.is_fully_defined():
        return tf.constant(static.as_list(), tf.int32, shape=[len(static)])
    return tf.shape(tensor)[start:]


def fold(tensor):
    """`[B, n, *shape]` -> `[B * n, *shape]`: a meta-batch as one batch for a backbone."""
    return tf.reshape(tensor, tf.concat([[-1], _tail(tensor, 2)], 0))


def unfold(tensor, batch):
    """`[B * n, *shape]` -> `[B, n, *shape]`, the inverse of `fold` for a known B."""
    return tf.reshape(tensor, tf.concat([[batch, -1], _tail(tensor, 1)], 0))


def embed_support_and_query(network, support, query, training):
    """One call of `network` on the support and query examples of every episode.

    `support [B, S, ...]`, `query [B, M, ...]` -> (`[B, S, *F]`, `[B, M, *F]`) float32.
    Batch norm in training mode therefore normalizes over the whole meta-batch.
    """
    batch, support_size = tf.shape(support)[0], tf.shape(support)[1]
    features = tf.cast(network(tf.concat([fold(support), fold(query)], 0), training=training),
                       tf.float32)
    split = batch * support_size
    return unfold(features[:split], batch), unfold(features[split:], batch)

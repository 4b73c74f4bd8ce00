"""Tensor helpers every learner shares: losses, class pooling, similarities, meta-batch folding.

Shapes use the episode notation of `tfmeta.data.episodes`: B episodes per meta-batch,
N ways, K shots, S = N*K support examples, M queries, D feature size.

Padding. A variable episode (`tfmeta.data.variable_sampling`) is padded to static shapes:
its real examples come first and the padding slots after them carry the label -1. The
helpers here count real examples only: the losses and the accuracy average over real
queries, and a padding label's one-hot row is zero (`tf.one_hot` of -1), so class sums and
means never see it. An ordinary episode has no -1 label, and on it every helper gives
exactly the numbers it gave before padding existed.
"""

from __future__ import annotations

import tensorflow as tf

# The logit of a class that an episode does not have: softmax gives it exactly 0 and its
# gradient is 0, where -inf would give NaN gradients (inf - inf in the softmax's backward).
ABSENT_LOGIT = -1e9


def real(labels):
    """Which examples are real, not padding: labels `[..., n]` -> bool `[..., n]`."""
    return tf.cast(labels, tf.int32) >= 0


def absent_logit(dtype):
    """`ABSENT_LOGIT` in `dtype`, or its most negative finite value (float16's is -65504)."""
    dtype = tf.as_dtype(dtype)
    return tf.constant(max(ABSENT_LOGIT, dtype.min), dtype)


def _real_mean(values, mask):
    """Mean of `values [..., n]` over the last axis where `mask`; an episode without real
    entries gets 0.

    Written as the plain mean times n / count rather than sum / count: without padding the
    factor is exactly 1, so the number (and its gradient) is bit for bit the plain mean's
    however the mean is computed (XLA's differs from sum / n in the last bit).
    """
    count = tf.reduce_sum(tf.cast(mask, values.dtype), axis=-1)
    size = tf.cast(tf.shape(values)[-1], values.dtype)
    mean = tf.reduce_mean(tf.where(mask, values, tf.zeros_like(values)), axis=-1)
    return mean * (size / tf.maximum(count, 1.0))


def cross_entropy(labels, logits):
    """Mean softmax cross-entropy over the last axis of labels, real labels only (-1 is
    padding and counts for nothing); logits cast to float32.

    labels `[..., M]`, logits `[..., M, N]` -> `[...]`.
    """
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(logits, tf.float32)
    mask = real(labels)
    # A padding row gets label 0 and zero logits: the op rejects -1, and a padding query's
    # logits may be anything (inf, NaN) that would reach the gradient through the mask.
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(labels, 0), logits=tf.where(mask[..., None], logits, 0.0))
    return _real_mean(losses, mask)


def accuracy(labels, logits):
    """Fraction of correct argmax predictions over the last axis of labels, real labels only.

    labels `[..., M]`, logits `[..., M, N]` -> `[...]`.
    """
    labels = tf.cast(labels, tf.int32)
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return _real_mean(tf.cast(tf.equal(predictions, labels), tf.float32), real(labels))


def num_ways(support_labels):
    """N, read from the labels (0..N-1) so one learner serves any number of ways.

    Of a meta-batch `[B, S]`, the most ways of its episodes: the width of its logits, in
    which an episode with fewer ways has absent classes (`mask_absent_classes`).
    """
    return tf.reduce_max(support_labels) + 1


def one_hot_classes(support_labels, ways=None):
    """`[B, S]` labels -> one-hot `[B, S, N]` float32 (N from the labels by default).

    A padding label (-1) gets a row of zeros, so whatever sums over this one-hot (class
    sums, means, counts) leaves padding out.
    """
    ways = num_ways(support_labels) if ways is None else ways
    return tf.one_hot(tf.cast(support_labels, tf.int32), ways, dtype=tf.float32)


def class_sums(features, labels, ways=None):
    """Per-class sums: `[B, S, *F]` -> `[B, N, *F]`.

    A one-hot matmul per episode, so the examples may be in any order and N is
    whatever the labels say. Padding (label -1) is weighted by 0, so its features must be
    finite (`embed_support_and_query` gives it zeros).
    """
    one_hot = one_hot_classes(labels, ways)
    shape = tf.shape(features)
    flat = tf.reshape(features, [shape[0], shape[1], -1])
    sums = tf.einsum("bsn,bsd->bnd", one_hot, tf.cast(flat, tf.float32))
    return tf.reshape(sums, tf.concat([[shape[0], tf.shape(one_hot)[2]], shape[2:]], axis=0))


def class_means(features, labels, ways=None):
    """Per-class means (prototypes): `[B, S, *F]` -> `[B, N, *F]`.

    A class without examples (labels with gaps, which serving rejects, or ways beyond a
    padded episode's own) gets 0, not NaN; padding (label -1) is in no class.
    """
    one_hot = one_hot_classes(labels, ways)
    counts = tf.reduce_sum(one_hot, axis=1)  # [B, N]
    sums = class_sums(features, labels, ways)
    extra_axes = tf.ones([tf.rank(sums) - 2], tf.int32)
    counts = tf.reshape(counts, tf.concat([tf.shape(counts), extra_axes], 0))
    return sums / tf.maximum(counts, 1.0)


def mask_absent_classes(logits, support_labels):
    """Logits of the classes without a support example set to `ABSENT_LOGIT`, so softmax
    and argmax ignore them: logits `[..., M, W]`, support labels `[..., S]` -> `[..., M, W]`.

    A meta-batch's logits are as wide as its episode with the most ways (`num_ways`); an
    episode with fewer has classes N..W-1 without support. Where every class has one (an
    ordinary episode) the logits come back unchanged.
    """
    counts = tf.reduce_sum(one_hot_classes(support_labels, tf.shape(logits)[-1]), axis=-2)
    present = tf.expand_dims(counts > 0, -2)                              # [..., 1, W]
    return tf.where(present, logits, absent_logit(logits.dtype))


def softmax_over_real(scores, support_labels):
    """Softmax over the last axis of `scores [..., M, S]`, one column per support example,
    padding columns (label -1) given no weight; support labels `[..., S]`."""
    keep = tf.expand_dims(real(support_labels), -2)                       # [..., 1, S]
    return tf.nn.softmax(tf.where(keep, scores, absent_logit(scores.dtype)), axis=-1)


def real_positions(labels):
    """Positions of the real examples among flat labels: `[n]` -> int64 `[r]`."""
    return tf.where(real(labels))[:, 0]


def scatter_rows(rows, positions, count):
    """`rows [r, *F]` placed at `positions [r]` of a `[count, *F]` tensor of zeros: the
    inverse of gathering a padded batch's real rows."""
    shape = tf.concat([tf.reshape(tf.cast(count, tf.int64), [1]),
                       tf.shape(rows, out_type=tf.int64)[1:]], 0)
    scattered = tf.scatter_nd(positions[:, None], rows, shape)
    scattered.set_shape([None, *rows.shape[1:]])  # static feature axes, for Keras layers after
    return scattered


def linear_head_gradients(features, labels, kernel, bias):
    """The gradients of `cross_entropy(labels, features @ kernel + bias)` (the mean over the
    examples) with respect to `[kernel, bias]`, written out instead of taped:

        p = softmax(features @ kernel + bias)                  # [n, C]
        e = (p - one_hot(labels, C)) / n
        grads = [features^T e, sum(e over the examples)]

    features `[n, D]`, int labels `[n]` (all real), kernel `[D, C]`, bias `[C]`. An export
    that adapts a linear head this way needs no gradient ops (LiteRT, ONNX)."""
    probabilities = tf.nn.softmax(tf.matmul(features, kernel) + bias)
    targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(kernel)[1], dtype=features.dtype)
    error = (probabilities - targets) / tf.cast(tf.shape(features)[0], features.dtype)
    return [tf.matmul(features, error, transpose_a=True), tf.reduce_sum(error, axis=0)]


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


def embed_support_and_query(network, support, query, training, support_labels=None,
                            query_labels=None):
    """One call of `network` on the support and query examples of every episode.

    `support [B, S, ...]`, `query [B, M, ...]` -> (`[B, S, *F]`, `[B, M, *F]`) float32.
    Batch norm in training mode therefore normalizes over the whole meta-batch.

    Given `support_labels [B, S]` (and `query_labels [B, M]`, absent when serving: then
    every query is real), the network sees only the real examples, so padding (label -1)
    never enters batch-norm statistics, and padding slots get zero features. An episode
    without padding is gathered whole, in order, so the network sees what it saw before
    (in a compiled function the batch size is then dynamic, which may move a gradient by an
    ulp where a kernel sums in another order).
    """
    batch, support_size = tf.shape(support)[0], tf.shape(support)[1]
    examples = tf.concat([fold(support), fold(query)], 0)
    if support_labels is None:
        features = tf.cast(network(examples, training=training), tf.float32)
    else:
        if query_labels is None:
            query_labels = tf.zeros(tf.shape(query)[:2], tf.int32)
        labels = tf.concat([tf.reshape(tf.cast(support_labels, tf.int32), [-1]),
                            tf.reshape(tf.cast(query_labels, tf.int32), [-1])], 0)
        positions = real_positions(labels)
        features = tf.cast(network(tf.gather(examples, positions), training=training),
                           tf.float32)
        features = scatter_rows(features, positions, tf.shape(labels)[0])
    split = batch * support_size
    return unfold(features[:split], batch), unfold(features[split:], batch)

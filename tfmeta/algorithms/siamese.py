"""Siamese Neural Networks for one-shot image recognition (Koch, Zemel and Salakhutdinov,
ICML 2015 Deep Learning workshop).

https://www.cs.cmu.edu/~rsalakhu/papers/oneshot1.pdf. A twin network embeds two
images; a weighted L1 distance and a sigmoid give the probability that they show
the same class. It is trained for verification on same/different pairs and used
for one-shot classification by the most similar support example:

    p(x1, x2) = sigmoid(sum_j alpha_j * |h(x1)_j - h(x2)_j| + bias)
    pairs of an episode: (query_m, support_i), same = (label_m == label_i)   # [B, M, N*K]
    loss = (mean(bce(p, 1) over same pairs) + mean(bce(p, 0) over different pairs)) / 2
    params = optimizer.apply(grad(loss, params), params)
    logits[m, n] = max(logit p(query_m, x_i) for x_i in support if label(x_i) == n)

Pairs are taken from meta-training episodes: every query against every support
example. An N-way episode has N - 1 different pairs per same pair, so the two
kinds are averaged separately and weighted equally, as in the paper's balanced
pair sets.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.algorithms.episodic import ClassifierRecipe
from tfmeta.algorithms.metric import EmbeddingLearner, check_flat_features
from tfmeta.tensors import one_hot_classes

ABSENT = -1e9  # logit of a class with no support example (labels with gaps)


def best_shot_logits(pair_logits, support_labels):
    """Per class, the highest pair logit over its shots: `[B, M, N*K]` -> `[B, M, N]`."""
    # (expand_dims, not `[..., None]`: LiteRT has no strided slice with an ellipsis and a
    # new axis)
    in_class = tf.expand_dims(one_hot_classes(support_labels), 1) > 0  # [B, 1, N*K, N]
    masked = tf.where(in_class, tf.expand_dims(pair_logits, -1), ABSENT)
    return tf.reduce_max(masked, axis=2)


def verification_loss(pair_logits, same):
    """Balanced binary cross-entropy `[B]` of pair logits `[B, M, S]` against `same` (bool)."""
    same = tf.cast(same, tf.float32)
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=same, logits=pair_logits)
    axes = [1, 2]
    positive = tf.reduce_sum(losses * same, axes) / tf.maximum(tf.reduce_sum(same, axes), 1.0)
    different = 1.0 - same
    negative = (tf.reduce_sum(losses * different, axes)
                / tf.maximum(tf.reduce_sum(different, axes), 1.0))
    return 0.5 * (positive + negative)


class SiameseNetwork(EmbeddingLearner):
    """Siamese Networks around any backbone of images to feature vectors (the twin).

    Example:

        siamese = SiameseNetwork(tfmeta.models.siamese_net.siamese_twin((28, 28, 1)))
        siamese.compile(optimizer=keras.optimizers.Adam(1e-3))
        siamese.fit(episode_dataset(train_classes, EpisodeShape(5, 1, 5), meta_batch_size=8), ...)

    Args:
      backbone: a built Keras model mapping images to `[n, D]` features.
    """

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(backbone, **kwargs)
        check_flat_features(type(self).__name__, self.feature_shape)
        # alpha_j and the bias of the weighted L1 distance.
        self.weighted_l1 = keras.layers.Dense(1, name="weighted_l1")
        self.weighted_l1.build((None, self.feature_shape[0]))

    def pair_logits(self, support_features, query_features):
        """Logits of p(query_m, x_i) for every pair of an episode, `[B, M, N*K]`."""
        distance = tf.abs(query_features[:, :, None] - support_features[:, None])
        return tf.squeeze(tf.cast(self.weighted_l1(distance), tf.float32), -1)

    def compare(self, support_features, support_labels, query_features, training):
        return best_shot_logits(self.pair_logits(support_features, query_features),
                                support_labels)

    def query_loss(self, episodes, logits):
        """Verification loss `[B]` of the best-shot logits; the training loss when K = 1."""
        logits = tf.cast(logits, tf.float32)
        ways = tf.shape(logits)[-1]
        same = tf.range(ways)[None, None] == tf.cast(episodes["query_labels"], tf.int32)[..., None]
        return verification_loss(logits, same)

    def meta_loss(self, episodes):
        """The verification loss on every (query, support) pair of the meta-batch."""
        support_labels = tf.cast(episodes["support_labels"], tf.int32)
        same = (tf.cast(episodes["query_labels"], tf.int32)[:, :, None]
                == support_labels[:, None, :])
        support_features, query_features = self.embed(episodes, training=True)
        pair_logits = self.pair_logits(support_features, query_features)
        loss = tf.reduce_mean(verification_loss(pair_logits, same)) + self.regularization_loss()
        return loss, best_shot_logits(pair_logits, support_labels)


RECIPE = ClassifierRecipe(SiameseNetwork)

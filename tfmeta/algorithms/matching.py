"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, NeurIPS 2016).

https://arxiv.org/abs/1606.04080. A query's label distribution is an attention-
weighted sum of the support labels, the attention a softmax over cosine
similarities between the query's and the support examples' embeddings:

    a[m, i] = softmax_i(cosine(f(query_m, S), g(x_i, S)))       # [B, M, N*K]
    y_hat[m] = sum_i a[m, i] * one_hot(y_i)                      # [B, M, N]
    loss = -log(y_hat[m, query_label_m])
    params = optimizer.apply(grad(loss, params), params)

Without full context embeddings (`fce=False`) f and g are the same backbone f'. With
`fce=True` (the paper's "full context embeddings"):

    g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)        # a bidirectional LSTM over the support set
    f(x, S)   = attLSTM(f'(x), g(S), processing_steps):
        h_hat_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})
        h_k = h_hat_k + f'(x)
        r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i)
    f(x, S) = h_K

The read-out r_{k-1} is fed to the LSTM cell as part of its input rather than of
its hidden state: the gates are linear in the concatenation [x, h, r], so the two
are the same function. `query_logits` returns log(y_hat), so the usual softmax
cross-entropy on them is the paper's loss and argmax is the paper's prediction.

On padded variable episodes (support labels -1 in the padding) every softmax over the
support set (a, the read-out r) gives padding no weight, the bidirectional LSTM skips it
(a Keras mask), and the classes an episode lacks get logit -1e9.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.algorithms.episodic import ClassifierRecipe
from tfmeta.algorithms.metric import EmbeddingLearner, check_flat_features
from tfmeta.errors import UserError
from tfmeta.ranges import POSITIVE_INT
from tfmeta.tensors import (
    cosine_similarity,
    mask_absent_classes,
    one_hot_classes,
    real,
    softmax_over_real,
)

LOG_EPSILON = 1e-12  # log(0) guard for classes with (numerically) zero attention


class MatchingNetwork(EmbeddingLearner):
    """Matching Networks around any backbone of images to feature vectors.

    Example:

        matching = MatchingNetwork(tfmeta.models.conv4((28, 28, 1)), fce=True)
        matching.compile(optimizer=keras.optimizers.Adam(1e-3))
        matching.fit(episode_dataset(train_classes, EpisodeShape(5, 1, 15),
                                     meta_batch_size=16), ...)

    Args:
      backbone: a built Keras model mapping images to `[n, D]` features (f' = g').
      fce: use full context embeddings (the LSTMs above).
      processing_steps: K, the attention LSTM's steps over the support set (fce only).
    """

    takes_padded_episodes = True
    argument_ranges = {"processing_steps": POSITIVE_INT}

    def __init__(self, backbone: keras.Model, fce: bool = False, processing_steps: int = 5,
                 **kwargs):
        super().__init__(backbone, **kwargs)
        check_flat_features(type(self).__name__, self.feature_shape)
        if int(processing_steps) != processing_steps or processing_steps < 1:
            raise UserError(f"processing_steps must be a positive integer; got "
                            f"{processing_steps!r}.")
        self.fce = bool(fce)
        self.processing_steps = int(processing_steps)
        if self.fce:
            units = self.feature_shape[0]
            self.support_lstm = keras.layers.Bidirectional(
                keras.layers.LSTM(units, return_sequences=True), merge_mode="sum",
                name="support_lstm")
            self.support_lstm.build((None, None, units))
            self.attention_cell = keras.layers.LSTMCell(units, name="attention_lstm")
            self.attention_cell.build((None, 2 * units))

    # ------------------------------------------------------------- embeddings
    def support_embedding(self, support_features, training, support_labels=None):
        """g(x_i, S) `[B, N*K, D]`: g'(x_i) plus, with FCE, the bidirectional LSTM states.

        `support_labels [B, N*K]`, where given, mask padding (label -1) out of the LSTM:
        padding follows the real examples, so each direction reads the real ones only."""
        if not self.fce:
            return support_features
        mask = None if support_labels is None else real(support_labels)
        return support_features + self.support_lstm(support_features, mask=mask,
                                                    training=training)

    def query_embedding(self, query_features, support_embeddings, training,
                        support_labels=None):
        """f(x, S) `[B, M, D]`: f'(x) or, with FCE, the attention LSTM's last output, its
        read-outs over the real support examples where `support_labels` are given."""
        if not self.fce:
            return query_features
        if support_labels is None:
            support_labels = tf.zeros(tf.shape(support_embeddings)[:2], tf.int32)
        shape = tf.shape(query_features)
        units = self.feature_shape[0]
        flat_query = tf.reshape(query_features, [-1, units])  # [B*M, D]
        h = c = r = tf.zeros_like(flat_query)  # the paper leaves the start state open
        for _ in range(self.processing_steps):
            h_hat, (h, c) = self.attention_cell(tf.concat([flat_query, r], -1), [h, c],
                                                training=training)
            h = h_hat + flat_query
            per_episode = tf.reshape(h, shape)  # [B, M, D]
            attention = softmax_over_real(
                tf.einsum("bmd,bsd->bms", per_episode, support_embeddings), support_labels)
            r = tf.reshape(tf.einsum("bms,bsd->bmd", attention, support_embeddings), [-1, units])
        return tf.reshape(h, shape)

    # ------------------------------------------------------------ the method
    def attention(self, support_features, support_labels, query_features, training):
        """a[m, i]: softmax over the real support examples of cosine similarities,
        `[B, M, N*K]` (0 at padding)."""
        support_embeddings = self.support_embedding(support_features, training, support_labels)
        query_embeddings = self.query_embedding(query_features, support_embeddings, training,
                                                support_labels)
        return softmax_over_real(cosine_similarity(query_embeddings, support_embeddings),
                                 support_labels)

    def compare(self, support_features, support_labels, query_features, training):
        attention = self.attention(support_features, support_labels, query_features, training)
        label_distribution = tf.einsum("bms,bsn->bmn", attention,
                                       one_hot_classes(support_labels))
        return mask_absent_classes(tf.math.log(label_distribution + LOG_EPSILON),
                                   support_labels)


RECIPE = ClassifierRecipe(MatchingNetwork)

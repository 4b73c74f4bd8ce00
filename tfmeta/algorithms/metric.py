"""What the metric-based learners share: one embedding pass per meta-batch and class pooling.

Prototypical, Matching, Relation and Siamese networks all classify a query by
comparing its embedding with the embeddings of the support set. As trained, none of
them adapts weights at test time: "adaptation" is embedding the support set (and, for
Prototypical and Relation networks, pooling it per class), so they serve any
number of ways N, read from the labels as `max(support_labels) + 1`. With
`finetune_steps > 0` each fine-tunes a copy of its backbone on every test episode's support
set first (P>M>F, `tfmeta.algorithms.finetune`), with `compare` as the head.

`EmbeddingLearner.query_logits` embeds the support and query images of the whole
meta-batch in one backbone call (the meta-batch folded into the batch axis), then
hands the embeddings to the subclass's `compare`:

    support_features, query_features = embed(episodes)      # [B, N*K, *F], [B, M, *F]
    logits = compare(support_features, support_labels, query_features)   # [B, M, N]

Padded variable episodes (labels -1 in the padding, `tfmeta.tensors`): `embed` runs the
backbone on the real examples only and gives padding zero features; a learner whose
`compare` leaves padding and absent classes out says so with `takes_padded_episodes = True`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.algorithms.finetune import FineTuningClassifier
from tfmeta.errors import UserError
from tfmeta.tensors import embed_support_and_query


class EmbeddingLearner(FineTuningClassifier):
    """A learner that scores queries against the support set in a learned embedding space.

    Args:
      backbone: a built Keras model mapping images `[n, H, W, C]` to features `[n, *F]`
        (a vector `[n, D]` or a feature map `[n, h, w, c]`).
      finetune_steps, finetune_lr, finetune_augment, finetune_optimizer: fine-tuning the
        backbone on each test episode's support set (`tfmeta.algorithms.finetune`; off with
        the default `finetune_steps=0`).
    """

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(backbone, **kwargs)
        self.feature_shape = tuple(backbone.output_shape[1:])

    def compare(self, support_features, support_labels, query_features, training):
        """Query logits `[B, M, N]` from support features `[B, N*K, *F]`, labels `[B, N*K]`
        and query features `[B, M, *F]`."""
        raise NotImplementedError(f"{type(self).__name__} must implement compare().")

    def embed(self, episodes, training=False):
        """(support features `[B, N*K, *F]`, query features `[B, M, *F]`), float32, from one
        backbone call on the real support and query images of every episode (batch norm in
        training mode therefore normalizes over the whole meta-batch, padding left out)."""
        return embed_support_and_query(self.backbone, episodes["support_images"],
                                       episodes["query_images"], training,
                                       episodes["support_labels"], episodes.get("query_labels"))

    def query_logits(self, episodes, training=False):
        support_features, query_features = self.embed(episodes, training)
        labels = tf.cast(episodes["support_labels"], tf.int32)
        return self.compare(support_features, labels, query_features, training)

    def feature_model(self) -> keras.Model:
        return self.backbone


def check_flat_features(learner_name, feature_shape):
    """Raises a ValueError unless the backbone returns vectors `[n, D]`."""
    if len(feature_shape) != 1:
        raise UserError(f"{learner_name} compares feature vectors, but the backbone returns "
                        f"features of shape {feature_shape}; use a backbone with flatten=True.")

"""Prototypical Networks (Snell, Swersky and Zemel, NeurIPS 2017).

https://arxiv.org/abs/1703.05175. Each class is represented by its prototype, the
mean embedding of its support examples, and a query is classified by a softmax
over negative distances to the prototypes:

    c_n = mean(f(x) for x in support if label(x) == n)          # [B, N, D]
    logits[m, n] = -d(f(query_m), c_n)                          # [B, M, N]
    loss = cross_entropy(query_labels, logits)
    params = optimizer.apply(grad(loss, params), params)

`distance="squared_euclidean"` (the paper's choice, a Bregman divergence that makes
the classifier linear in f) or `"cosine"` (logits = cosine similarity, which the
paper reports to work worse). The paper trains with more ways than it tests
(60-way on Omniglot); as nothing here depends on N, the same weights serve any N.

On padded variable episodes the prototypes are means of the real support examples and
the classes an episode lacks (beyond its own N in a wider meta-batch) get logit -1e9.
"""

from __future__ import annotations

import keras

from tfmeta.algorithms.episodic import ClassifierRecipe
from tfmeta.algorithms.metric import EmbeddingLearner, check_flat_features
from tfmeta.ranges import Choice
from tfmeta.tensors import (
    class_means,
    cosine_similarity,
    mask_absent_classes,
    squared_euclidean,
)

DISTANCES = ("squared_euclidean", "cosine")


class PrototypicalNetwork(EmbeddingLearner):
    """Prototypical Networks around any backbone of images to feature vectors.

    Example:

        backbone = tfmeta.models.conv4((28, 28, 1))          # 64-d features
        protonet = PrototypicalNetwork(backbone)
        protonet.compile(optimizer=keras.optimizers.Adam(1e-3))
        protonet.fit(episode_dataset(train_classes, EpisodeShape(60, 1, 5), meta_batch_size=1), ...)
        logits = protonet.adapt_and_predict(support_images, support_labels, query_images)

    Args:
      backbone: a built Keras model mapping images to `[n, D]` features.
      distance: "squared_euclidean" or "cosine".
    """

    takes_padded_episodes = True
    argument_ranges = {"distance": Choice(DISTANCES)}

    def __init__(self, backbone: keras.Model, distance: str = "squared_euclidean", **kwargs):
        super().__init__(backbone, **kwargs)
        self.check_arguments({"distance": distance})
        check_flat_features(type(self).__name__, self.feature_shape)
        self.distance = distance

    def prototypes(self, support_features, support_labels):
        """Class prototypes `[B, N, D]`: the mean support embedding of each class (padding,
        label -1, is in no class)."""
        return class_means(support_features, support_labels)

    def compare(self, support_features, support_labels, query_features, training):
        prototypes = self.prototypes(support_features, support_labels)
        if self.distance == "cosine":
            logits = cosine_similarity(query_features, prototypes)
        else:
            logits = -squared_euclidean(query_features, prototypes)
        return mask_absent_classes(logits, support_labels)


RECIPE = ClassifierRecipe(PrototypicalNetwork)

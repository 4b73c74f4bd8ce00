"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr and Hospedales, CVPR 2018).

https://arxiv.org/abs/1711.06025. An embedding f keeps feature maps; the feature
maps of a class's shots are summed, concatenated with a query's along the
channels, and a learned relation module g scores the pair in [0, 1]. Training
regresses the scores onto one-hot targets with mean squared error:

    c_n = sum(f(x) for x in support if label(x) == n)             # [B, N, h, w, c]
    r[m, n] = sigmoid(g(concat(f(query_m), c_n)))                 # [B, M, N]
    loss = mean((r[m, n] - (query_label_m == n)) ** 2)
    params = optimizer.apply(grad(loss, params), params)          # f and g together

`query_logits` returns the relation module's pre-sigmoid outputs, so argmax is the
paper's prediction and sigmoid(logits) its relation scores.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.algorithms.episodic import ClassifierRecipe
from tfmeta.algorithms.metric import EmbeddingLearner
from tfmeta.errors import UserError
from tfmeta.models.relation_net import relation_module as build_relation_module
from tfmeta.ranges import POSITIVE_INT
from tfmeta.tensors import class_sums


class RelationNetwork(EmbeddingLearner):
    """Relation Networks around a backbone of images to feature maps.

    Example:

        backbone = tfmeta.models.relation_net.relation_embedding((28, 28, 1))
        relation = RelationNetwork(backbone)
        relation.compile(optimizer=keras.optimizers.Adam(1e-3))
        relation.fit(episode_dataset(train_classes, EpisodeShape(5, 1, 19), meta_batch_size=1), ...)

    Args:
      backbone: a built Keras model mapping images to feature maps `[n, h, w, c]`.
      relation_module: a built Keras model mapping pairs `[n, h, w, 2c]` to `[n, 1]`
        pre-sigmoid scores; by default the paper's, with the two arguments below.
      relation_filters: filters of the default relation module's convolutions.
      relation_units: units of its hidden fully connected layer.
    """

    argument_ranges = {"relation_filters": POSITIVE_INT, "relation_units": POSITIVE_INT}

    def __init__(self, backbone: keras.Model, relation_module: keras.Model | None = None,
                 relation_filters: int = 64, relation_units: int = 8, **kwargs):
        super().__init__(backbone, **kwargs)
        self.check_arguments(locals())
        if len(self.feature_shape) != 3:
            raise UserError(f"RelationNetwork compares feature maps [h, w, c], but the backbone "
                            f"returns features of shape {self.feature_shape}; use a backbone "
                            "that does not flatten, such as relation_embedding.")
        pair_shape = (*self.feature_shape[:2], 2 * self.feature_shape[2])
        if relation_module is None:
            relation_module = build_relation_module(pair_shape, relation_filters, relation_units)
        if tuple(relation_module.input_shape[1:]) != pair_shape:
            raise UserError(f"The relation module takes inputs of shape "
                            f"{relation_module.input_shape[1:]}, but pairs of these features "
                            f"have shape {pair_shape}.")
        self.relation_module = relation_module

    def relation_scores(self, logits):
        """r in [0, 1] from the logits `query_logits` returns."""
        return tf.sigmoid(logits)

    def compare(self, support_features, support_labels, query_features, training):
        class_features = class_sums(support_features, support_labels)  # [B, N, h, w, c]
        ways = tf.shape(class_features)[1]
        batch, queries = tf.shape(query_features)[0], tf.shape(query_features)[1]
        pair_shape = [batch, queries, ways, *self.feature_shape]
        pairs = tf.concat([tf.broadcast_to(query_features[:, :, None], pair_shape),
                           tf.broadcast_to(class_features[:, None], pair_shape)], axis=-1)
        height, width, channels = self.feature_shape
        scores = self.relation_module(tf.reshape(pairs, [-1, height, width, 2 * channels]),
                                      training=training)
        return tf.reshape(tf.cast(scores, tf.float32), [batch, queries, ways])

    def query_loss(self, episodes, logits):
        """Per-episode mean squared error of the relation scores against one-hot targets `[B]`."""
        logits = tf.cast(logits, tf.float32)
        targets = tf.one_hot(episodes["query_labels"], tf.shape(logits)[-1], dtype=tf.float32)
        return tf.reduce_mean(tf.square(self.relation_scores(logits) - targets), axis=[1, 2])


class RelationRecipe(ClassifierRecipe):
    fixed_arguments = ("relation_module",)  # a Keras model; configs set its sizes


RECIPE = RelationRecipe(RelationNetwork)

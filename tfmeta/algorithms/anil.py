"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio and Vinyals, ICLR 2020).

https://arxiv.org/abs/1909.09157. MAML where the inner loop adapts only the network's
head; the body (all layers below it) is meta-learned by the outer loop alone:

    for task in meta_batch:
        head = theta_head
        for _ in range(inner_steps):
            head = head - inner_lr * grad(loss(theta_body, head, task.support), head)
        meta_loss += loss(theta_body, head, task.query) / len(meta_batch)
    theta = optimizer.apply(grad(meta_loss, theta), theta)       # body and head

Everything but the choice of adapted parameters is MAML's (`tfmeta.algorithms.maml`):
this module only overrides the `adapted_indices` hook. The body still gets a
meta-gradient, through the query loss and (second order) through the head's steps.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.maml import MAML, MAMLRecipe
from tfmeta.errors import UserError
from tfmeta.tensors import linear_head_gradients, num_ways


class ANIL(MAML):
    """MAML that adapts only the parameters of the layer named `head_layer`.

    Example:

        learner = ANIL(tfmeta.models.conv4((28, 28, 1), num_classes=5), head_layer="head")

    Args:
      backbone: a built Keras classifier.
      head_layer: name of the layer whose parameters the inner loop adapts (Conv4's is
        "head").
      **kwargs: MAML's arguments.
    """

    fast_head_refusal = "ANIL adapts a layer of the backbone (head_layer), not a head per task"

    def __init__(self, backbone: keras.Model, head_layer: str = "head", **kwargs):
        super().__init__(backbone, **kwargs)
        names = [layer.name for layer in backbone.layers]
        if head_layer not in names:
            raise UserError(f"ANIL adapts the layer named head_layer={head_layer!r}, but "
                            f"{backbone.name!r} has no such layer; its layers are {names}. Pass "
                            "head_layer=<one of them>.")
        head_ids = {id(v) for v in backbone.get_layer(head_layer).trainable_variables}
        self.head_layer = head_layer
        self._head_indices = [i for i, v in enumerate(self.params) if id(v) in head_ids]
        if not self._head_indices:
            raise UserError(f"Layer {head_layer!r} of {backbone.name!r} has no trainable "
                            "parameters, so ANIL would adapt nothing; name the backbone's output "
                            "layer.")

    # ---------------------------------------- exports beyond TensorFlow (bin/export.py)
    def portable_refusal(self) -> str | None:
        """None where the head is the backbone's last layer, a linear `Dense`: its inner steps
        are then written without a tape (`portable_logits`)."""
        head = self.backbone.get_layer(self.head_layer)
        if not self.inner_steps_test or (
                self.backbone.layers[-1] is head and isinstance(head, keras.layers.Dense)
                and head.activation in (None, keras.activations.linear)):
            return None
        return (f"ANIL's head_layer={self.head_layer!r} is not the backbone's last layer, a "
                "linear Dense, so its inner steps need gradient ops")

    def portable_logits(self, support_images, support_labels, query_images):
        """The inner loop on the head alone, its gradient written out
        (`tensors.linear_head_gradients`), the body's features computed once per set:
        the body is not adapted, so each inner step would compute the same ones."""
        if not self.inner_steps_test:
            return super().portable_logits(support_images, support_labels, query_images)
        head = self.backbone.get_layer(self.head_layer)
        body = keras.Model(self.backbone.inputs, head.input)
        trainable, state = (weights.values(body.trainable_variables),
                            weights.values(body.non_trainable_variables))
        support, _ = body.stateless_call(trainable, state, support_images, training=True)
        queries, _ = body.stateless_call(trainable, state, query_images,
                                         training=self.bn_training(False))
        support, queries = tf.cast(support, tf.float32), tf.cast(queries, tf.float32)
        fast = weights.values([head.kernel, head.bias])
        for step in range(self.inner_steps_test):
            grads = linear_head_gradients(support, support_labels, *fast)
            fast = self.inner_update(fast, grads, step)
        logits = tf.matmul(queries, fast[0]) + fast[1]
        return logits[:, :num_ways(support_labels)]

    @property
    def adapted_indices(self):
        """Indices into `params` of the head's parameters (the only ones adapted)."""
        return list(self._head_indices)


RECIPE = MAMLRecipe(ANIL)

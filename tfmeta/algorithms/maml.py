"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel and Levine, ICML 2017).

https://arxiv.org/abs/1703.03400. For each task of a meta-batch, adapt a copy of
the parameters to the support set with a few gradient steps, then score the
adapted copy on the query set; the meta-gradient flows back through the steps:

    for task in meta_batch:
        fast = params
        for _ in range(inner_steps):
            fast = fast - inner_lr * grad(loss(fast, task.support), fast)
        meta_loss += loss(fast, task.query) / len(meta_batch)
    params = optimizer.apply(grad(meta_loss, params), params)

`first_order=True` drops the second-order terms (the inner gradients are treated
as constants), which is FOMAML.

The task loop, fast weights through `stateless_call` and the batch-norm policies are
`TaskLoopLearner`'s (`tfmeta.algorithms.task_loop`); this module is the inner loop.

Subclass hooks, used by ANIL and Meta-SGD: `adapted_indices` (which parameters
the inner loop adapts) and `inner_update` (the inner step rule).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.task_loop import TaskLoopLearner
from tfmeta.ranges import POSITIVE


class MAML(TaskLoopLearner):
    """MAML around any Keras classifier whose outputs are N-way logits.

    Example:

        backbone = tfmeta.models.conv4((28, 28, 1), num_classes=5)
        maml = MAML(backbone, inner_lr=0.4, inner_steps=1, inner_steps_test=3)
        maml.compile(optimizer=keras.optimizers.Adam(1e-3))
        maml.fit(episode_dataset(train_classes, 5, 1, 1, meta_batch_size=32), ...)
        logits = maml.adapt_and_predict(support_images, support_labels, query_images)

    Args:
      model: a built Keras model mapping images to `[n, num_outputs]` logits.
      inner_lr: step size of the inner gradient steps.
      inner_steps: inner steps while meta-training.
      inner_steps_test: inner steps when evaluating or serving.
      first_order: drop second-order terms (FOMAML).
      batch_norm: "batch_stats" or "running_stats" (see the module docstring).
      parallel_tasks: tasks of a meta-batch run concurrently in the task loop.
    """

    argument_ranges = {"inner_lr": POSITIVE}

    def __init__(self, model: keras.Model, inner_lr: float = 0.4, inner_steps: int = 1,
                 inner_steps_test: int = 3, first_order: bool = False,
                 batch_norm: str = "batch_stats", parallel_tasks: int = 10, **kwargs):
        super().__init__(model, inner_steps=inner_steps, inner_steps_test=inner_steps_test,
                         batch_norm=batch_norm, parallel_tasks=parallel_tasks, **kwargs)
        self.check_arguments({"inner_lr": inner_lr})
        self.inner_lr = float(inner_lr)
        self.first_order = bool(first_order)

    # ------------------------------------------------------------------ hooks
    @property
    def adapted_indices(self):
        """Indices into `params` of the parameters the inner loop adapts (all of them)."""
        return list(range(len(self.params)))

    def inner_update(self, params, grads, step):
        """One inner step on the adapted parameters: `params - inner_lr * grads`."""
        del step
        return weights.gradient_step(params, grads, self.inner_lr)

    # -------------------------------------------------------------- the method
    def adapt(self, params, state, support_images, support_labels, steps, training=True,
              first_order=None):
        """Inner loop: the fast weights after `steps` gradient steps on the support set.

        Args: as `TaskLoopLearner.adapt`, and
          first_order: stop gradients through the inner gradients (default: the learner's
            setting while meta-training; always when not training, where nothing needs
            the second-order terms).
        """
        if first_order is None:
            first_order = self.first_order or not training
        indices = self.adapted_indices
        params = list(params)
        bn_training = self.bn_training(training)
        for step in range(steps):
            adapted = [params[i] for i in indices]
            with tf.GradientTape() as tape:
                tape.watch(adapted)
                outputs, _ = self.forward(params, state, support_images, bn_training)
                loss = self.loss_fn(support_labels, outputs)
            grads = tape.gradient(loss, adapted)
            if first_order:
                grads = [None if g is None else tf.stop_gradient(g) for g in grads]
            for i, value in zip(indices, self.inner_update(adapted, grads, step)):
                params[i] = value
        return params

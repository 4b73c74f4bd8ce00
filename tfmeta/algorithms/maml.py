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

Fast weights are plain tensors run through Keras 3 `stateless_call`; the model's
variables are never assigned inside the inner loop.

Batch norm (`batch_norm=`):
  "batch_stats" (the paper's and reference code's choice): every forward pass,
      including at meta-test time, normalizes with the statistics of the batch it
      sees (transductive at test time); moving averages are never used.
  "running_stats": meta-training normalizes with batch statistics and updates the
      moving averages from the adapted query passes; meta-testing uses the moving
      averages (each query is classified independently of the others).

Subclass hooks, used by ANIL and Meta-SGD: `adapted_indices` (which parameters
the inner loop adapts) and `inner_update` (the inner step rule).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.base import MetaLearner, cross_entropy, replica_mean

BATCH_NORM_MODES = ("batch_stats", "running_stats")


class MAML(MetaLearner):
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

    def __init__(self, model: keras.Model, inner_lr: float = 0.4, inner_steps: int = 1,
                 inner_steps_test: int = 3, first_order: bool = False,
                 batch_norm: str = "batch_stats", parallel_tasks: int = 10, **kwargs):
        super().__init__(**kwargs)
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}; got {batch_norm!r}.")
        if inner_steps < 0 or inner_steps_test < 0:
            raise ValueError(f"inner step counts must be >= 0; got inner_steps={inner_steps}, "
                             f"inner_steps_test={inner_steps_test}.")
        if not model.built:
            raise ValueError(f"MAML needs a built model; build {model.name!r} with an input shape.")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.inner_steps_test = int(inner_steps_test)
        self.first_order = bool(first_order)
        self.batch_norm = batch_norm
        self.parallel_tasks = int(parallel_tasks)
        self.num_outputs = int(model.output_shape[-1])

    # ------------------------------------------------------------------ hooks
    @property
    def params(self):
        """The variables the task loop differentiates: the backbone's trainable ones."""
        return self.model.trainable_variables

    @property
    def adapted_indices(self):
        """Indices into `params` of the parameters the inner loop adapts (all of them)."""
        return list(range(len(self.params)))

    def inner_update(self, params, grads, step):
        """One inner step on the adapted parameters: `params - inner_lr * grads`."""
        del step
        return weights.gradient_step(params, grads, self.inner_lr)

    # -------------------------------------------------------------- the method
    def forward(self, params, state, images, training):
        """Logits of the backbone run with fast weights `params`; returns (logits, new_state)."""
        logits, new_state = self.model.stateless_call(params, state, images, training=training)
        return tf.cast(logits, tf.float32), new_state

    def adapt(self, params, state, support_images, support_labels, steps, training=True,
              first_order=None):
        """Inner loop: returns the fast weights after `steps` steps on the support set.

        Args:
          params: one tensor per entry of `self.params`.
          state: the backbone's non-trainable values (batch-norm moving averages).
          support_images, support_labels: one episode's support set, `[N*K, ...]`, `[N*K]`.
          steps: number of inner steps.
          training: the backbone's `training` flag for these passes.
          first_order: stop gradients through the inner gradients (default: the learner's).
        """
        first_order = self.first_order if first_order is None else first_order
        indices = self.adapted_indices
        params = list(params)
        for step in range(steps):
            adapted = [params[i] for i in indices]
            with tf.GradientTape() as tape:
                tape.watch(adapted)
                logits, _ = self.forward(params, state, support_images, training)
                loss = cross_entropy(support_labels, logits)
            grads = tape.gradient(loss, adapted)
            if first_order:
                grads = [None if g is None else tf.stop_gradient(g) for g in grads]
            for i, value in zip(indices, self.inner_update(adapted, grads, step)):
                params[i] = value
        return params

    def _bn_training(self, training):
        return True if self.batch_norm == "batch_stats" else training

    def task_query_logits(self, params, state, episode, training):
        """Adapts to one episode and returns (query logits, backbone state after the query pass)."""
        steps = self.inner_steps if training else self.inner_steps_test
        bn_training = self._bn_training(training)
        fast = self.adapt(params, state, episode["support_images"], episode["support_labels"],
                          steps, training=bn_training, first_order=self.first_order or not training)
        return self.forward(fast, state, episode["query_images"], bn_training)

    def query_logits(self, episodes, training=False):
        params = weights.values(self.params)
        state = weights.values(self.model.non_trainable_variables)
        keys = [k for k in ("support_images", "support_labels", "query_images") if k in episodes]

        def one_task(task):
            logits, _ = self.task_query_logits(params, state, dict(zip(keys, task)), training)
            return logits

        return tf.map_fn(one_task, [episodes[k] for k in keys],
                         fn_output_signature=tf.TensorSpec([None, self.num_outputs], tf.float32),
                         parallel_iterations=self.parallel_tasks)

    def compute_meta_gradients(self, episodes):
        """Meta-gradient summed task by task in a `tf.while_loop`.

        Written as a loop rather than one tape over a batched computation because
        each task has its own fast weights: unrolling B tasks in Python makes the
        graph B times larger (tens of seconds to trace at B=32), and a vectorized
        map was measured slower on CPU. The loop keeps one task's second-order
        tape alive at a time, so memory does not grow with B either.
        """
        variables = self.trainable_variables
        batch = tf.shape(episodes["support_labels"])[0]
        global_batch = tf.cast(batch, tf.float32)
        state = weights.values(self.model.non_trainable_variables)
        logits_array = tf.TensorArray(tf.float32, size=batch, element_shape=[None, self.num_outputs])

        def body(i, grads_sum, loss_sum, state, logits_array):
            task = {k: v[i] for k, v in episodes.items()}
            with tf.GradientTape() as tape:
                params = weights.values(self.params)
                logits, new_state = self.task_query_logits(params, state, task, training=True)
                loss = cross_entropy(task["query_labels"], logits)
                scaled = self.optimizer.scale_loss(replica_mean(loss) / global_batch)
            grads = tape.gradient(scaled, variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            state = new_state if self.batch_norm == "running_stats" else state
            return (i + 1, weights.add(grads_sum, grads), loss_sum + loss, state,
                    logits_array.write(i, logits))

        _, grads, loss_sum, state, logits_array = tf.while_loop(
            lambda i, *_: i < batch, body,
            (tf.constant(0), [tf.zeros_like(v) for v in variables], tf.constant(0.0), state,
             logits_array),
            parallel_iterations=self.parallel_tasks)
        if self.batch_norm == "running_stats":
            weights.assign(self.model.non_trainable_variables, state)
        return grads, loss_sum / global_batch, logits_array.stack()

    @property
    def max_ways(self):
        return self.num_outputs


def from_config(config, input_shape):
    """Builds MAML around the configured backbone with `config.ways` outputs."""
    from tfmeta.models import backbone_from_config

    backbone = backbone_from_config(config.model, input_shape, num_classes=config.ways)
    return MAML(backbone, **config.learner)

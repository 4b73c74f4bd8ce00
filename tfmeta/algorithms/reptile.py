"""Reptile (Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms").

https://arxiv.org/abs/1803.02999, after OpenAI's supervised-reptile code. Snapshot the
meta-weights phi, train a copy on each task of a meta-batch with k steps of an ordinary
optimizer, and move phi toward the adapted weights:

    for i, task in enumerate(meta_batch):
        W[i] = phi
        for batch in mini_batches(task.support, inner_batch_size, inner_steps):
            W[i] = inner_optimizer.step(W[i], grad(loss(W[i], batch), W[i]))
    epsilon = meta_step_size + (meta_step_size_final - meta_step_size) * step / anneal_steps
    phi = phi + epsilon * (mean(W) - phi)          # weights.interpolate(phi, mean(W), epsilon)

With `outer_optimizer=True`, `phi - mean(W)` is handed to the compiled Keras optimizer as
the gradient instead (the paper's Adam variant; SGD with learning rate epsilon is the
rule above). Either way the optimizer's `iterations` counts meta-steps (the interpolation
path increments it explicitly), so checkpoints, resuming and the annealing agree.

The outer loop is `ReptileFamily`'s (`tfmeta.algorithms.reptile_family`), shared with
Reptile-GAN; this module is the inner loop. The inner optimizer is written on tensors
(`tfmeta.algorithms.inner_optimizers`): Keras optimizers assign variables, which an inner
loop never does. The reference uses Adam with beta1=0,
and a fresh Adam state for every task here (the reference code carried the second moment
across tasks; a per-task state makes adaptation a pure function of phi and the task).
Mini-batches are drawn as in the reference: the support set is shuffled, cut into
batches, and reshuffled when it runs out.

Batch norm always normalizes with the statistics of the batch it sees (as the reference),
so moving averages are never used. At meta-test time, `transductive=True` classifies all
queries of an episode in one batch; `transductive=False` classifies each query in a batch
made of the support set plus that query alone (the paper's non-transductive protocol).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.episodic import ClassifierRecipe, EpisodicClassifier
from tfmeta.algorithms.reptile_family import (
    EVAL_SEED,
    ReptileFamily,
    annealed_arguments,
    minibatch_indices,
)
from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config
from tfmeta.ranges import NON_NEGATIVE_INT, POSITIVE_INT
from tfmeta.tensors import accuracy


class Reptile(ReptileFamily, EpisodicClassifier):
    """Reptile around any Keras classifier whose outputs are N-way logits.

    Example:

        backbone = tfmeta.models.conv4((28, 28, 1), num_classes=5, downsample="strided")
        reptile = Reptile(backbone, inner_steps=5, inner_batch_size=10, anneal_steps=100000)
        reptile.compile(optimizer=keras.optimizers.SGD())  # counts steps (outer_optimizer=False)
        reptile.fit(episode_dataset(train_classes, EpisodeShape(5, 10, 1), meta_batch_size=5), ...)
        logits = reptile.adapt_and_predict(support_images, support_labels, query_images)

    Args:
      backbone: a built Keras model mapping images to `[n, num_outputs]` logits.
      inner_steps, inner_batch_size: inner iterations and their batch size while training.
      inner_steps_test, inner_batch_size_test: the same when evaluating or serving.
      transductive: classify an episode's queries in one batch (else one at a time).
      inner_optimizer ("adam", the paper's, or "sgd"), inner_lr, inner_beta_1 (0 in the
        reference code), meta_step_size, meta_step_size_final, anneal_steps,
        outer_optimizer: as `ReptileFamily`.
    """

    argument_ranges = {"inner_steps": NON_NEGATIVE_INT, "inner_steps_test": NON_NEGATIVE_INT,
                       "inner_batch_size": POSITIVE_INT, "inner_batch_size_test": POSITIVE_INT}

    def __init__(self, backbone: keras.Model, inner_steps: int = 5, inner_batch_size: int = 10,
                 inner_steps_test: int = 50, inner_batch_size_test: int = 5,
                 transductive: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not backbone.built:
            raise UserError(f"Reptile needs a built backbone; build {backbone.name!r} with an "
                            "input shape.")
        self.check_arguments({"inner_steps": inner_steps, "inner_steps_test": inner_steps_test,
                              "inner_batch_size": inner_batch_size,
                              "inner_batch_size_test": inner_batch_size_test})
        self.backbone = backbone
        self.inner_steps, self.inner_steps_test = int(inner_steps), int(inner_steps_test)
        self.inner_batch_size = int(inner_batch_size)
        self.inner_batch_size_test = int(inner_batch_size_test)
        self.transductive = bool(transductive)
        self.num_outputs = int(backbone.output_shape[-1])

    # -------------------------------------------------------------------- the method
    def forward(self, params, state, inputs, training):
        """(logits `[n, num_outputs]`, new state) of the backbone run with fast weights
        `params`: the task loop's `forward` (TaskLoopLearner). Reptile passes
        `training=True` always: batch norm uses batch statistics, as in the paper's code."""
        logits, new_state = self.backbone.stateless_call(params, state, inputs,
                                                         training=training)
        return tf.cast(logits, tf.float32), new_state

    def adapt(self, params, state, images, labels, steps: int, batch_size: int, seed):
        """Inner loop: `steps` optimizer steps on mini-batches of one task's support set.

        Args:
          params: one tensor per backbone trainable variable (phi).
          state: the backbone's non-trainable values.
          images, labels: the support set, `[n, ...]` and `[n]`.
          seed: `[2]` ints fixing the mini-batch order.
        Returns the adapted weights W (a list like `params`).
        """
        if steps == 0:
            return list(params)
        batches = minibatch_indices(tf.shape(labels)[0], batch_size, steps, seed)

        def body(k, fast, optimizer_state):
            index = batches[k]
            with tf.GradientTape() as tape:
                tape.watch(fast)
                logits, _ = self.forward(fast, state, tf.gather(images, index), training=True)
                loss = self.loss_fn(tf.gather(labels, index), logits)
            grads = tape.gradient(loss, fast)
            fast, optimizer_state = self.inner_optimizer.step(fast, grads, optimizer_state)
            return k + 1, fast, optimizer_state

        _, fast, _ = tf.while_loop(lambda k, *_: k < steps, body,
                                   (tf.constant(0), list(params),
                                    self.inner_optimizer.init(params)))
        return fast

    def predict_queries(self, fast, state, support_images, query_images):
        """Query logits `[m, num_outputs]`, transductively or one query at a time."""
        if self.transductive:
            return self.forward(fast, state, query_images, training=True)[0]

        def one_query(query):
            both = tf.concat([support_images, query[None]], 0)
            return self.forward(fast, state, both, training=True)[0][-1]

        return tf.map_fn(one_query, query_images,
                         fn_output_signature=tf.TensorSpec([self.num_outputs], tf.float32))

    def _seed_step(self, training):
        return self.optimizer.iterations if training else tf.constant(EVAL_SEED, tf.int64)

    def query_logits(self, episodes, training=False):
        if tf.executing_eagerly():
            # Eager while-loops run op by op (minutes for a meta-batch); compile instead.
            return self.compiled_function("query_logits", self._query_logits)(episodes, bool(training))
        return self._query_logits(episodes, training)

    def _query_logits(self, episodes, training):
        params = weights.values(self.backbone.trainable_variables)
        state = weights.values(self.backbone.non_trainable_variables)
        steps = self.inner_steps if training else self.inner_steps_test
        batch_size = self.inner_batch_size if training else self.inner_batch_size_test
        step = tf.cast(self._seed_step(training), tf.int64)

        def one_task(task):
            i, support_images, support_labels, query_images = task
            fast = self.adapt(params, state, support_images, support_labels, steps, batch_size,
                              tf.stack([step, tf.cast(i, tf.int64)]))
            return self.predict_queries(fast, state, support_images, query_images)

        batch = tf.shape(episodes["support_labels"])[0]
        return tf.map_fn(one_task, (tf.range(batch), episodes["support_images"],
                                    episodes["support_labels"], episodes["query_images"]),
                         fn_output_signature=tf.TensorSpec([None, self.num_outputs], tf.float32))

    def adapt_task(self, params, batch, index, seed, training=True):
        """Adapts to task `index`; its metrics are the adapted weights' query loss and
        accuracy (reported, never used to update)."""
        state = weights.values(self.backbone.non_trainable_variables)
        support_images = batch["support_images"][index]
        steps = self.inner_steps if training else self.inner_steps_test
        batch_size = self.inner_batch_size if training else self.inner_batch_size_test
        fast = self.adapt(params, state, support_images, batch["support_labels"][index], steps,
                          batch_size, seed)
        logits = self.predict_queries(fast, state, support_images, batch["query_images"][index])
        labels = batch["query_labels"][index]
        return fast, [self.loss_fn(labels, logits), accuracy(labels, logits)]

    @property
    def max_ways(self):
        return self.num_outputs

    def feature_model(self) -> keras.Model:
        return self.backbone


class ReptileRecipe(ClassifierRecipe):
    """Reptile around the configured backbone with `config.ways` outputs; epsilon anneals
    over `config.num_steps` unless `learner.anneal_steps` is set."""

    def build(self, config, input_shape):
        return self.learner(
            backbone_from_config(config.model, input_shape, num_classes=config.ways),
            **annealed_arguments(config))


RECIPE = ReptileRecipe(Reptile)

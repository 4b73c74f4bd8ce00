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

Model-agnostic: MAML classifies; on regression tasks (the paper's sinusoids, section 5.1,
`tfmeta.data.sinusoid`) `--algo=maml` builds `MAMLRegression`
(`tfmeta.algorithms.maml_regression`, chosen by `tfmeta.algorithms.learner_class`), a
subclass that owns the mean squared error and the regression protocol.

Any number of ways (`head=`): "learned" is the backbone's own N-way head. With
"prototypes" (Proto-MAML, Triantafillou et al., ICLR 2020) or "zeros" the backbone is a
feature extractor `[n, D]` and each task starts a fast head `[D, N]`, N read from the
support labels, so a learner trained 5-way serves 20-way episodes:

    c_n = mean(features(support of class n))                  # [N, D]
    head = (W = 2 c^T, b = -|c_n|^2)   or   (W = 0, b = 0)    # logits = f W + b
    # 2 c_n.f - |c_n|^2 = -|f - c_n|^2 + |f|^2: ProtoNet's logits up to a per-query constant

A fast head also takes padded variable episodes: the task loop hands each task over as its
real examples only, so the head has the task's own N ways and the inner loop is the one it
would run on the unpadded episode (`tfmeta.algorithms.task_loop`).

The task loop, fast weights through `stateless_call` and the batch-norm policies are
`TaskLoopLearner`'s (`tfmeta.algorithms.task_loop`); this module is the inner loop.

Subclass hooks: `adapted_indices` (which parameters the inner loop adapts; ANIL),
`inner_update` (the inner step rule; Meta-SGD, MAML++'s learned rates) and `forward_at`
(the forward pass after k inner steps; MAML++'s per-step batch norm).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.task_loop import PARALLEL_TASKS, TaskLoopLearner, TaskLoopRecipe
from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config
from tfmeta.ranges import POSITIVE, Choice, Range
from tfmeta.tensors import class_means, num_ways

HEADS = ("learned", "prototypes", "zeros")
FAST_HEADS = HEADS[1:]


class MAML(TaskLoopLearner):
    """MAML around any Keras classifier (N-way logits) or feature extractor (with
    `head="prototypes"` or `"zeros"`); on regression tasks, `MAMLRegression`
    (`tfmeta.algorithms.maml_regression`).

    Example:

        backbone = tfmeta.models.conv4((28, 28, 1), num_classes=5)
        maml = MAML(backbone, inner_lr=0.4, inner_steps=1, inner_steps_test=3)
        maml.compile(optimizer=keras.optimizers.Adam(1e-3))
        maml.fit(episode_dataset(train_classes, EpisodeShape(5, 1, 1), meta_batch_size=32), ...)
        logits = maml.adapt_and_predict(support_images, support_labels, query_images)

    Args:
      backbone: a built Keras model mapping inputs to `[n, num_outputs]` outputs (logits, or
        features for a "prototypes"/"zeros" head).
      inner_lr: step size of the inner gradient steps.
      inner_steps: inner steps while meta-training.
      inner_steps_test: inner steps when evaluating or serving.
      first_order: drop second-order terms (FOMAML).
      batch_norm: "batch_stats" or "running_stats" (see `tfmeta.algorithms.task_loop`).
      parallel_tasks: tasks of a meta-batch run concurrently in the task loop.
      head: "learned" (the backbone's own head), "prototypes" or "zeros" (a fast `[D, N]`
        head started per task; the backbone then outputs features).
      max_head_ways: with a "prototypes"/"zeros" head, the most ways served (None: any).
      recompute: keep no inner step's activations for the meta-gradient, recompute each
        step's in the backward pass instead (`weights.recomputed_in_backward`): less
        memory for second-order MAML with many inner steps or a large backbone, for more
        compute (docs/performance.md has both). The meta-gradient is the same.
    """

    argument_ranges = {"inner_lr": POSITIVE, "head": Choice(HEADS),
                       "max_head_ways": Range(1, integer=True, optional=True)}
    # Why a subclass cannot take a fast head (head="prototypes" or "zeros"), or None where it
    # can (`tfmeta.algorithms.prototype_head_algorithms` lists those that can).
    fast_head_refusal: str | None = None

    def __init__(self, backbone: keras.Model, inner_lr: float = 0.4, inner_steps: int = 1,
                 inner_steps_test: int = 3, first_order: bool = False,
                 batch_norm: str = "batch_stats", parallel_tasks: int = PARALLEL_TASKS,
                 head: str = "learned", max_head_ways: int | None = None,
                 recompute: bool = False, **kwargs):
        super().__init__(backbone, inner_steps=inner_steps, inner_steps_test=inner_steps_test,
                         batch_norm=batch_norm, parallel_tasks=parallel_tasks, **kwargs)
        self.check_arguments({"inner_lr": inner_lr, "head": head, "max_head_ways": max_head_ways})
        if head in FAST_HEADS and self.fast_head_refusal:
            raise UserError(f"{self.fast_head_refusal}; head={head!r} makes a head of N ways "
                            "per task. Use head='learned'.")
        if recompute and first_order:
            raise UserError("learner.recompute=True recomputes the second-order inner loop; "
                            "with learner.first_order=True the meta-gradient keeps no inner "
                            "step's activations to recompute. Drop one of the two.")
        if recompute and batch_norm == "running_stats":
            raise UserError("learner.recompute=True runs each inner step twice, which would "
                            "update the batch-norm moving averages twice; use "
                            "learner.batch_norm=batch_stats, or no recompute.")
        self.inner_lr = float(inner_lr)
        self.first_order = bool(first_order)
        self.recompute = bool(recompute)
        self.head_mode = head
        self.max_head_ways = max_head_ways
        self.task_form = self.resolve_task_form()  # again: `vectorized_refusal` reads the head

    def vectorized_refusal(self) -> str | None:
        """The base's reasons, and for "auto" a fast head: it may be given padded variable
        episodes, whose tasks have sizes of their own (an explicit "vectorized" takes only
        the meta-batch's shapes)."""
        # (`head_mode` is not set yet while the base's constructor first resolves the form,
        # refusing an explicit "vectorized", to which this reason does not apply; MAML's
        # constructor resolves it again once the head is set)
        if self.task_parallel == "auto" and getattr(self, "head_mode", "learned") != "learned":
            return (f"head={self.head_mode} may be given padded variable episodes, which run "
                    "task by task")
        return super().vectorized_refusal()

    @property
    def fast_head(self) -> bool:
        """Whether each task starts its own `[D, N]` head (head="prototypes" or "zeros")."""
        return self.head_mode != "learned"

    @property
    def takes_padded_episodes(self) -> bool:
        """A fast head takes padded variable episodes, N ways per task, in the task loop (a
        vectorized pass runs every task at the meta-batch's shapes); a learned head has its
        fixed `num_outputs`."""
        return self.fast_head and not self.vectorized

    # ------------------------------------------------------------------ hooks
    @property
    def adapted_indices(self):
        """Indices into `params` of the backbone parameters the inner loop adapts (all)."""
        return list(range(len(self.params)))

    def inner_update(self, params, grads, step):
        """One inner step on the adapted parameters: `params - inner_lr * grads`."""
        del step
        return weights.gradient_step(params, grads, self.inner_lr)

    def forward(self, params, state, inputs, training):
        """Outputs of the backbone with fast weights; with a fast head, `params` ends with its
        kernel `[D, N]` and bias `[N]`, applied to the backbone's features (`params` without
        them: the features)."""
        count = len(self.params)
        if not self.fast_head or len(params) == count:
            return super().forward(params, state, inputs, training)
        features, new_state = super().forward(params[:count], state, inputs, training)
        kernel, bias = params[count:]
        # (expand_dims, not `[..., None, :]`: tf2onnx writes an invalid Slice for an ellipsis
        # with a new axis)
        return tf.matmul(features, kernel) + tf.expand_dims(bias, -2), new_state

    def forward_at(self, params, state, inputs, training, step):
        """The forward pass of fast weights after `step` inner steps (MAML: any step alike)."""
        del step
        return self.forward(params, state, inputs, training)

    def initial_head(self, params, state, support_images, support_labels, training):
        """A task's fast head `[kernel [D, N], bias [N]]`: `(2 c^T, -|c|^2)` from the class
        prototypes `c [N, D]` of the support features, or zeros."""
        features, _ = self.forward_at(params, state, support_images, training, 0)
        ways = num_ways(support_labels)
        tasks = features.shape.rank == 3  # the vectorized loop's `[T, n, D]`
        if not tasks:
            features, support_labels = features[None], support_labels[None]
        if self.head_mode == "zeros":
            shape = tf.shape(features)
            head = [tf.zeros(tf.stack([shape[0], shape[-1], ways])), tf.zeros([shape[0], ways])]
        else:
            prototypes = class_means(features, support_labels, ways)               # [T, N, D]
            head = [2.0 * tf.transpose(prototypes, [0, 2, 1]),
                    -tf.reduce_sum(tf.square(prototypes), -1)]
        return head if tasks else [h[0] for h in head]

    # -------------------------------------------------------------- the method
    def adapt_trajectory(self, params, state, support_images, support_labels, steps,
                         training=True, first_order=None):
        """The inner loop, step by step: ([fast weights after 0, 1, ..., steps steps], state).

        Args: as `adapt`. The support passes normalize with the support set's own batch
        statistics in every mode (see `tfmeta.algorithms.task_loop`). The state returned
        is the backbone's after the support passes while meta-training (their statistics
        update the moving averages where a `forward_at` keeps them), and the state given
        when not training.
        """
        if first_order is None:
            first_order = self.first_order or not training
        params = list(params)
        indices = self.adapted_indices
        if self.fast_head:
            params += self.initial_head(params, state, support_images, support_labels, True)
            indices = indices + [len(params) - 2, len(params) - 1]
        trajectory = [params]
        for step in range(steps):
            def inner_step(params, step=step, state=state):
                """(params after inner step `step`, the backbone's state after its pass)."""
                adapted = [params[i] for i in indices]
                with tf.GradientTape() as tape:
                    tape.watch(adapted)
                    outputs, new_state = self.forward_at(params, state, support_images, True,
                                                         step)
                    loss = self.loss_fn(support_labels, outputs)
                grads = tape.gradient(loss, adapted)
                if first_order:
                    grads = [None if g is None else tf.stop_gradient(g) for g in grads]
                params = list(params)
                for i, value in zip(indices, self.inner_update(adapted, grads, step)):
                    params[i] = value
                return params, new_state

            if self.recompute and not first_order:
                # (The state stays as given: batch_stats, the only mode recompute takes,
                # never reads the moving averages in a support pass.)
                # (inner_step bound now: the backward pass calls it after the loop has moved on)
                params = weights.recomputed_in_backward(lambda p, f=inner_step: f(p)[0], params)
            else:
                params, new_state = inner_step(params)
                if training:
                    state = new_state
            trajectory.append(params)
        return trajectory, state

    def adapt(self, params, state, support_images, support_labels, steps, training=True,
              first_order=None):
        """Inner loop: the fast weights after `steps` gradient steps on the support set.

        Args: as `TaskLoopLearner.adapt`, and
          first_order: stop gradients through the inner gradients (default: the learner's
            setting while meta-training; always when not training, where nothing needs
            the second-order terms).
        """
        trajectory, _ = self.adapt_trajectory(params, state, support_images, support_labels,
                                              steps, training, first_order)
        return trajectory[-1]

    def output_signature(self):
        if self.fast_head:
            return tf.TensorSpec([None, None], tf.float32)
        return super().output_signature()

    @property
    def max_ways(self):
        return self.max_head_ways if self.fast_head else self.num_outputs


class MAMLRecipe(TaskLoopRecipe):
    """The MAML family's recipe: the backbone gets a `config.ways`-way head ("learned") or
    none (a fast head, started from each task's support set)."""

    def build(self, config, input_shape):
        arguments = dict(config.learner)
        head = {} if arguments.get("head") in FAST_HEADS else {"num_classes": config.ways}
        return self.learner(backbone_from_config(config.model, input_shape, **head),
                            **arguments)


RECIPE = MAMLRecipe(MAML)

"""`TaskLoopLearner`: the base of learners that adapt a copy of the backbone's weights to
each task, then score the adapted copy on the task's queries (MAML, Meta-SGD, ANIL, the
LSTM meta-learner). A subclass writes only its inner loop:

    adapt(params, state, support_images, support_labels, steps, training) -> fast weights

and this base runs it for every task of a meta-batch:

    for task in meta_batch:                       # a tf.while_loop (parallel_tasks at once)
        fast = adapt(params, state, task.support, inner_steps)
        meta_loss += loss_fn(task.query_labels, forward(fast, task.query_images)) / B
    params = optimizer.apply(grad(meta_loss, params), params)

Fast weights are plain tensors run through Keras 3 `stateless_call`; the backbone's
variables are never assigned inside the inner loop.

The loop's forms (`task_parallel=`, the same numbers in each, tests/test_task_parallel.py),
each written once in `tfmeta.algorithms.task_forms` and resolved once, when the learner is
built and again in `compile()` (`task_form`):
  "loop": a `tf.while_loop`, up to `parallel_tasks` tasks alive at once (on a CPU a task
      per core, each op on one: `config.cpu_threads`, tfmeta.training.cpu_threads); under XLA
      (`jit_compile`) unrolled in Python over the static meta-batch, because XLA compiles a
      gradient tape inside a while_loop into a program 33x slower.
  "vectorized": the whole meta-batch in one pass: the subclass's hooks get tensors with a
      leading task axis and parameters `[B, *shape]`, and the backbone runs every task with
      its own weights as one grouped convolution per layer (`tfmeta.task_batch`; a
      convolution per task where the device's kernels cannot differentiate a grouped one:
      TensorFlow's CPU kernels with oneDNN off). Holds every task's activations at once.
  "auto" (the default): vectorized with a GPU, the loop on CPUs (where it was measured
      faster), and the loop wherever vectorizing is refused (`vectorized_refusal`).

Batch norm (`batch_norm=`). The support passes of the inner loop normalize with the
support set's own statistics in both modes: the support set is given whole, so this is
not transductive over the queries, and it is what the inner loop was meta-trained with.
(Being Keras's `training=True`, it also switches dropout on in those passes.)
Stepping on the moving averages instead diverges at meta-test time (docs/maml.md,
"Batch-norm statistics at meta-test time", has the measurement and its command). The
modes differ in the query passes:
  "batch_stats" (MAML's paper and reference code): the query passes, including at
      meta-test time, normalize with the statistics of the query batch (transductive at
      test time); moving averages are never used.
  "running_stats": meta-training normalizes with batch statistics and updates the
      moving averages from the support and query passes; meta-test query passes use the
      moving averages (each query is classified independently of the others).

Padded variable episodes (labels -1 in the padding; a learner whose `takes_padded_episodes`
is True): each task is gathered down to its real examples before the subclass sees it, so
the inner loop, batch norm and the query loss never meet padding, and its query outputs
are scattered back to the padded query count (0 in padding rows) and widened to the
meta-batch's ways (`ABSENT_LOGIT` for classes the task lacks), one shape for every task.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import task_batch, weights
from tfmeta.algorithms.base import replica_mean
from tfmeta.algorithms.episodic import ClassifierRecipe, EpisodicClassifier
from tfmeta.algorithms.task_forms import LoopedTasks, UnrolledTasks, VectorizedTasks
from tfmeta.errors import UserError
from tfmeta.ranges import NON_NEGATIVE_INT, POSITIVE_INT, Choice
from tfmeta.tensors import absent_logit, num_ways, real_positions, scatter_rows

BATCH_NORM_MODES = ("batch_stats", "running_stats")
TASK_PARALLEL = ("auto", "loop", "vectorized")
# Tasks of a meta-batch the loop may run at once, unless `parallel_tasks` says otherwise.
PARALLEL_TASKS = 10


def vectorize_by_default() -> bool:
    """What `task_parallel="auto"` chooses where the learner allows both: the vectorized pass
    with a GPU (one grouped convolution per layer instead of B small ones), the loop on CPUs,
    where it was measured faster (docs/performance.md)."""
    return bool(tf.config.list_logical_devices("GPU"))


class TaskLoopLearner(EpisodicClassifier):
    """Runs a subclass's inner loop on every task of a meta-batch (see the module docstring).

    Args:
      backbone: a built Keras model mapping inputs to `[n, num_outputs]` outputs.
      inner_steps: inner steps while meta-training.
      inner_steps_test: inner steps when evaluating or serving.
      batch_norm: "batch_stats" or "running_stats".
      parallel_tasks: tasks of a meta-batch that may run concurrently in the loop.
      task_parallel: "loop" (task by task), "vectorized" (every task of a meta-batch
        in one pass, `tfmeta.task_batch`) or "auto" (vectorized where the learner, its
        backbone and its settings allow it; `vectorized_refusal` says why not).
    """

    argument_ranges = {"inner_steps": NON_NEGATIVE_INT, "inner_steps_test": NON_NEGATIVE_INT,
                       "parallel_tasks": POSITIVE_INT, "batch_norm": Choice(BATCH_NORM_MODES),
                       "task_parallel": Choice(TASK_PARALLEL)}
    # Whether the subclass's inner loop is written for tensors with a leading task axis.
    vectorizable = True

    def __init__(self, backbone: keras.Model, inner_steps: int = 1, inner_steps_test: int = 3,
                 batch_norm: str = "batch_stats", parallel_tasks: int = PARALLEL_TASKS,
                 task_parallel: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.check_arguments({"inner_steps": inner_steps, "inner_steps_test": inner_steps_test,
                              "parallel_tasks": parallel_tasks, "batch_norm": batch_norm,
                              "task_parallel": task_parallel})
        if not backbone.built:
            raise UserError(f"{type(self).__name__} needs a built backbone; build "
                            f"{backbone.name!r} with an input shape.")
        self.backbone = backbone
        self.inner_steps = int(inner_steps)
        self.inner_steps_test = int(inner_steps_test)
        self.batch_norm = batch_norm
        self.parallel_tasks = int(parallel_tasks)
        self.num_outputs = int(backbone.output_shape[-1])
        self.task_parallel = task_parallel
        self._input_rank = len(backbone.input_shape)
        # (refuses task_parallel="vectorized" where it cannot be; a subclass whose
        # `vectorized_refusal` reads its own settings resolves again once it has set them)
        self.task_form = self.resolve_task_form()

    def compile(self, *args, **kwargs):
        """Keras's `compile`, then the task loop's form resolved again: `jit_compile`, set
        here, unrolls the loop (XLA)."""
        super().compile(*args, **kwargs)
        self.task_form = self.resolve_task_form(xla=self.jit_compile is True)

    def resolve_task_form(self, xla: bool = False) -> VectorizedTasks | LoopedTasks:
        """The form of the task loop (`tfmeta.algorithms.task_forms`) for `task_parallel`:
        vectorized where asked for ("auto": with a GPU, `vectorize_by_default`) and nothing
        refuses it (a ValueError where "vectorized" is asked for and refused), else task by
        task: unrolled under XLA (`xla`, the compiled `jit_compile`), else a while_loop."""
        if self.task_parallel != "loop":
            refusal = self.vectorized_refusal()
            if refusal and self.task_parallel == "vectorized":
                raise UserError(f"learner.task_parallel=vectorized: {refusal}. Use "
                                "learner.task_parallel=loop (or auto).")
            if refusal is None and (self.task_parallel == "vectorized"
                                    or vectorize_by_default()):
                return VectorizedTasks()
        return UnrolledTasks() if xla else LoopedTasks()

    @property
    def vectorized(self) -> bool:
        """Whether the meta-batch's tasks run side by side in one pass (`task_form`)."""
        return isinstance(self.task_form, VectorizedTasks)

    def task_loop_form(self) -> str:
        """How the meta-batch's tasks run (`task_form`), and why, in words (the trainer logs
        it)."""
        if self.vectorized:
            if task_batch.convolutions_task_by_task(self.backbone):
                return ("every task of a meta-batch in one pass (vectorized), each task's "
                        "convolutions apart: this device's kernels cannot differentiate a "
                        "grouped convolution")
            return "every task of a meta-batch in one pass (vectorized)"
        refusal = None if self.task_parallel == "loop" else self.vectorized_refusal()
        how = ("unrolled, one task after another (XLA)"
               if isinstance(self.task_form, UnrolledTasks)
               else f"in a tf.while_loop, up to {self.parallel_tasks} tasks at once")
        if refusal:
            return f"{how}, as {refusal}"
        if self.task_parallel == "auto":
            return f"{how}, measured faster than the vectorized pass without a GPU"
        return how

    def vectorized_refusal(self) -> str | None:
        """Why this learner's tasks cannot run side by side, or None where they can."""
        if not self.vectorizable:
            return f"{type(self).__name__}'s inner loop runs on one task at a time"
        if self.batch_norm == "running_stats":
            return ("batch_norm=running_stats threads the moving averages from task to task, "
                    "which tasks run side by side cannot")
        layers = task_batch.unsupported_layers(self.backbone)
        if layers:
            return f"the backbone {self.backbone.name!r} has layers that cannot run task by " \
                   f"task in one pass: {', '.join(layers)}"
        return None

    # ------------------------------------------------------------------ hooks
    @property
    def params(self):
        """The variables the task loop differentiates: the backbone's trainable ones."""
        return self.backbone.trainable_variables

    @property
    def loop_state_variables(self):
        """The variables the task loop threads as `state` (the backbone's non-trainable ones,
        batch-norm moving averages; MAML++ keeps one copy per inner step)."""
        return self.backbone.non_trainable_variables

    def adapt(self, params, state, support_images, support_labels, steps, training=True):
        """The inner loop: fast weights (one tensor per `params`) after `steps` steps.

        Args:
          params: one tensor per entry of `self.params`.
          state: the backbone's non-trainable values (batch-norm moving averages).
          support_images, support_labels: one episode's support set, `[N*K, ...]`, `[N*K]`.
          steps: number of inner steps.
          training: True while meta-training (False when evaluating or serving).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement adapt().")

    # -------------------------------------------------------------- the loop
    def forward(self, params, state, inputs, training):
        """Outputs of the backbone run with fast weights `params`; returns (outputs, new_state).

        Inputs with a leading task axis `[T, n, ...]` (the vectorized loop) run every task in
        one pass, task t with `params[i][t]` (`tfmeta.task_batch`; the state is returned as
        given); inputs `[n, ...]` run through Keras's `stateless_call`."""
        if inputs.shape.rank == self._input_rank + 1:
            outputs = task_batch.call(self.backbone, params, state, inputs, training)
            return tf.cast(outputs, tf.float32), state
        outputs, new_state = self.backbone.stateless_call(params, state, inputs, training=training)
        return tf.cast(outputs, tf.float32), new_state

    def bn_training(self, training):
        """The backbone's `training` flag for query passes: batch statistics always, or only
        while training."""
        return True if self.batch_norm == "batch_stats" else training

    def task_query_logits(self, params, state, task, training):
        """Adapts to one task and returns (query outputs, backbone state after the query pass)."""
        steps = self.inner_steps if training else self.inner_steps_test
        fast = self.adapt(params, state, task["support_images"], task["support_labels"], steps,
                          training)
        return self.forward(fast, state, task["query_images"], self.bn_training(training))

    def task_meta_loss(self, params, state, task):
        """(meta-loss of one task, its query outputs, the backbone state after it)."""
        logits, new_state = self.task_query_logits(params, state, task, training=True)
        return self.loss_fn(task["query_labels"], logits), logits, new_state

    def output_signature(self):
        """The TensorSpec of one task's query outputs."""
        return tf.TensorSpec([None, self.num_outputs], tf.float32)

    # ---------------------------------------------------------- padded tasks
    def logit_width(self, episodes):
        """The ways of a meta-batch of padded variable episodes, every task's logit width;
        None where the learner does not take them (its tasks are run as they come)."""
        return num_ways(episodes["support_labels"]) if self.takes_padded_episodes else None

    def real_task(self, task):
        """(the real examples of one padded task, positions int64 `[r]` of its real queries).

        `task`: `support_images [S, ...]`, `support_labels [S]`, `query_images [M, ...]` and,
        unless serving (then every query is real), `query_labels [M]`; the kept task has the
        same keys, `[s, ...]` and `[r, ...]`, in the same order."""
        support = real_positions(task["support_labels"])
        kept = {"support_images": tf.gather(task["support_images"], support),
                "support_labels": tf.gather(task["support_labels"], support)}
        if "query_labels" in task:
            queries = real_positions(task["query_labels"])
            kept["query_labels"] = tf.gather(task["query_labels"], queries)
        else:
            queries = tf.range(tf.shape(task["query_images"], out_type=tf.int64)[0])
        kept["query_images"] = tf.gather(task["query_images"], queries)
        return kept, queries

    def padded_outputs(self, logits, queries, task, width):
        """Real queries' logits `[r, n]` -> `[M, width]` of the padded task: rows at their
        query positions (zeros in padding rows), classes n..width-1 at `ABSENT_LOGIT`."""
        absent = tf.cast(width, tf.int32) - tf.shape(logits)[1]
        logits = tf.pad(logits, [[0, 0], [0, absent]], constant_values=absent_logit(logits.dtype))
        return scatter_rows(logits, queries, tf.shape(task["query_images"])[0])

    def run_task_query_logits(self, params, state, task, training, width):
        """`task_query_logits`, on the real examples of a padded task where `width` is set."""
        if width is None:
            return self.task_query_logits(params, state, task, training)
        kept, queries = self.real_task(task)
        logits, new_state = self.task_query_logits(params, state, kept, training)
        return self.padded_outputs(logits, queries, task, width), new_state

    def run_task_meta_loss(self, params, state, task, width):
        """`task_meta_loss`, on the real examples of a padded task where `width` is set."""
        if width is None:
            return self.task_meta_loss(params, state, task)
        kept, queries = self.real_task(task)
        loss, logits, new_state = self.task_meta_loss(params, state, kept)
        return loss, self.padded_outputs(logits, queries, task, width), new_state

    # -------------------------------------------------------- the meta-batch
    def query_logits(self, episodes, training=False):
        """Query outputs `[B, M, N]` of every task of the meta-batch, in `task_form`."""
        return self.task_form.query_logits(self, episodes, training)

    def portable_refusal(self) -> str | None:
        """None where serving takes no inner step (`inner_steps_test=0`), else why not."""
        if self.inner_steps_test:
            return (f"learner.inner_steps_test={self.inner_steps_test} adapts the network with "
                    "gradient steps on each support set")
        return None

    def portable_logits(self, support_images, support_labels, query_images):
        """One task through `task_query_logits` (not the meta-batch's loop), N ways wide."""
        task = {"support_images": support_images, "support_labels": support_labels,
                "query_images": query_images}
        logits, _ = self.task_query_logits(weights.values(self.params),
                                           weights.values(self.loop_state_variables), task,
                                           training=False)
        return logits[:, :num_ways(support_labels)]

    def task_params(self, params, episodes):
        """Every task's own copy of `params`: each `[B, *shape]` (differentiable)."""
        batch = tf.shape(episodes[self.batch_keys[1]])[:1]
        return [tf.broadcast_to(p[None], tf.concat([batch, tf.shape(p)], 0)) for p in params]

    def compute_meta_gradients(self, episodes):
        """The meta-gradient over `task_meta_loss` (the per-task hook of this family; the
        base's `meta_loss` is not used here), its tasks run in `task_form`: the mean task
        loss, then the weight penalties (`_regularized`) added once, whatever the form.

        The vectorized form gives `task_meta_loss` the whole meta-batch: tensors with a
        leading task axis, parameters `[B, *shape]` (one copy per task), per-task losses
        `[B]`. It holds every task's activations at once; the loop holds one task's, so
        memory does not grow with B. Where batch_norm=running_stats, the moving averages
        threaded from task to task are assigned after the loop.
        """
        grads, loss, logits, state = self.task_form.meta_gradients(self, episodes)
        if state is not None:
            weights.assign(self.loop_state_variables, state)
        grads, regularization = self._regularized(grads, self.trainable_variables)
        return self._transformed(grads), loss + regularization, logits

    def _regularized(self, grads, variables):
        """(`grads` plus the gradients of `regularization_loss`, that loss): the weight
        penalties are added to the meta-loss once and whole, as Keras adds `model.losses`
        and as `EpisodicClassifier.meta_loss` does, whatever the meta-batch and the form of
        the task loop (they were divided by the meta-batch here before)."""
        with tf.GradientTape() as tape:
            regularization = tf.cast(self.regularization_loss(), tf.float32)
            scaled = self.optimizer.scale_loss(replica_mean(regularization))
        extra = tape.gradient(scaled, variables)
        return ([g if e is None else g + e for g, e in zip(grads, extra, strict=True)],
                regularization)

    @property
    def max_ways(self):
        return self.num_outputs

    def feature_model(self) -> keras.Model:
        return self.backbone


class TaskLoopRecipe(ClassifierRecipe):
    """The task loop's recipe: the backbone is the classifier (a `config.ways`-way head),
    XLA off under auto, a task per core where the loop runs enough of them."""

    backbone_has_head = True
    xla_auto = False
    xla_auto_reason = ("XLA was measured slower for this family on a CPU (the task loop "
                       "unrolled for XLA, with a long compile; the numbers and the command "
                       "are in docs/performance.md) and has not been measured on a GPU; "
                       "--set=jit_compile=true forces it")

    def cpu_threads_auto(self, config, cores: int, jit_compile) -> tuple[str, str]:
        """A task per core where the task loop keeps at least two tasks per core running on
        a CPU: small ops split over the cores left them waiting (Omniglot 5-way 1-shot, meta-
        batch 32, second order: 336 against 622 ms a step); with a task per core or fewer
        (mini-ImageNet 5-shot, meta-batch 2, on 2 cores) the two were even, and the ops
        keep every core (docs/performance.md)."""
        learner = config.learner
        side_by_side = min(learner.get("parallel_tasks", PARALLEL_TASKS), config.meta_batch_size)
        if tf.config.list_physical_devices("GPU"):
            return "ops", "a GPU runs the task loop"
        if jit_compile is True:
            return "ops", "XLA runs the unrolled tasks' ops one after another"
        if learner.get("task_parallel") == "vectorized":
            return "ops", "the vectorized pass runs every task in each op"
        if side_by_side < 2 * cores:
            return "ops", (f"the task loop runs {side_by_side} task(s) at once, fewer than two "
                           f"per core ({cores} cores)")
        return "tasks", (f"{self.name}'s task loop runs {side_by_side} tasks at once, at "
                         f"least two per core ({cores} cores)")

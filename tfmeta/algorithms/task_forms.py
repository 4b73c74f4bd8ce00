"""The forms of the MAML family's task loop: how the tasks of a meta-batch run, each written
once. `TaskLoopLearner` (`tfmeta.algorithms.task_loop`) resolves its form once, when it is
built and again in `compile()` (where Keras sets `jit_compile`), as Keras makes its train
function once, and calls it without asking again:

  VectorizedTasks: every task in one pass (`task_parallel="vectorized"`, or "auto" with a GPU
      where nothing refuses it): the learner's hooks get tensors with a leading task axis and
      parameters `[B, *shape]`.
  LoopedTasks: task by task in a `tf.while_loop` (`tf.map_fn` for query outputs), up to
      `parallel_tasks` tasks alive at once.
  UnrolledTasks: task by task, unrolled in Python over the static meta-batch (the loop under
      XLA, `jit_compile=True`: XLA compiles a gradient tape inside a while_loop into a
      program 33x slower, issue 23); the while_loop where the meta-batch's size is unknown.

Each form has the two methods the learner calls, `query_logits(learner, episodes, training)`
(query outputs `[B, M, N]`) and `meta_gradients(learner, episodes)` (the gradients of the
summed, scaled task losses, their mean, the query outputs, and the backbone state threaded
from task to task where `batch_norm="running_stats"` keeps it, else None). A form holds
nothing (the learner is passed in), so Keras tracks nothing in it and it holds no reference
back to the learner. The weight penalties are the learner's to add, once, after the form
(`TaskLoopLearner.compute_meta_gradients`).

The task-by-task forms run a padded task on its real examples (`run_task_*`, `logit_width`)
and hold one task's activations at a time; the vectorized pass holds every task's.
"""

from __future__ import annotations

import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.base import replica_mean


def with_zeros_for_unconnected(grads, variables):
    """`grads` with zeros for variables the loss does not reach (e.g. per-step copies a
    first-order pass does not reach), made here: the tape's ZERO option fails on Keras
    variables eagerly."""
    return [tf.zeros(v.shape, tf.float32) if g is None else g for g, v in zip(grads, variables)]


def query_inputs(learner, episodes):
    """(parameter values, state values, the keys of `episodes` a task's query pass takes:
    the query labels too where given, which tell padding queries apart)."""
    return (weights.values(learner.params), weights.values(learner.loop_state_variables),
            [k for k in learner.batch_keys if k in episodes])


class VectorizedTasks:
    """Every task of the meta-batch in one pass (see the module docstring)."""

    def query_logits(self, learner, episodes, training):
        """Query outputs `[B, M, N]`: `task_query_logits` on the whole meta-batch."""
        params, state, keys = query_inputs(learner, episodes)
        logits, _ = learner.task_query_logits(learner.task_params(params, episodes), state,
                                              {k: episodes[k] for k in keys}, training)
        return logits

    def meta_gradients(self, learner, episodes):
        """(gradients of the scaled mean task loss, that mean, query outputs, None):
        `task_meta_loss` gets parameters `[B, *shape]` (one copy per task) and returns the
        per-task losses `[B]`; the state is not threaded (running_stats is refused here)."""
        variables = learner.trainable_variables
        state = weights.values(learner.loop_state_variables)
        with tf.GradientTape() as tape:
            params = learner.task_params(weights.values(learner.params), episodes)
            losses, logits, _ = learner.task_meta_loss(params, state, episodes)
            loss = tf.reduce_mean(losses)
            scaled = learner.optimizer.scale_loss(replica_mean(loss))
        grads = with_zeros_for_unconnected(tape.gradient(scaled, variables), variables)
        return grads, loss, logits, None


class LoopedTasks:
    """Task by task in a `tf.while_loop`, up to `parallel_tasks` at once (see the module
    docstring). `UnrolledTasks` differs only in how the tasks are iterated: `map_queries`
    and `sum_over_tasks`."""

    def query_logits(self, learner, episodes, training):
        """Query outputs `[B, M, N]`, each task's from `run_task_query_logits`."""
        params, state, keys = query_inputs(learner, episodes)
        width = learner.logit_width(episodes)

        def one_task(task):
            logits, _ = learner.run_task_query_logits(params, state, dict(zip(keys, task)),
                                                      training, width)
            return logits

        return self.map_queries(learner, episodes, one_task, [episodes[k] for k in keys])

    def meta_gradients(self, learner, episodes):
        """(summed meta-gradients of the tasks, each of its loss scaled by 1/B, the mean task
        loss, query outputs `[B, M, N]`, the state after the last task where running_stats
        threads it from task to task, else None)."""
        variables = learner.trainable_variables
        batch = tf.shape(episodes[learner.batch_keys[1]])[0]
        global_batch = tf.cast(batch, tf.float32)
        state = weights.values(learner.loop_state_variables)
        width = learner.logit_width(episodes)
        keep_state = learner.batch_norm == "running_stats"

        def one_task(i, state):
            """(meta-gradient, loss, state after it, query outputs) of task i."""
            task = {k: v[i] for k, v in episodes.items()}
            with tf.GradientTape() as tape:
                params = weights.values(learner.params)
                loss, logits, new_state = learner.run_task_meta_loss(params, state, task, width)
                scaled = learner.optimizer.scale_loss(replica_mean(loss) / global_batch)
            grads = with_zeros_for_unconnected(tape.gradient(scaled, variables), variables)
            return grads, loss, new_state if keep_state else state, logits

        grads, loss_sum, state, logits = self.sum_over_tasks(learner, episodes, one_task,
                                                             variables, state, batch)
        return grads, loss_sum / global_batch, logits, state if keep_state else None

    def map_queries(self, learner, episodes, one_task, tensors):
        """`one_task` over the tasks of `tensors` (each `[B, ...]`), stacked."""
        del episodes
        return tf.map_fn(one_task, tensors, fn_output_signature=learner.output_signature(),
                         parallel_iterations=learner.parallel_tasks)

    def sum_over_tasks(self, learner, episodes, one_task, variables, state, batch):
        """(summed gradients, summed loss, state, stacked query outputs) of `one_task(i,
        state)` over tasks 0..batch-1, the state threaded from each task to the next."""
        del episodes

        def body(i, grads_sum, loss_sum, state, logits_array):
            grads, loss, state, logits = one_task(i, state)
            return (i + 1, weights.add(grads_sum, grads), loss_sum + loss, state,
                    logits_array.write(i, logits))

        logits_array = tf.TensorArray(tf.float32, size=batch,
                                      element_shape=learner.output_signature().shape)
        _, grads, loss_sum, state, logits_array = tf.while_loop(
            lambda i, *_: i < batch, body,
            (tf.constant(0), [tf.zeros_like(v) for v in variables], tf.constant(0.0),
             state, logits_array),
            parallel_iterations=learner.parallel_tasks)
        return grads, loss_sum, state, logits_array.stack()


class UnrolledTasks(LoopedTasks):
    """Task by task, unrolled in Python over the static meta-batch (B copies of the task in
    the graph, traced once): the loop under XLA (see the module docstring); the
    `tf.while_loop` where the meta-batch's size is not static."""

    @staticmethod
    def static_tasks(learner, episodes) -> int | None:
        """The meta-batch's size where the graph knows it, else None."""
        return episodes[learner.batch_keys[1]].shape[0]

    def map_queries(self, learner, episodes, one_task, tensors):
        tasks = self.static_tasks(learner, episodes)
        if tasks is None:
            return super().map_queries(learner, episodes, one_task, tensors)
        return tf.stack([one_task([t[i] for t in tensors]) for i in range(tasks)])

    def sum_over_tasks(self, learner, episodes, one_task, variables, state, batch):
        tasks = self.static_tasks(learner, episodes)
        if tasks is None:
            return super().sum_over_tasks(learner, episodes, one_task, variables, state, batch)
        grads, loss_sum, all_logits = [tf.zeros_like(v) for v in variables], 0.0, []
        for i in range(tasks):
            task_grads, loss, state, logits = one_task(i, state)
            grads, loss_sum = weights.add(grads, task_grads), loss_sum + loss
            all_logits.append(logits)
        return grads, loss_sum, state, tf.stack(all_logits)

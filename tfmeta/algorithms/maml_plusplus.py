"""MAML++: "How to train your MAML" (Antoniou, Edwards and Storkey, ICLR 2019).

https://arxiv.org/abs/1810.09502. MAML (`tfmeta.algorithms.maml`) with the paper's training
fixes, each its own constructor argument (and config flag):

  multi_step_loss (MSL): the meta-loss is the query loss after every inner step,
      weighted by importance weights v(t) annealed from uniform toward the last step:
          meta_loss = sum_k v_k(t) * loss(fast_k, task.query),   k = 1..S
  first_order_steps (derivative-order annealing): first-order inner gradients for the
      first `first_order_steps` meta-steps, second order after (a `tf.cond` on the step).
  learned_inner_lrs (LSLR): one learned scalar rate per parameter tensor and inner step,
          fast_{k+1}[i] = fast_k[i] - alpha[k][i] * grad_i            # alpha[k][i] scalar
      (Meta-SGD, `tfmeta.algorithms.metasgd`, is the per-coordinate version; both make
      their variables with `metasgd.learned_rates`).
  per_step_batch_norm (BNWB + BNRS): batch-norm scale/offset and moving statistics have
      one copy per number of inner steps taken, k = 0..S: every forward pass of fast
      weights after k steps (the support pass of step k, the query pass after k steps)
      uses copy k (copy S for test-time steps beyond S); copy 0 is the backbone's own.
      The copies' scale/offset are meta-learned, not adapted in the inner loop (the
      reference code's default, `enable_inner_loop_optimizable_bn_params=False`).
  cosine annealing of the meta learning rate: the trainer's `optimizer.schedule="cosine"`
      (`configs/maml_plusplus.py` sets it).

Batch-norm statistics at meta-test time. The paper (section 4, BNRS) collects running
statistics per step and uses them at meta-test time. The reference code
(github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch, `meta_neural_network_architectures.py`,
`MetaBatchNormLayer.forward`) calls `F.batch_norm(..., training=True)` in every pass,
evaluation included: it keeps per-step running statistics (and backs them up and restores
them around evaluation) but normalizes with the statistics of the batch it sees, i.e.
transductively. Here `batch_norm="running_stats"` is the paper's: meta-test query passes
normalize with step k's moving averages, so each query is classified on its own;
`batch_norm="batch_stats"` is the reference code's behaviour (configs/maml_plusplus.py's).
In both, the inner loop's support passes normalize with the support set's own statistics
(`tfmeta.algorithms.task_loop`).

The MSL schedule is the reference code's `get_per_step_loss_importance_vector`
(`few_shot_learning_system.py`), with its epoch counter replaced by the meta-step t
(A = `msl_annealing_steps`, S inner steps; the reference counts t and A in epochs):

    decay = 1 / S / A
    v_k = max(1/S - t * decay, 0.03 / S)                    k = 1..S-1
    v_S = min(1/S + t * (S - 1) * decay, 1 - (S - 1) * 0.03 / S)
    and for t >= A only the last step's loss (v = (0, ..., 0, 1)), as the reference does.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.maml import MAML, MAMLRecipe
from tfmeta.algorithms.metasgd import learned_rates
from tfmeta.ranges import NON_NEGATIVE_INT, POSITIVE_INT

MIN_NON_FINAL_WEIGHT = 0.03  # the reference code's floor, divided by S


def importance_weights(step, steps: int, annealing_steps: int):
    """MSL's per-step weights `[steps]` at meta-step `step` (see the module docstring)."""
    t = tf.cast(step, tf.float32)
    s = float(steps)
    decay = 1.0 / s / annealing_steps
    floor = MIN_NON_FINAL_WEIGHT / s
    others = tf.fill([steps - 1], tf.maximum(1.0 / s - t * decay, floor))
    last = tf.minimum(1.0 / s + t * (s - 1.0) * decay, 1.0 - (s - 1.0) * floor)
    annealing = tf.concat([others, last[None]], 0)
    final_only = tf.one_hot(steps - 1, steps)
    return tf.where(t < annealing_steps, annealing, final_only)


class MAMLPlusPlus(MAML):
    """MAML with MAML++'s options (see the module docstring).

    Example:

        learner = MAMLPlusPlus(tfmeta.models.conv4((28, 28, 1), num_classes=5),
                               inner_lr=0.1, inner_steps=5, inner_steps_test=5,
                               batch_norm="running_stats")
        learner.compile(optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(1e-3, 75000)))

    Args: MAML's, and
      multi_step_loss: score the queries after every inner step (MSL).
      msl_annealing_steps: meta-steps over which MSL's weights anneal to the last step.
      first_order_steps: meta-steps trained first order before switching to second order
        (0: never first order unless `first_order`).
      learned_inner_lrs: per-parameter-tensor, per-step learned inner rates (LSLR).
      per_step_batch_norm: per-step batch-norm weights and running statistics (BNWB+BNRS).
    """

    argument_ranges = {"msl_annealing_steps": POSITIVE_INT,
                       "first_order_steps": NON_NEGATIVE_INT}

    def __init__(self, backbone: keras.Model, multi_step_loss: bool = True,
                 msl_annealing_steps: int = 5000, first_order_steps: int = 0,
                 learned_inner_lrs: bool = True, per_step_batch_norm: bool = True, **kwargs):
        super().__init__(backbone, **kwargs)
        self.check_arguments({"msl_annealing_steps": msl_annealing_steps,
                              "first_order_steps": first_order_steps})
        self.multi_step_loss = bool(multi_step_loss)
        self.msl_annealing_steps = int(msl_annealing_steps)
        self.first_order_steps = int(first_order_steps)
        self.learned_inner_lrs = bool(learned_inner_lrs)
        self.per_step_batch_norm = bool(per_step_batch_norm)
        self._bn_indices = self._batch_norm_parameter_indices() if per_step_batch_norm else []
        if self.per_step_batch_norm:
            # Copy 0 is the backbone's own; copies 1..S are the learner's, initialised to it.
            self.step_bn_weights = [[self.params[i] for i in self._bn_indices]] + [
                [self._held_weight(keras.initializers.Constant(np.asarray(self.params[i])),
                               self.params[i].shape, True, f"bn_step{k}_{j}")
                 for j, i in enumerate(self._bn_indices)]
                for k in range(1, self.inner_steps + 1)]
            self.step_bn_stats = [list(self.backbone.non_trainable_variables)] + [
                [self._held_weight(keras.initializers.Constant(np.asarray(v)), v.shape, False,
                               f"bn_stats_step{k}_{j}")
                 for j, v in enumerate(self.backbone.non_trainable_variables)]
                for k in range(1, self.inner_steps + 1)]
        if self.learned_inner_lrs:
            tensors = len(self.adapted_indices) + (2 if self.fast_head else 0)
            self.step_inner_lrs = [learned_rates(self, [()] * tensors, self.inner_lr,
                                                 f"inner_lr_step{k}")
                                   for k in range(max(self.inner_steps, 1))]
            for rates in self.step_inner_lrs:
                for rate in rates:
                    setattr(self, rate.name, rate)

    def _held_weight(self, initializer, shape, trainable, name):
        """A new weight held as a direct attribute too: `tf.train.Checkpoint` saves a Keras
        model's variables held in attributes, not those only in (nested) lists."""
        variable = self.add_weight(shape=tuple(shape), initializer=initializer,
                                   trainable=trainable, name=name)
        setattr(self, name, variable)
        return variable

    def _batch_norm_parameter_indices(self):
        ids = {id(v) for layer in self.backbone.layers
               if isinstance(layer, keras.layers.BatchNormalization)
               for v in layer.trainable_variables}
        return [i for i, v in enumerate(self.params) if id(v) in ids]

    # ------------------------------------------------------------------ hooks
    @property
    def adapted_indices(self):
        """All parameters but the batch-norm ones when those are per-step (meta-learned)."""
        excluded = set(self._bn_indices)
        return [i for i in range(len(self.params)) if i not in excluded]

    @property
    def loop_state_variables(self):
        """Per-step batch-norm statistics, copy after copy, or the backbone's."""
        if not self.per_step_batch_norm:
            return super().loop_state_variables
        return [v for copy in self.step_bn_stats for v in copy]

    def inner_update(self, params, grads, step):
        """LSLR: `params[i] - alpha[step][i] * grads[i]` (the last trained step's rates for
        test-time steps beyond it); else MAML's step."""
        if not self.learned_inner_lrs:
            return super().inner_update(params, grads, step)
        rates = self.step_inner_lrs[min(step, len(self.step_inner_lrs) - 1)]
        return weights.gradient_step(params, grads, weights.values(rates))

    def forward_at(self, params, state, inputs, training, step):
        """The forward pass after `step` inner steps: batch-norm copy min(step, S)."""
        if not self.per_step_batch_norm:
            return super().forward_at(params, state, inputs, training, step)
        k = min(step, self.inner_steps)
        params = list(params)
        for i, value in zip(self._bn_indices, weights.values(self.step_bn_weights[k])):
            params[i] = value
        size = len(self.backbone.non_trainable_variables)
        outputs, new_copy = self.forward(params, state[k * size:(k + 1) * size], inputs,
                                         training)
        return outputs, [*state[:k * size], *new_copy, *state[(k + 1) * size:]]

    # -------------------------------------------------------------- the method
    def meta_step(self):
        optimizer = getattr(self, "optimizer", None)
        return optimizer.iterations if optimizer is not None else tf.constant(0, tf.int64)

    def task_query_logits(self, params, state, task, training):
        steps = self.inner_steps if training else self.inner_steps_test
        trajectory, state = self.adapt_trajectory(params, state, task["support_images"],
                                                  task["support_labels"], steps, training)
        return self.forward_at(trajectory[-1], state, task["query_images"],
                               self.bn_training(training), steps)

    def task_meta_loss(self, params, state, task):
        """(MSL-weighted query loss of one task, its final query outputs, the new state);
        first order while the meta-step is below `first_order_steps`."""

        def scored(first_order):
            trajectory, new_state = self.adapt_trajectory(
                params, state, task["support_images"], task["support_labels"],
                self.inner_steps, training=True, first_order=first_order)
            bn_training = self.bn_training(True)
            scored_steps = (range(1, self.inner_steps + 1)
                            if self.multi_step_loss and self.inner_steps > 1
                            else [self.inner_steps])
            losses = []
            for k in scored_steps:
                outputs, new_state = self.forward_at(trajectory[k], new_state,
                                                     task["query_images"], bn_training, k)
                losses.append(self.loss_fn(task["query_labels"], outputs))
            if len(losses) == 1:
                return losses[0], outputs, new_state
            importance = importance_weights(self.meta_step(), self.inner_steps,
                                            self.msl_annealing_steps)
            # (losses of every task `[S, T]` in the vectorized loop)
            return tf.tensordot(importance, tf.stack(losses), 1), outputs, new_state

        if self.first_order_steps and not self.first_order:
            return tf.cond(self.meta_step() < self.first_order_steps,
                           lambda: scored(True), lambda: scored(False))
        return scored(None)


RECIPE = MAMLRecipe(MAMLPlusPlus)

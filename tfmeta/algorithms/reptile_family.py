"""What Reptile and Reptile-GAN share: train a copy of the meta-weights phi on each task
with an ordinary optimizer, then move phi toward the mean of the adapted copies
(Nichol, Achiam and Schulman 2018):

    for i, task in enumerate(meta_batch):
        W[i], metrics[i] = adapt_task(phi, task)              # the subclass's inner loop
    epsilon = meta_step_size + (meta_step_size_final - meta_step_size) * step / anneal_steps
    phi = phi + epsilon * (mean(W) - phi)          # weights.interpolate(phi, mean(W), epsilon)

With `outer_optimizer=True`, `phi - mean(W)` is handed to the compiled Keras optimizer
as the gradient instead (SGD with learning rate epsilon is the rule above; Adam is the
paper's and FIGR's variant). Either way the optimizer's `iterations` counts meta-steps
(the interpolation path increments it itself), so checkpoints, resuming and the
annealing agree. Weight arithmetic goes through `tfmeta.weights`.
"""

from __future__ import annotations

import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.base import MetaLearner
from tfmeta.algorithms.inner_optimizers import make_inner_optimizer
from tfmeta.errors import UserError
from tfmeta.ranges import FRACTION, POSITIVE, UNIT_INTERVAL, Range

EVAL_SEED = 2 ** 31 - 1  # randomness at meta-test time: fixed, so serving is deterministic


def minibatch_indices(num_examples, batch_size: int, num_batches: int, seed) -> tf.Tensor:
    """`[num_batches, batch_size]` indices into `num_examples` examples: the concatenation of
    fresh random permutations (epochs), cut into consecutive batches. `seed`: `[2]` ints."""
    num_examples = tf.cast(num_examples, tf.int32)
    needed = batch_size * num_batches
    epochs = (needed + num_examples - 1) // num_examples
    keys = tf.random.stateless_uniform(tf.stack([epochs, num_examples]), seed)
    order = tf.reshape(tf.argsort(keys, axis=1), [-1])
    return tf.reshape(order[:needed], [num_batches, batch_size])


def linear_anneal(step, initial: float, final: float, num_steps: int) -> tf.Tensor:
    """`initial` at step 0, `final` from step `num_steps` on, linear in between (the paper's
    `frac_done * final + (1 - frac_done) * initial`)."""
    fraction = tf.minimum(tf.cast(step, tf.float32) / float(max(num_steps, 1)), 1.0)
    return (1.0 - fraction) * initial + fraction * final


def mean_over_tasks(adapt_task, num_tasks, like, num_metrics: int = 0):
    """Mean over `i < num_tasks` of `adapt_task(i) -> (weight list, [metric scalars])`.

    Tasks run one after the other in a `tf.while_loop` (one task's weights alive at a
    time); the sum goes through `weights.add` and the division through `weights.scale`.
    `like` gives the weight shapes. Returns (mean weights, mean metrics).
    """
    def body(i, total, metrics):
        adapted, values = adapt_task(i)
        return (i + 1, weights.add(total, adapted),
                [m + tf.cast(v, tf.float32) for m, v in zip(metrics, values, strict=True)])

    _, total, metrics = tf.while_loop(
        lambda i, *_: i < num_tasks, body,
        (tf.constant(0), [tf.zeros_like(w) for w in like],
         [tf.constant(0.0) for _ in range(num_metrics)]))
    count = tf.cast(num_tasks, tf.float32)
    return weights.scale(total, 1.0 / count), [m / count for m in metrics]


def reptile_update(optimizer, variables, adapted_mean, epsilon, outer_optimizer: bool) -> None:
    """The outer step on `variables` (phi) toward `adapted_mean` (mean over tasks of W).

    outer_optimizer=False: phi = phi + epsilon * (mean(W) - phi), then
        `optimizer.iterations += 1`.
    outer_optimizer=True: `optimizer.apply_gradients(phi - mean(W))`.
    """
    phi = weights.values(variables)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if outer_optimizer:
        # Each replica averages its own tasks; the optimizer all-reduces a SUM, so scale.
        gradients = weights.scale(weights.subtract(phi, adapted_mean), 1.0 / replicas)
        optimizer.apply_gradients(zip(gradients, variables))
        return
    if replicas > 1:
        raise UserError(
            f"Reptile's interpolation update runs on one replica; this strategy has {replicas}. "
            "Set learner.outer_optimizer=True with optimizer.name='sgd' (learning rate = "
            "meta step size) to run the same rule through the distributed optimizer.")
    weights.assign(variables, weights.interpolate(phi, adapted_mean, epsilon))
    optimizer.iterations.assign_add(1)


class ReptileFamily(MetaLearner):
    """The outer loop above; a subclass writes `adapt_task` (its inner loop on task `i` of a
    meta-batch) and names the metrics it returns (`self.metrics`, in order).

    Args:
      inner_optimizer, inner_lr, inner_beta_1: the inner optimizer ("adam" or "sgd"), its
        learning rate and (Adam) beta_1.
      meta_step_size, meta_step_size_final, anneal_steps: epsilon, annealed linearly.
      outer_optimizer: hand `phi - mean(W)` to the compiled optimizer instead.
    """

    argument_ranges = {"inner_lr": POSITIVE, "inner_beta_1": FRACTION,
                       "meta_step_size": Range(0, 1, low_open=True),
                       "meta_step_size_final": UNIT_INTERVAL,
                       "anneal_steps": Range(1, integer=True, optional=True)}

    def __init__(self, inner_optimizer: str = "adam", inner_lr: float = 1e-3,
                 inner_beta_1: float = 0.0, meta_step_size: float = 1.0,
                 meta_step_size_final: float = 0.0, anneal_steps: int = 100000,
                 outer_optimizer: bool = False, **kwargs):
        super().__init__(**kwargs)
        # (Meta step sizes interpolate toward the adapted weights: (0, 1] and [0, 1].)
        self.check_arguments({"inner_lr": inner_lr, "inner_beta_1": inner_beta_1,
                              "meta_step_size": meta_step_size,
                              "meta_step_size_final": meta_step_size_final,
                              "anneal_steps": anneal_steps})
        self.inner_optimizer = make_inner_optimizer(inner_optimizer, inner_lr, inner_beta_1)
        self.meta_step_size = float(meta_step_size)
        self.meta_step_size_final = float(meta_step_size_final)
        self.anneal_steps = int(anneal_steps)
        self.outer_optimizer = bool(outer_optimizer)

    @property
    def meta_variables(self) -> list:
        """phi: the variables the outer step moves."""
        return self.trainable_variables

    def adapt_task(self, params, batch, index, seed, training=True):
        """The inner loop on task `index` of `batch`, from `params` (phi as tensors).

        Returns (adapted weights like `params`, [one scalar per entry of `self.metrics`]).
        `seed` (`[2]` ints) fixes its randomness; `training` picks the meta-training or the
        meta-test inner loop.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement adapt_task().")

    def current_meta_step_size(self) -> tf.Tensor:
        """epsilon at the optimizer's current step."""
        return linear_anneal(self.optimizer.iterations, self.meta_step_size,
                             self.meta_step_size_final, self.anneal_steps)

    def run_tasks(self, batch, step, training=True):
        """(mean adapted weights, mean metrics) over the tasks of `batch`; `step` seeds them."""
        params = weights.values(self.meta_variables)
        step = tf.cast(step, tf.int64)
        size = tf.shape(batch[self.batch_keys[0]])[0]

        def one_task(i):
            return self.adapt_task(params, batch, i, tf.stack([step, tf.cast(i, tf.int64)]),
                                   training)

        return mean_over_tasks(one_task, size, params, len(self.metrics))

    def report(self, values, size):
        for tracker, value in zip(self.metrics, values, strict=True):
            tracker.update_state(value, sample_weight=size)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        batch = self.check_batch(data)
        adapted_mean, values = self.run_tasks(batch, self.optimizer.iterations)
        reptile_update(self.optimizer, self.meta_variables, adapted_mean,
                       self.current_meta_step_size(), self.outer_optimizer)
        return self.report(values, tf.shape(batch[self.batch_keys[0]])[0])


def annealed_arguments(config) -> dict:
    """A Reptile learner's constructor arguments of `config`: its learner section, with
    epsilon annealed over the run (`anneal_steps=None`)."""
    arguments = dict(config.learner)
    arguments["anneal_steps"] = arguments.get("anneal_steps") or config.num_steps
    return arguments

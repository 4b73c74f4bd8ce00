"""The regression protocol of MAML's paper (Finn et al. 2017, section 5.1): the episodes a
regression learner trains and validates on, and the meta-test beside the paper's
pretrained baseline. `MAMLRegression` (`tfmeta.algorithms.maml_regression`) calls it from
its `training_episodes` and `meta_test` hooks.

The meta-test reports the query mean squared error after 1 and 10 inner steps (95%
intervals), and beside it the paper's baseline: the same network trained by plain
regression on points of many tasks (`pretrain`), then fine-tuned on each support set
with the same inner steps and step size:

    baseline = argmin_theta E_task mse(f_theta(x), y)           # Adam on pooled points
    for task: fast = baseline; repeat k times: fast -= inner_lr * grad(mse(support), fast)
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.base import validation_batch_size
from tfmeta.algorithms.regression_plots import log_curves
from tfmeta.data.base import RegressionTasks
from tfmeta.errors import UserError
from tfmeta.evaluation import mean_and_ci95

REPORTED_STEPS = (1, 10)
BASELINE_MAX_STEPS = 20000  # the baseline trains config.num_steps steps, at most this many


def check_tasks(dataset):
    """Raises a UserError unless `dataset` is a generator of regression tasks."""
    if not isinstance(dataset, RegressionTasks):
        raise UserError(f"MAMLRegression learns regression tasks, but --dataset="
                        f"{getattr(dataset, 'name', dataset)!r} has none; use "
                        "--dataset=sinusoid, or MAML for a classification dataset.")


def training_episodes(dataset, spec, replicas=1, start_step=0, worker=0, workers=1):
    """(train, validation) meta-batches of regression episodes: `spec.train`'s support and
    query points per task; validation as meta-testing (`spec.test`)."""
    check_tasks(dataset)
    train = dataset.episodes(spec.train.shots, spec.train.queries, spec.meta_batch_size,
                             seed=spec.seed, start_step=start_step, worker=worker,
                             workers=workers)
    validation = dataset.episodes(spec.test.shots, spec.test.queries,
                                  validation_batch_size(spec, replicas), seed=spec.seed + 1,
                                  num_episodes=spec.val_episodes)
    return train, validation


def step_errors(learner, batch, steps: int):
    """Query mean squared error after 0..steps inner steps: `[B, steps + 1]`."""
    params = weights.values(learner.params)
    state = weights.values(learner.loop_state_variables)
    bn_training = learner.bn_training(False)

    def one_task(task):
        support_x, support_y, query_x, query_y = task
        trajectory, task_state = learner.adapt_trajectory(params, state, support_x, support_y,
                                                          steps, training=False)
        return tf.stack([
            learner.loss_fn(query_y, learner.forward_at(fast, task_state, query_x, bn_training,
                                                        k)[0])
            for k, fast in enumerate(trajectory)])

    keys = ("support_images", "support_labels", "query_images", "query_labels")
    return tf.map_fn(one_task, [batch[k] for k in keys],
                     fn_output_signature=tf.TensorSpec([steps + 1], tf.float32))


def episode_errors(learner, episodes, steps: int) -> np.ndarray:
    """`[E, steps + 1]` query errors of `learner` on every meta-batch of `episodes`."""
    compute = tf.function(lambda batch: step_errors(learner, batch, steps))
    return np.concatenate([compute(batch).numpy() for batch in episodes])


def pretrain(backbone, dataset, spec, steps: int, seed: int = 0) -> keras.Model:
    """A fresh copy of `backbone`'s architecture trained by plain regression (Adam at the
    run's learning rate) on the pooled points of `spec.meta_batch_size` tasks a step."""
    keras.utils.set_random_seed(seed)
    network = keras.models.clone_model(backbone)
    optimizer = keras.optimizers.Adam(spec.baseline.learning_rate)
    optimizer.build(network.trainable_variables)
    batches = dataset.episodes(spec.train.shots, spec.train.queries, spec.meta_batch_size,
                               seed=spec.seed + 3)

    @tf.function
    def train_step(batch):
        x = tf.reshape(tf.concat([batch["support_images"], batch["query_images"]], 1), [-1, 1])
        y = tf.reshape(tf.concat([batch["support_labels"], batch["query_labels"]], 1), [-1, 1])
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(network(x, training=True) - y))
        optimizer.apply_gradients(zip(tape.gradient(loss, network.trainable_variables),
                                      network.trainable_variables))

    for batch in batches.take(steps):
        train_step(batch)
    return network


def meta_test(learner, dataset, spec, num_episodes=None, seed=1234, shots=None,
              log_dir=None, step=0, baseline_learner=None) -> dict:
    """The regression meta-test: a dict with `mse_1_step`, `mse_10_steps` (and `_ci95`),
    the same for `baseline_` (when `baseline_learner(backbone)` makes the fine-tuning learner
    of a pretrained network), `mse_by_step`, `episodes`, `shots`, `queries`; with
    `log_dir`, the TensorBoard image of adapted curves (`regression_plots.log_curves`)."""
    check_tasks(dataset)
    shots = shots or spec.test.shots
    queries = spec.test.queries
    num_episodes = num_episodes or spec.eval_episodes
    batch_size = max(1, min(spec.eval_meta_batch_size, num_episodes))
    batches = math.ceil(num_episodes / batch_size)
    episodes = dataset.episodes(shots, queries, batch_size, seed=seed,
                                num_episodes=batches * batch_size)
    steps = max(REPORTED_STEPS)
    result = {"episodes": int(num_episodes), "shots": shots, "queries": queries}
    learners = {"": learner}
    if baseline_learner is not None:
        network = pretrain(learner.backbone, dataset, spec,
                           min(spec.baseline.steps, BASELINE_MAX_STEPS), seed=spec.seed)
        learners["baseline_"] = baseline_learner(network)
        result["baseline_pretrain_steps"] = min(spec.baseline.steps, BASELINE_MAX_STEPS)
    for prefix, each in learners.items():
        errors = episode_errors(each, episodes, steps)[:num_episodes]
        result[f"{prefix}mse_by_step"] = [float(v) for v in errors.mean(0)]
        for k in REPORTED_STEPS:
            name = f"{prefix}mse_{k}_step{'s' if k > 1 else ''}"
            result[name], result[f"{name}_ci95"] = mean_and_ci95(errors[:, k])
    if log_dir:
        log_curves(learners, dataset, shots, seed, log_dir, step)
    return result

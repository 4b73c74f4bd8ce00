"""MAML on regression tasks (Finn et al. 2017, section 5.1 and figure 2): `MAMLRegression`,
the learner `--algo=maml` builds for them (`MAML.from_experiment`), with its episodes, the
meta-test protocol with the paper's pretrained baseline, the TensorBoard plot of adapted
curves, and the served `adapt_and_predict(support_x, support_y, query_x)`.

The task loss is the mean squared error over the points:

    loss(fast, task) = mean((f_fast(task.x) - task.y)^2)      # [K, 1] targets -> scalar

The meta-test reports the query mean squared error after 1 and 10 inner steps (95%
intervals), and beside it the paper's baseline: the same network trained by plain
regression on points of many tasks (`pretrain`), then fine-tuned on each support set
with the same inner steps and step size:

    baseline = argmin_theta E_task mse(f_theta(x), y)           # Adam on pooled points
    for task: fast = baseline; repeat k times: fast -= inner_lr * grad(mse(support), fast)
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.base import validation_batch_size
from tfmeta.algorithms.maml import MAML
from tfmeta.errors import UserError
from tfmeta.evaluation import mean_and_ci95
from tfmeta.models import backbone_from_config
from tfmeta.serving import range_checks

REPORTED_STEPS = (1, 10)
BASELINE_MAX_STEPS = 20000  # the baseline trains config.num_steps steps, at most this many
PLOTTED_TASKS = 3


def mean_squared_error(targets, predictions):
    """Mean of `(targets - predictions)^2` over the last two axes (points, outputs):
    `[..., K, 1]` -> `[...]`."""
    error = tf.cast(targets, tf.float32) - tf.cast(predictions, tf.float32)
    return tf.reduce_mean(tf.square(error), axis=[-2, -1])


class MAMLRegression(MAML):
    """MAML on regression tasks: the mean squared error as the task loss and the only
    metric, regression episodes, the paper's meta-test with the pretrained baseline, and
    an export that serves predictions.

    Example:

        tasks = tfmeta.data.load_dataset("sinusoid")
        learner = MAMLRegression(tfmeta.models.mlp((1,), num_classes=1), inner_lr=0.01)
        learner.compile(optimizer=keras.optimizers.Adam(1e-3))
        learner.fit(tasks.episodes(10, 10, 25), steps_per_epoch=100)
        predictions = learner.adapt_and_predict_regression(support_x, support_y, query_x)

    Args: as MAML's; `model` maps inputs to `[n, outputs]` predictions, and `head` stays
    "learned" (a fast head is started from the classes of a support set).
    """

    input_kinds = ("regression",)

    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(model, **kwargs)
        if self.fast_head:
            raise UserError(f"head={self.head_mode!r} starts a classification head from the "
                            "classes of the support set; regression needs head='learned'.")

    @classmethod
    def from_experiment(cls, config, input_shape):
        """The backbone gets one output (the regression target)."""
        return cls(backbone_from_config(config.model, input_shape, num_classes=1),
                   **config.learner)

    def loss_fn(self, labels, outputs):
        """The mean squared error over the points (`mean_squared_error`)."""
        return mean_squared_error(labels, outputs)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def update_metrics(self, episodes, loss, logits):
        """The loss only: a regression has no accuracy."""
        del logits
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(episodes["query_labels"])[0])
        return {"loss": self.loss_tracker.result()}

    def training_episodes(self, dataset, spec, replicas: int = 1, start_step: int = 0,
                          worker: int = 0, workers: int = 1):
        return training_episodes(dataset, spec, replicas, start_step, worker, workers)

    def meta_test(self, dataset, spec, split: str = "test", num_episodes: int | None = None,
                  seed: int = 1234, ways: int | None = None, shots: int | None = None,
                  log_dir: str | None = None, step: int = 0) -> dict:
        """The query mean squared error after 1 and 10 inner steps with 95% intervals,
        beside the pretrained baseline's (`meta_test`). The tasks are drawn, so `split` and
        `ways` mean nothing here."""
        del split, ways
        return meta_test(self, dataset, spec, num_episodes, seed, shots, log_dir, step,
                         baseline_learner=lambda model: MAMLRegression(
                             model, inner_lr=self.inner_lr))

    def serving_module(self, dataset) -> tf.Module:
        return RegressionServing(self, dataset)

    def adapt_and_predict_regression(self, support_x, support_y, query_x):
        """One unbatched regression task -> query predictions `[m, outputs]`."""
        episodes = {"support_images": support_x[None], "support_labels": support_y[None],
                    "query_images": query_x[None]}
        return self.query_logits(episodes, training=False)[0]


@functools.cache
def regression_learner(cls: type) -> type:
    """`cls` (MAML or a variant of it) on regression tasks: `MAMLRegression`'s overrides
    over the variant's inner loop, e.g. `MetaSGDRegression(MAMLRegression, MetaSGD)`."""
    if issubclass(cls, MAMLRegression):
        return cls
    if cls is MAML:
        return MAMLRegression
    return type(f"{cls.__name__}Regression", (MAMLRegression, cls),
                {"__module__": cls.__module__, "__doc__": regression_learner.__doc__})


def check_tasks(dataset):
    if not hasattr(dataset, "episodes") or not hasattr(dataset, "sample_episode"):
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


def pretrain(model, dataset, spec, steps: int, seed: int = 0) -> keras.Model:
    """A fresh copy of `model`'s architecture trained by plain regression (Adam at the
    run's learning rate) on the pooled points of `spec.meta_batch_size` tasks a step."""
    keras.utils.set_random_seed(seed)
    network = keras.models.clone_model(model)
    optimizer = keras.optimizers.Adam(spec.learning_rate)
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
    the same for `baseline_` (when `baseline_learner(model)` makes the fine-tuning learner
    of a pretrained network), `mse_by_step`, `episodes`, `shots`, `queries`."""
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
        network = pretrain(learner.model, dataset, spec,
                           min(spec.num_steps, BASELINE_MAX_STEPS), seed=spec.seed)
        learners["baseline_"] = baseline_learner(network)
        result["baseline_pretrain_steps"] = min(spec.num_steps, BASELINE_MAX_STEPS)
    for prefix, each in learners.items():
        errors = episode_errors(each, episodes, steps)[:num_episodes]
        result[f"{prefix}mse_by_step"] = [float(v) for v in errors.mean(0)]
        for k in REPORTED_STEPS:
            name = f"{prefix}mse_{k}_step{'s' if k > 1 else ''}"
            result[name], result[f"{name}_ci95"] = mean_and_ci95(errors[:, k])
    if log_dir:
        log_curves(learners, dataset, shots, seed, log_dir, step)
    return result


# ------------------------------------------------------------------ the plot
COLORS = {"true": (0, 160, 0), "1 step": (80, 80, 255), "10 steps": (220, 0, 0),
          "baseline 10 steps": (150, 150, 150), "support": (0, 0, 0)}


def adapted_curves(learner, episode, grid, steps=REPORTED_STEPS):
    """Predictions `[len(steps), G]` on `grid [G, 1]` after each of `steps` inner steps."""
    params = weights.values(learner.params)
    state = weights.values(learner.loop_state_variables)
    trajectory, state = learner.adapt_trajectory(params, state, episode["support_images"],
                                                 episode["support_labels"], max(steps),
                                                 training=False)
    bn_training = learner.bn_training(False)
    return np.stack([learner.forward_at(trajectory[k], state, grid, bn_training, k)[0]
                     .numpy()[:, 0] for k in steps])


def draw_panel(grid, curves, points, y_limit, height=120):
    """An RGB uint8 image `[height, G, 3]`: each (color, ys) curve and (color, xs, ys) points."""
    width = len(grid)
    image = np.full((height, width, 3), 255, np.uint8)

    def rows(ys):
        return np.clip(((y_limit - np.asarray(ys)) / (2 * y_limit) * (height - 1)).round(),
                       0, height - 1).astype(int)

    image[rows(0.0), :] = 220
    for color, ys in curves:
        r = rows(ys)
        for offset in (0, 1):
            image[np.clip(r + offset, 0, height - 1), np.arange(width)] = color
    low, high = float(grid[0]), float(grid[-1])
    for color, xs, ys in points:
        columns = np.clip(((np.asarray(xs) - low) / (high - low) * (width - 1)).round(), 0,
                          width - 1).astype(int)
        for dr in (-2, -1, 0, 1, 2):
            for dc in (-2, -1, 0, 1, 2):
                image[np.clip(rows(ys) + dr, 0, height - 1),
                      np.clip(columns + dc, 0, width - 1)] = color
    return image


def log_curves(learners, dataset, shots, seed, log_dir, step):
    """TensorBoard image `adapted_curves`: per task, the true curve (green), MAML after 1
    (blue) and 10 (red) steps, the baseline after 10 (gray) and the support points."""
    low, high = dataset.x_range
    grid = np.linspace(low, high, 256, dtype=np.float32)[:, None]
    panels = []
    tasks = dataset.episodes(shots, 1, None, seed=seed, num_episodes=PLOTTED_TASKS,
                             with_parameters=True)
    y_limit = 1.2 * dataset.amplitude_range[1]
    for episode in tasks:
        true = dataset.function(episode["amplitude"], episode["phase"], grid).numpy()[:, 0]
        maml = adapted_curves(learners[""], episode, tf.constant(grid))
        curves = [(COLORS["true"], true), (COLORS["1 step"], maml[0]),
                  (COLORS["10 steps"], maml[1])]
        if "baseline_" in learners:
            baseline = adapted_curves(learners["baseline_"], episode, tf.constant(grid))
            curves.insert(1, (COLORS["baseline 10 steps"], baseline[1]))
        support = (COLORS["support"], episode["support_images"].numpy()[:, 0],
                   episode["support_labels"].numpy()[:, 0])
        panels.append(draw_panel(grid[:, 0], curves, [support], y_limit))
    image = np.concatenate([np.concatenate([p, np.full((4, p.shape[1], 3), 128, np.uint8)])
                            for p in panels])
    with tf.summary.create_file_writer(log_dir).as_default():
        tf.summary.image("adapted_curves", image[None], step=step,
                         description="true (green), MAML 1 step (blue), 10 steps (red), "
                                     "pretrained baseline 10 steps (gray), support (black)")
    return image


# ------------------------------------------------------------------ serving
class RegressionServing(tf.Module):
    """`adapt_and_predict(support_x [k, *raw], support_y [k, outputs], query_x [m, *raw])
    -> {"predictions" [m, outputs]}`: checks the request in the graph, then adapts."""

    def __init__(self, learner, dataset):
        super().__init__(name="tfmeta_regression_serving")
        self.learner = learner
        self._preprocess = dataset.preprocess
        self._value_range = dataset.value_range
        self._raw_shape = tuple(dataset.raw_shape)
        self._outputs = int(learner.num_outputs)
        inputs = tf.TensorSpec([None, *dataset.raw_shape], tf.float32)
        targets = tf.TensorSpec([None, self._outputs], tf.float32)
        self.adapt_and_predict = tf.function(self._adapt_and_predict,
                                             input_signature=[inputs, targets, inputs])

    def signatures(self) -> dict:
        return {"adapt_and_predict": self.adapt_and_predict.get_concrete_function()}

    def _adapt_and_predict(self, support_x, support_y, query_x):
        checks = [
            tf.debugging.assert_positive(tf.shape(support_x)[0], message=(
                "support_x is empty: adapting needs at least one (x, y) support point")),
            tf.debugging.assert_positive(tf.shape(query_x)[0], message=(
                "query_x is empty: send at least one query point")),
            tf.debugging.assert_equal(tf.shape(support_y)[0], tf.shape(support_x)[0], message=(
                "support_y must have one target per support_x point")),
            *range_checks(support_x, self._value_range, "support_x", self._raw_shape),
            *range_checks(query_x, self._value_range, "query_x", self._raw_shape),
            *range_checks(support_y, None, "support_y", (self._outputs,)),
        ]
        with tf.control_dependencies(checks):
            predictions = self.learner.adapt_and_predict_regression(
                self._preprocess(support_x), tf.identity(support_y), self._preprocess(query_x))
        # Inputs far outside the training range can overflow the adapted model's inner
        # steps: a clear error, never NaN predictions.
        finite = tf.debugging.assert_all_finite(predictions, (
            "the adapted model's predictions are not finite: the support or query points are "
            "too far outside the range it was meta-trained on"))
        with tf.control_dependencies([finite]):
            return {"predictions": tf.cast(predictions, tf.float32)}

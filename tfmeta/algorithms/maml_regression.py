"""MAML on regression tasks (Finn et al. 2017, section 5.1 and figure 2): `MAMLRegression`,
the learner `--algo=maml` builds for them (`tfmeta.algorithms.learner_class`), and MAML's
variants on regression tasks, each its own inner loop under `MAMLRegression`'s overrides
(`MetaSGDRegression`, `ANILRegression`, `MAMLPlusPlusRegression`).

The task loss is the mean squared error over the points:

    loss(fast, task) = mean((f_fast(task.x) - task.y)^2)      # [K, 1] targets -> scalar

The episodes and the meta-test with the paper's pretrained baseline are
`tfmeta.algorithms.regression_protocol`; the TensorBoard plot of adapted curves
`tfmeta.algorithms.regression_plots`; the served
`adapt_and_predict(support_x, support_y, query_x)` `tfmeta.serving.RegressionServing`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.algorithms import regression_protocol
from tfmeta.algorithms.anil import ANIL
from tfmeta.algorithms.maml import MAML, MAMLRecipe
from tfmeta.algorithms.maml_plusplus import MAMLPlusPlus
from tfmeta.algorithms.metasgd import MetaSGD
from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config
from tfmeta.serving import RegressionServing


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

    Args: as MAML's; `backbone` maps inputs to `[n, outputs]` predictions, and `head` stays
    "learned" (a fast head is started from the classes of a support set).
    """


    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(backbone, **kwargs)
        if self.fast_head:
            raise UserError(f"head={self.head_mode!r} starts a classification head from the "
                            "classes of the support set; regression needs head='learned'.")

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
        """(train, validation) regression episodes (`regression_protocol.training_episodes`)."""
        return regression_protocol.training_episodes(dataset, spec, replicas, start_step,
                                                     worker, workers)

    def meta_test(self, dataset, spec, split: str = "test", num_episodes: int | None = None,
                  seed: int = 1234, ways: int | None = None, shots: int | None = None,
                  log_dir: str | None = None, step: int = 0) -> dict:
        """The query mean squared error after 1 and 10 inner steps with 95% intervals,
        beside the pretrained baseline's (`regression_protocol.meta_test`). The tasks are
        drawn, so `split` and `ways` mean nothing here."""
        del split, ways
        return regression_protocol.meta_test(
            self, dataset, spec, num_episodes, seed, shots, log_dir, step,
            baseline_learner=lambda backbone: MAMLRegression(backbone, inner_lr=self.inner_lr))

    def serving_module(self, dataset) -> tf.Module:
        return RegressionServing(self, dataset)

    def adapt_and_predict_regression(self, support_x, support_y, query_x):
        """One unbatched regression task -> query predictions `[m, outputs]`."""
        episodes = {"support_images": support_x[None], "support_labels": support_y[None],
                    "query_images": query_x[None]}
        return self.query_logits(episodes, training=False)[0]


# MAML's variants on regression tasks: `MAMLRegression` first in the MRO, so its loss,
# metrics, episodes, meta-test and export apply over the variant's own inner loop.
class MetaSGDRegression(MAMLRegression, MetaSGD):
    """Meta-SGD (learned per-parameter inner step sizes) on regression tasks."""


class ANILRegression(MAMLRegression, ANIL):
    """ANIL (the inner loop adapts the head only) on regression tasks."""


class MAMLPlusPlusRegression(MAMLRegression, MAMLPlusPlus):
    """MAML++ (per-step batch norm, learned per-step rates, ...) on regression tasks."""


class RegressionRecipe(MAMLRecipe):
    """A learner of regression tasks: the backbone gets one output (the target)."""

    input_kinds = ("regression",)

    def build(self, config, input_shape):
        return self.learner(backbone_from_config(config.model, input_shape, num_classes=1),
                            **config.learner)


# The recipes `tfmeta.algorithms.REGRESSION_RECIPES` names for --algo on regression tasks.
MAML_RECIPE = RegressionRecipe(MAMLRegression)
METASGD_RECIPE = RegressionRecipe(MetaSGDRegression)
ANIL_RECIPE = RegressionRecipe(ANILRegression)
MAML_PLUSPLUS_RECIPE = RegressionRecipe(MAMLPlusPlusRegression)

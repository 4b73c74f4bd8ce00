"""`MetaLearner`: the thin Keras model every tfmeta learner subclasses.

It holds what every learner shares, whatever it learns: Keras integration, the
meta-gradient of `meta_loss(batch) -> (loss, outputs)` with loss scaling and the replica
split, stateless per-step seeds, and the hooks the trainer, evaluation and export call.
What a meta-batch is, what is measured and what an export serves belong to the subclass.
Few-shot classifiers subclass `tfmeta.algorithms.episodic.EpisodicClassifier`, which adds
query logits, episode checks, accuracy and `adapt_and_predict`; Reptile-GAN (generation)
and MAML-RL (reinforcement learning) subclass this base directly.

Hooks, each with a default or an error naming what to write:

  the method
    meta_loss(batch)                   (scalar meta-loss, outputs for `update_metrics`)
    regularization_loss()              weight penalties (Keras `self.losses`)
    transform_gradients(gradients)     e.g. clipping, in the units of the mean meta-loss
    compute_meta_gradients(batch)      tapes `meta_loss` (with loss scaling and the replica
                                       split) -> (gradients, loss, outputs)
    train_step(data)                   the whole meta-update (the Reptile family replaces it)
    test_step(data)                    one validation meta-batch -> metrics
    update_metrics(batch, loss, outputs)
  data and evaluation
    check_batch(data)                  validate a meta-batch where it enters (`batch_keys`)
    training_episodes(dataset, spec, replicas, start_step, worker, workers)
                                       (train, validation) meta-batch datasets
    meta_test(dataset, spec, split, ...)
                                       the method's meta-test protocol -> dict
  serving
    takes_padded_episodes              whether it takes padded variable episodes
    serving_module(dataset)            the tf.Module a SavedModel export holds
    feature_model()                    the backbone whose features write_embeddings writes
                                       (without its head, if it has one)
  construction
    argument_ranges, check_arguments(arguments)   its constructor's allowed values

How a run builds and runs a learner (what data it takes, its batch-size field, XLA and CPU
threading, building it from a config) is its `tfmeta.algorithms.recipe.Recipe`, which the
trainer and the config read; the learner holds the method. The data hooks take a
`tfmeta.episode_spec.DataSpec`, the typed and frozen account of a run's episodes and
evaluation protocol that the trainer builds from the config. (`meta_test` is not Keras's
`evaluate`, which `fit` itself calls for validation.)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.errors import UserError
from tfmeta.ranges import check_all

# Seed salts of the stateless random draws a learner makes per meta-step.
NOISE_SALT, DROPOUT_SALT, ORDER_SALT = 1, 2, 3


def replica_mean(loss):
    """Scales a per-replica mean so that the all-reduced SUM of gradients is the global mean."""
    return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


def validation_batch_size(spec, replicas: int) -> int:
    """Episodes per validation meta-batch: at most `eval_meta_batch_size` and `val_episodes`,
    a multiple of the replica count."""
    size = max(replicas, min(spec.eval_meta_batch_size, spec.val_episodes))
    return size - size % replicas


class _Compiled:
    """Compiled functions a learner keeps for its eager callers. Not trackable, so neither
    checkpoints nor SavedModels see them (a SavedModel would try to save every trace)."""

    def __init__(self):
        self.functions = {}


class MetaLearner(keras.Model):
    """Base class of tfmeta's learners; see the module docstring for the hooks."""

    # The keys a meta-batch must have.
    batch_keys: tuple = ()
    # Whether it trains and evaluates on variable episodes (`episode_sampler.name="variable"`:
    # padded, labels -1 in the padding), which the trainer refuses for a learner without.
    takes_padded_episodes = False
    # Whether opening a run must give it its training classes' mean feature before it serves
    # (`feature_mean`: a head that centres on it, `tfmeta.algorithms.finetune`).
    needs_feature_mean = False
    # Constructor argument -> its allowed `tfmeta.ranges.Range`; merged over the bases, and
    # checked by `check_arguments` (from a config before anything is built, and here).
    argument_ranges: dict = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._compiled = _Compiled()

    # ------------------------------------------------------------ construction
    @classmethod
    def check_arguments(cls, arguments, prefix: str = "") -> None:
        """Raises a ValueError naming the first argument outside its `argument_ranges`."""
        ranges = {}
        for klass in reversed(cls.__mro__):
            ranges.update(vars(klass).get("argument_ranges", {}))
        check_all(ranges, arguments, prefix)

    # -------------------------------------------------------------- the method
    def meta_loss(self, batch):
        """(scalar meta-loss, outputs that `update_metrics` takes) of a meta-batch, in
        training mode."""
        raise NotImplementedError(f"{type(self).__name__} must implement meta_loss(batch).")

    def regularization_loss(self):
        """Weight penalties added to the meta-loss (Keras `self.losses` by default)."""
        return tf.add_n(self.losses) if self.losses else 0.0

    def transform_gradients(self, gradients):
        """Rewrites the meta-gradients (of the mean meta-loss, before the optimizer)."""
        return gradients

    def compute_meta_gradients(self, batch):
        """Returns (gradients for `trainable_variables`, mean meta-loss, outputs)."""
        with tf.GradientTape() as tape:
            loss, outputs = self.meta_loss(batch)
            scaled = self.optimizer.scale_loss(replica_mean(loss))
        gradients = tape.gradient(scaled, self.trainable_variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self._transformed(gradients), loss, outputs

    def _transformed(self, gradients):
        if type(self).transform_gradients is MetaLearner.transform_gradients:
            return gradients
        # Undo loss scaling and the replica split, transform, redo: the hook sees the
        # gradient of the mean meta-loss (under several replicas, of its replica's share).
        factor = self.optimizer.scale_loss(replica_mean(tf.constant(1.0)))
        return [g * factor for g in self.transform_gradients([g / factor for g in gradients])]

    def step_seed(self, salt: int):
        """A `[2]` int64 seed for a stateless random draw, a pure function of the meta-step,
        the replica and `salt`: a resumed run draws exactly what an uninterrupted one draws."""
        optimizer = getattr(self, "optimizer", None)  # None before compile()
        step = (tf.cast(optimizer.iterations, tf.int64) if optimizer is not None
                else tf.constant(0, tf.int64))
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        return tf.stack([step, tf.cast(replica, tf.int64) * 1000 + salt])

    # ------------------------------------------------------ Keras integration
    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        batch = self.check_batch(data)
        gradients, loss, outputs = self.compute_meta_gradients(batch)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self.update_metrics(batch, loss, outputs)

    def test_step(self, data):
        raise NotImplementedError(f"{type(self).__name__} must implement test_step(data), its "
                                  "validation of one meta-batch.")

    def update_metrics(self, batch, loss, outputs):
        """Tracks the mean meta-loss (weighted by the meta-batch size); returns the metrics."""
        del outputs
        size = tf.shape(batch[self.batch_keys[0]])[0] if self.batch_keys else 1
        self.loss_tracker.update_state(loss, sample_weight=size)
        return {m.name: m.result() for m in self.metrics}

    def compiled_function(self, name: str, function):
        """`tf.function(function)`, created once per learner, for calls made eagerly (a
        `tf.while_loop` run op by op is very slow)."""
        functions = self._compiled.functions
        if name not in functions:
            functions[name] = tf.function(function, reduce_retracing=True)
        return functions[name]

    # --------------------------------------------------- data and evaluation
    def check_batch(self, data):
        """Validates the structure of a meta-batch where it enters the learner: a dict with
        `batch_keys` (Keras's (x, y, sample_weight) packing unwrapped)."""
        return batch_dict(self, data, self.batch_keys)

    def training_episodes(self, dataset, spec, replicas: int = 1, start_step: int = 0,
                          worker: int = 0, workers: int = 1):
        """(train, validation) `tf.data.Dataset`s of meta-batches for `fit`: training
        meta-batch `i` a pure function of (`spec.seed`, `start_step + i`), worker `worker`
        of `workers` sampling its share."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_episodes().")

    def meta_test(self, dataset, spec, split: str = "test", num_episodes: int | None = None,
                  seed: int = 1234, ways: int | None = None, shots: int | None = None,
                  log_dir: str | None = None, step: int = 0) -> dict:
        """The method's meta-test protocol on `split` -> a dict of results."""
        raise NotImplementedError(f"{type(self).__name__} must implement meta_test().")

    # ----------------------------------------------------------------- serving
    def serving_module(self, dataset) -> tf.Module:
        """The module a SavedModel export holds; its `signatures()` are the served functions."""
        raise NotImplementedError(f"{type(self).__name__} must implement serving_module().")

    def feature_model(self) -> keras.Model:
        """The learner's Keras backbone, whose features (its outputs without its head, if
        it has one: `tfmeta.embeddings.feature_extractor`) are this learner's image features;
        what `bin/write_embeddings.py` embeds with and `model.init_from` copies."""
        raise UserError(f"{type(self).__name__} has no single image backbone to write "
                        "features with; pass a Keras feature model to write_embeddings().")


def batch_dict(learner, data, keys):
    """`data` as a dict holding `keys`, unpacked from Keras's (x, y, sample_weight); a
    ValueError naming what it got and how to build batches otherwise."""
    if isinstance(data, tuple | list):  # Keras packs (x, y, sample_weight); x is the batch
        data, _, _ = keras.utils.unpack_x_y_sample_weight(tuple(data))
    if not isinstance(data, dict) or any(k not in data for k in keys):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        name = type(learner).__name__
        raise UserError(f"{name} takes a dict of tensors with keys {list(keys)}; got {got}. "
                        f"Build batches with {name}.training_episodes().")
    return data

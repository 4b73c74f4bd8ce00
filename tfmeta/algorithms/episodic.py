"""`EpisodicClassifier`: the few-shot classifier layer over `MetaLearner`.

Its meta-batches are episodes (see `tfmeta.data.episodes`): dicts with `support_images
[B, N*K, ...]`, `support_labels [B, N*K]`, `query_images [B, M, ...]` and, for training and
evaluation, `query_labels [B, M]`. Because `train_step` and `test_step` take such a batch,
Keras does the rest:

    learner = tfmeta.algorithms.MAML(tfmeta.models.conv4(num_classes=5))
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    learner.fit(train_episodes, validation_data=val_episodes, steps_per_epoch=100)

Hooks it adds to the base's (`tfmeta.algorithms.base`), from the smallest a subclass
overrides to the largest:

  the method
    query_logits(episodes, training)   adapt to each support set, score its queries [B, M, N]
    loss_fn(labels, outputs)           loss per episode over its last label axis (cross-entropy)
    query_loss(episodes, logits)       per-episode loss [B]: loss_fn on the queries
    meta_loss(episodes)                (meta-loss, query logits): the mean query loss of the
                                       adapted learner plus penalties; MAML's task loop
                                       replaces compute_meta_gradients with one tape per task
                                       over `task_meta_loss`, so the MAML family overrides
                                       that, not `meta_loss`
  data and evaluation
    training_episodes, validation_episodes    N-way K-shot episodes of the spec
    test_logits(episodes)              query logits at meta-test time and in serving:
                                       `query_logits`, unless a learner does more there
                                       (fine-tuning, `tfmeta.algorithms.finetune`)
    meta_test(dataset, spec, split, ...)      accuracy with its 95% interval
  serving
    max_ways                           the most ways served (None: any number)
    adapt_and_predict(support_images, support_labels, query_images)
    serving_module(dataset)            `AdaptAndPredict`
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import evaluation
from tfmeta.algorithms.base import MetaLearner, batch_dict, validation_batch_size
from tfmeta.algorithms.recipe import Recipe
from tfmeta.data.episodes import episode_dataset
from tfmeta.data.shape import EPISODE_KEYS
from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config
from tfmeta.ranges import POSITIVE
from tfmeta.serving import AdaptAndPredict
from tfmeta.tensors import accuracy, cross_entropy, num_ways


class EpisodicClassifier(MetaLearner):
    """A learner of N-way K-shot classification episodes; see the module docstring."""

    # The keys of an episode meta-batch (the last one only when labelled).
    batch_keys = EPISODE_KEYS
    # The open-set distance beyond which a served query is `unknown` (None: no rejection);
    # learners that measure the distance take it as an argument (`FineTuningClassifier`).
    open_set_threshold = None
    # Whether the serving head classifies the queries together (`tfmeta.heads`).
    transductive = False

    argument_ranges = {"temperature": POSITIVE}

    def __init__(self, temperature: float = 1.0, **kwargs):
        """`temperature`: what served probabilities divide the logits by,
        `softmax(logits / temperature)`; fitted on validation episodes by `bin/evaluate.py
        --calibrate` (`tfmeta.calibration`), 1 until then."""
        super().__init__(**kwargs)
        self.check_arguments({"temperature": temperature})
        self.temperature = float(temperature)
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    # -------------------------------------------------------------- the method
    def query_logits(self, episodes, training=False):
        """Adapts to each episode's support set and returns query logits `[B, M, N]`."""
        raise NotImplementedError(f"{type(self).__name__} must implement query_logits().")

    def loss_fn(self, labels, outputs):
        """The task loss, averaged over the last axis of `labels`: cross-entropy (over the
        real labels: -1 marks padding in variable episodes)."""
        return cross_entropy(labels, outputs)

    def query_loss(self, episodes, logits):
        """Per-episode loss `[B]` of the query predictions (padding queries, label -1, count
        for nothing)."""
        return self.loss_fn(episodes["query_labels"], logits)

    def meta_loss(self, episodes):
        """(scalar meta-loss, query logits `[B, M, N]`) of a meta-batch, in training mode."""
        logits = self.query_logits(episodes, training=True)
        return tf.reduce_mean(self.query_loss(episodes, logits)) + self.regularization_loss(), \
            logits

    # ------------------------------------------------------ Keras integration
    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def call(self, episodes, training=False):
        return self.query_logits(episodes, training=training)

    def test_step(self, data):
        episodes = self.check_batch(data)
        logits = self.query_logits(episodes, training=False)
        loss = tf.reduce_mean(self.query_loss(episodes, logits))
        return self.update_metrics(episodes, loss, logits)

    def predict_step(self, data):
        return self.query_logits(self.check_batch(data, labelled=False), training=False)

    def test_logits(self, episodes):
        """Query logits `[B, M, N]` at meta-test time and in serving (`meta_test`,
        `adapt_and_predict`), not in the meta-validation `fit` runs after each epoch:
        `query_logits(episodes, training=False)`. A learner that adapts further at test
        time, at a cost no epoch should pay (fine-tuning its backbone), overrides it."""
        return self.query_logits(episodes, training=False)

    def test_outputs(self, episodes) -> dict:
        """What meta-test and serving read of a meta-batch: {"logits": `test_logits`}; a
        learner that measures how far each query lies from every support class adds
        "distance" `[B, M]` (`FineTuningClassifier`, `tfmeta.heads.open_set_distance`)."""
        return {"logits": self.test_logits(episodes)}

    def update_metrics(self, episodes, loss, logits):
        """Tracks the mean meta-loss and the mean per-episode accuracy over real queries."""
        self.accuracy_tracker.update_state(accuracy(episodes["query_labels"], logits))
        return super().update_metrics(episodes, loss, logits)

    # --------------------------------------------------- data and evaluation
    def check_batch(self, data, labelled=True):
        """Validates the structure of a meta-batch of episodes where it enters the learner
        (`labelled=False`: without query labels)."""
        try:
            data = batch_dict(self, data, self.batch_keys if labelled else self.batch_keys[:3])
        except ValueError as error:
            raise UserError(f"{error} (or tfmeta.data.episode_dataset())") from None
        images = data[self.batch_keys[0]]
        if getattr(images, "shape", None) is not None and images.shape.rank is not None \
                and images.shape.rank < 3:
            raise UserError(f"{self.batch_keys[0]} must be batched as [B, n, ...]; got shape "
                            f"{images.shape}.")
        return data

    def training_episodes(self, dataset, spec, replicas: int = 1, start_step: int = 0,
                          worker: int = 0, workers: int = 1):
        """(train, validation) `tf.data.Dataset`s of meta-batches for `fit`.

        Training: `spec.train` episodes, augmented by `spec.augment`; meta-batch `i` is a
        pure function of (`spec.seed`, `start_step + i`), so a run resumed at `start_step`
        sees what an uninterrupted run would. Under multi-worker training, worker `worker`
        of `workers` samples its share of each meta-batch. Validation: `spec.val_episodes`
        `spec.test` episodes of the val split. Fixed or variable, as the shapes say.
        """
        train = episode_dataset(dataset.split("train"), spec.train, spec.meta_batch_size,
                                seed=spec.seed, split="train", augment=spec.augment,
                                start_step=start_step, worker=worker, workers=workers)
        return train, self.validation_episodes(dataset, spec, replicas)

    def validation_episodes(self, dataset, spec, replicas: int = 1):
        """The meta-validation episodes `fit` scores after each epoch: `spec.val_episodes`
        `spec.test` episodes of the val split, the same every epoch."""
        return episode_dataset(dataset.split("val"), spec.test,
                               validation_batch_size(spec, replicas), seed=spec.seed + 1,
                               num_episodes=spec.val_episodes, split="val")

    def check_ways(self, ways: int) -> None:
        """Raises a ValueError if this learner cannot serve `ways`-way episodes."""
        if self.max_ways is not None and ways > self.max_ways:
            raise UserError(f"This {type(self).__name__} has {self.max_ways} outputs, so it "
                            f"serves at most {self.max_ways} ways; got ways={ways}. Evaluate "
                            f"with ways <= {self.max_ways}, or train with --set=ways={ways}.")

    def meta_test(self, dataset, spec, split: str = "test", num_episodes: int | None = None,
                  seed: int = 1234, ways: int | None = None, shots: int | None = None,
                  log_dir: str | None = None, step: int = 0,
                  protocol: evaluation.Protocol | None = None) -> dict:
        """Query accuracy over `num_episodes` (default `spec.eval_episodes`) episodes of
        `split` with its 95% interval: a dict with `accuracy`, `ci95`, `episodes`, `ways`,
        `shots`, `queries`, `sampler`, `drawn` and `ece` (see `tfmeta.evaluation.evaluate`):
        the `spec.test` episodes, fixed or variable. `ways`/`shots` override its setting
        (with variable episodes, they ask for fixed ones of that setting); `log_dir`/`step`
        are where a learner may log extra summaries; `protocol`: uneven or open-set
        episodes (`tfmeta.evaluation.Protocol`; its temperature and threshold default to
        the learner's)."""
        del log_dir, step
        protocol = protocol or evaluation.Protocol(temperature=self.temperature,
                                                   threshold=self.open_set_threshold)
        episodes = spec.test.fixed(ways, shots) if ways or shots else spec.test
        variable = episodes.variable
        if variable is None:
            self.check_ways(episodes.ways)
        elif self.max_ways is not None and variable.max_ways > self.max_ways:
            raise UserError(f"This {type(self).__name__} serves at most {self.max_ways} ways, "
                            f"but variable episodes have up to episode_sampler.max_ways="
                            f"{variable.max_ways}; use --set=episode_sampler.max_ways="
                            f"{self.max_ways}.")
        return evaluation.evaluate(AtTestTime(self), dataset.split(split), episodes,
                                   num_episodes or spec.eval_episodes,
                                   spec.eval_meta_batch_size, seed, split, protocol=protocol,
                                   outputs_fn=self.test_outputs)

    # ----------------------------------------------------------------- serving
    @property
    def max_ways(self):
        """The most ways this learner serves (a fixed-size head), or None for any number."""
        return None

    def episode_checks(self, support_images, support_labels, query_images):
        """Graph assertions on one served episode; returns N (the number of ways) after them.

        An episode needs support and query examples, one label per support example, and
        labels that are exactly 0..N-1 with every class present (N = max label + 1).
        """
        shape_checks = [
            tf.debugging.assert_positive(tf.shape(support_images)[0], message=(
                "support_images is empty: an episode needs at least one support example of "
                "each class")),
            tf.debugging.assert_positive(tf.shape(query_images)[0], message=(
                "query_images is empty: send at least one query")),
            tf.debugging.assert_equal(tf.shape(support_labels)[0], tf.shape(support_images)[0],
                                      message="support_labels must have one label per "
                                              "support image"),
            tf.debugging.assert_non_negative(support_labels, message=(
                "support_labels must be in 0..N-1")),
            # Before anything is sized by the labels (a bincount of 2**31 - 1 allocates 8 GB).
            tf.debugging.assert_less_equal(
                tf.reduce_max(support_labels), tf.size(support_labels, support_labels.dtype),
                message="support_labels must be 0..N-1 with N at most the number of support "
                        "examples"),
        ]
        with tf.control_dependencies(shape_checks):
            ways = num_ways(support_labels)
            counts = tf.math.bincount(support_labels, minlength=ways)
            label_checks = [tf.debugging.assert_positive(counts, message=(
                "support_labels must cover every class 0..N-1 (N = max label + 1): some class "
                "below the largest label has no support example; relabel the classes 0..N-1"))]
            if self.max_ways is not None:
                label_checks.append(tf.debugging.assert_less_equal(ways, self.max_ways, message=(
                    f"This {type(self).__name__} learner has {self.max_ways} outputs, so it "
                    f"serves at most {self.max_ways} ways; support_labels must be in "
                    f"0..{self.max_ways - 1}")))
        with tf.control_dependencies(label_checks):
            return tf.identity(ways)

    def adapt_and_predict(self, support_images, support_labels, query_images):
        """One unbatched episode -> query logits `[m, N]` (N = max(support_labels) + 1)."""
        return self.adapt_and_predict_outputs(support_images, support_labels,
                                              query_images)["logits"]

    def adapt_and_predict_outputs(self, support_images, support_labels, query_images) -> dict:
        """One unbatched episode -> `test_outputs` of it: "logits" `[m, N]` (N =
        max(support_labels) + 1) and, where the learner measures it, "distance" `[m]`."""
        support_labels = tf.cast(support_labels, tf.int32)
        ways = self.episode_checks(support_images, support_labels, query_images)
        with tf.control_dependencies([ways]):
            episodes = {"support_images": tf.identity(support_images)[None],
                        "support_labels": tf.identity(support_labels)[None],
                        "query_images": tf.identity(query_images)[None]}
        outputs = {name: value[0] for name, value in self.test_outputs(episodes).items()}
        outputs["logits"] = outputs["logits"][:, :ways]
        return outputs

    def serving_module(self, dataset) -> tf.Module:
        return AdaptAndPredict(self, dataset)

    # ---------------------------------------- exports beyond TensorFlow (bin/export.py)
    def portable_refusal(self) -> str | None:
        """Why this learner's adaptation cannot run in LiteRT and ONNX (no gradient ops, no
        TensorFlow-only ops), or None where `portable_logits` can
        (`tfmeta.training.portable`)."""
        return (f"{type(self).__name__} adapts with ops that only TensorFlow runs (a state "
                "updated per example, or gradient steps on the whole network)")

    def portable_logits(self, support_images, support_labels, query_images):
        """One episode's query logits `[m, N]` on model inputs, written in ops LiteRT and
        ONNX share (no request checks: the runtime makes them, `tfmeta.lite`):
        `query_logits` of a meta-batch of one, N = max(support_labels) + 1 wide."""
        episodes = {"support_images": support_images[None],
                    "support_labels": support_labels[None], "query_images": query_images[None]}
        return self.query_logits(episodes, training=False)[0][:, :num_ways(support_labels)]


class AtTestTime:
    """A classifier as `tfmeta.evaluation` scores it at meta-test time: its `query_logits`
    are the learner's `test_logits` (fine-tuning included, where it fine-tunes)."""

    def __init__(self, learner: EpisodicClassifier):
        self.learner = learner

    def query_logits(self, episodes, training=False):
        del training  # always False at meta-test time
        return self.learner.test_logits(episodes)


class ClassifierRecipe(Recipe):
    """A classifier's recipe: its backbone has a `config.ways`-way classification head
    where the learner's backbone is its classifier (`backbone_has_head`: the task loop's
    learners), else the backbone's features as they are."""

    backbone_has_head = False

    def build(self, config, input_shape):
        head = {"num_classes": config.ways} if self.backbone_has_head else {}
        return self.learner(backbone_from_config(config.model, input_shape, **head),
                            **config.learner)

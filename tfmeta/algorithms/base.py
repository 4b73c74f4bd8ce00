"""`MetaLearner`: the Keras model every tfmeta algorithm subclasses.

A learner wraps an ordinary backbone. Its inputs are meta-batches of episodes
(see `tfmeta.data.episodes`): dicts with `support_images [B, N*K, ...]`,
`support_labels [B, N*K]`, `query_images [B, M, ...]` and, for training and
evaluation, `query_labels [B, M]`. Because `train_step` and `test_step` take such
a batch, Keras does the rest:

    learner = tfmeta.algorithms.MAML(tfmeta.models.conv4(num_classes=5))
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    learner.fit(train_episodes, validation_data=val_episodes, steps_per_epoch=100)

Hooks, each with a default, from the smallest to the largest a subclass overrides
(the trainer, evaluation and export call these methods and nothing else):

  the method
    query_logits(episodes, training)   adapt to each support set, score its queries [B, M, N]
    loss_fn(labels, outputs)           loss per episode over its last label axis (cross-entropy)
    query_loss(episodes, logits)       per-episode loss [B]: loss_fn on the queries
    regularization_loss()              weight penalties (Keras `self.losses`)
    meta_loss(episodes)                (meta-loss, query logits); the default is the mean
                                       query loss of the adapted learner plus penalties
    transform_gradients(gradients)     e.g. clipping, in the units of the mean meta-loss
    compute_meta_gradients(episodes)   tapes `meta_loss` (with loss scaling and the replica
                                       split); MAML's task loop replaces it with one tape
                                       per task over `task_meta_loss`, so the MAML family
                                       overrides that, not `meta_loss`
    train_step(data)                   the whole meta-update (the Reptile family replaces it)
  data and evaluation
    check_batch(data)                  validate a meta-batch where it enters
    training_episodes(dataset, config, replicas, start_step)
                                       (train, validation) meta-batch datasets
    meta_test(dataset, config, split, ...)
                                       the method's meta-test protocol -> dict with accuracy, ci95
  serving
    max_ways                           the most ways served (None: any number)
    variable_episodes                  whether it takes padded variable episodes
    adapt_and_predict(support_images, support_labels, query_images)
    serving_module(dataset)            the tf.Module a SavedModel export holds
    feature_model()                    the backbone whose features write_embeddings writes
  construction
    arguments_from_data(arguments, dataset)   constructor arguments the data decides
    from_experiment(config, input_shape)   the learner a config names

(`meta_test` is not Keras's `evaluate`, which `fit` itself calls for validation.)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta import evaluation
from tfmeta.data.augment import RandomAffine
from tfmeta.data.episodes import EPISODE_KEYS, episode_dataset
from tfmeta.episode_spec import eval_spec, sampler_options
from tfmeta.models import backbone_from_config
from tfmeta.ranges import check_all
from tfmeta.serving import AdaptAndPredict
from tfmeta.tensors import accuracy, cross_entropy, num_ways

# Seed salts of the stateless random draws a learner makes per meta-step.
NOISE_SALT, DROPOUT_SALT, ORDER_SALT = 1, 2, 3


def replica_mean(loss):
    """Scales a per-replica mean so that the all-reduced SUM of gradients is the global mean."""
    return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


def validation_batch_size(config, replicas: int) -> int:
    """Episodes per validation meta-batch: at most `eval_meta_batch_size` and `val_episodes`,
    a multiple of the replica count."""
    size = max(replicas, min(config.eval_meta_batch_size, config.val_episodes))
    return size - size % replicas


class _Compiled:
    """Compiled functions a learner keeps for its eager callers. Not trackable, so neither
    checkpoints nor SavedModels see them (a SavedModel would try to save every trace)."""

    def __init__(self):
        self.functions = {}


class MetaLearner(keras.Model):
    """Base class of tfmeta's learners; see the module docstring for the hooks."""

    # The keys a meta-batch must have (the last one only when labelled).
    batch_keys = EPISODE_KEYS
    # from_experiment: the backbone gets a classification head of `config.ways` outputs.
    backbone_has_head = False
    # What its examples may be (tfmeta.data.INPUT_KINDS): images for most learners.
    input_kinds: tuple = ("images",)
    # The fewest ways its classification episodes may have (a 1-way episode is trivial).
    min_ways: int = 2
    # Whether it trains and evaluates on variable episodes (`episode_sampler="variable"`:
    # padded, labels -1 in the padding), which the trainer refuses for a learner without.
    variable_episodes = False
    # Whether `jit_compile="auto"` may turn XLA on (Keras then does so with a GPU and no
    # distribution strategy); a learner that XLA compiles badly says no, with its reason.
    xla_auto = True
    xla_auto_reason = ""
    # Constructor arguments a config does not set (the subclass or from_experiment does).
    fixed_arguments: tuple = ()
    # Constructor argument -> its allowed `tfmeta.ranges.Range`; merged over the bases, and
    # checked by `check_arguments` (from a config before anything is built, and here).
    argument_ranges: dict = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self._compiled = _Compiled()

    # ------------------------------------------------------------ construction
    @classmethod
    def check_arguments(cls, arguments, prefix: str = "") -> None:
        """Raises a ValueError naming the first argument outside its `argument_ranges`."""
        ranges = {}
        for klass in reversed(cls.__mro__):
            ranges.update(vars(klass).get("argument_ranges", {}))
        check_all(ranges, arguments, prefix)

    @classmethod
    def check_input_kind(cls, kind: str | None, dataset: str) -> None:
        """Raises a ValueError if this learner cannot take `dataset`'s examples (`kind`:
        "images", "embeddings", "regression" or "environment"; None: unknown, not checked)."""
        if kind is not None and kind not in cls.input_kinds:
            hint = ("write embeddings of an image dataset with bin/write_embeddings.py, or "
                    "choose the dataset's embedding files (data.embeddings)"
                    if "embeddings" in cls.input_kinds else
                    "choose the dataset's images (--set=data.embeddings=None) or a learner of "
                    "embeddings such as --algo=leo")
            if kind == "regression":
                hint = ("regression tasks need a learner of them: --algo=maml (which learns "
                        "them as MAMLRegression); classification learners take image or "
                        "embedding datasets")
            if kind == "environment":
                hint = ("it is a reinforcement-learning task distribution; use --algo=maml_rl")
            raise ValueError(f"{cls.__name__} takes {' or '.join(cls.input_kinds)}, but "
                             f"--dataset={dataset} with these options gives {kind}; {hint}.")

    @classmethod
    def arguments_from_data(cls, arguments, dataset) -> dict:
        """Constructor arguments that the data decides where the config leaves them open
        (e.g. Pretrain's head size on a user's dataset); the trainer records them in
        config.json. `arguments`: the config's `learner` section."""
        del arguments, dataset
        return {}

    @classmethod
    def from_experiment(cls, config, input_shape):
        """The learner `config` describes: `cls(backbone, **config.learner)`, the backbone
        named by `config.model` (with a `config.ways`-way head if `backbone_has_head`)."""
        head = {"num_classes": config.ways} if cls.backbone_has_head else {}
        return cls(backbone_from_config(config.model, input_shape, **head), **config.learner)

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

    def regularization_loss(self):
        """Weight penalties added to the meta-loss (Keras `self.losses` by default)."""
        return tf.add_n(self.losses) if self.losses else 0.0

    def meta_loss(self, episodes):
        """(scalar meta-loss, query logits `[B, M, N]`) of a meta-batch, in training mode."""
        logits = self.query_logits(episodes, training=True)
        return tf.reduce_mean(self.query_loss(episodes, logits)) + self.regularization_loss(), \
            logits

    def transform_gradients(self, gradients):
        """Rewrites the meta-gradients (of the mean meta-loss, before the optimizer)."""
        return gradients

    def compute_meta_gradients(self, episodes):
        """Returns (gradients for `trainable_variables`, mean meta-loss, query logits)."""
        with tf.GradientTape() as tape:
            loss, logits = self.meta_loss(episodes)
            scaled = self.optimizer.scale_loss(replica_mean(loss))
        gradients = tape.gradient(scaled, self.trainable_variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self._transformed(gradients), loss, logits

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
        return [self.loss_tracker, self.accuracy_tracker]

    def call(self, episodes, training=False):
        return self.query_logits(episodes, training=training)

    def train_step(self, data):
        episodes = self.check_batch(data)
        gradients, loss, logits = self.compute_meta_gradients(episodes)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self.update_metrics(episodes, loss, logits)

    def test_step(self, data):
        episodes = self.check_batch(data)
        logits = self.query_logits(episodes, training=False)
        loss = tf.reduce_mean(self.query_loss(episodes, logits))
        return self.update_metrics(episodes, loss, logits)

    def predict_step(self, data):
        return self.query_logits(self.check_batch(data, labelled=False), training=False)

    def update_metrics(self, episodes, loss, logits):
        """Tracks the mean meta-loss and the mean per-episode accuracy over real queries."""
        batch = tf.shape(episodes["query_labels"])[0]
        self.loss_tracker.update_state(loss, sample_weight=batch)
        self.accuracy_tracker.update_state(accuracy(episodes["query_labels"], logits))
        return {m.name: m.result() for m in self.metrics}

    def compiled_function(self, name: str, function):
        """`tf.function(function)`, created once per learner, for calls made eagerly (a
        `tf.while_loop` run op by op is very slow)."""
        functions = self._compiled.functions
        if name not in functions:
            functions[name] = tf.function(function, reduce_retracing=True)
        return functions[name]

    # --------------------------------------------------- data and evaluation
    def check_batch(self, data, labelled=True):
        """Validates the structure of a meta-batch where it enters the learner."""
        if isinstance(data, tuple | list):  # Keras packs (x, y, sample_weight); x is the batch
            data, _, _ = keras.utils.unpack_x_y_sample_weight(tuple(data))
        needed = self.batch_keys if labelled else self.batch_keys[:3]
        if not isinstance(data, dict) or any(k not in data for k in needed):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{type(self).__name__} takes a dict of tensors with keys "
                             f"{list(needed)}; got {got}. Build batches with "
                             f"{type(self).__name__}.training_episodes() or "
                             "tfmeta.data.episode_dataset().")
        images = data[needed[0]]
        if getattr(images, "shape", None) is not None and images.shape.rank is not None \
                and images.shape.rank < 3:
            raise ValueError(f"{needed[0]} must be batched as [B, n, ...]; got shape "
                             f"{images.shape}.")
        return data

    def training_episodes(self, dataset, config, replicas: int = 1, start_step: int = 0,
                          worker: int = 0, workers: int = 1):
        """(train, validation) `tf.data.Dataset`s of meta-batches for `fit`.

        Training: `config.ways`-way episodes with `config.train_shots` (default `shots`)
        support and `config.queries` query examples per class, augmented as `config.augment`
        says; meta-batch `i` is a pure function of (`config.seed`, `start_step + i`), so a
        run resumed at `start_step` sees what an uninterrupted run would. Under multi-worker
        training, worker `worker` of `workers` samples its share of each meta-batch.
        Validation: `val_episodes` episodes of the meta-test setting from the val split.
        With `config.episode_sampler="variable"`, both are variable episodes instead.
        """
        train = episode_dataset(dataset.split("train"), config.ways,
                                config.train_shots or config.shots, config.queries,
                                config.meta_batch_size, seed=config.seed, split="train",
                                augment=RandomAffine.from_config(config.augment),
                                start_step=start_step, worker=worker, workers=workers,
                                **sampler_options(config))
        return train, self.validation_episodes(dataset, config, replicas)

    def validation_episodes(self, dataset, config, replicas: int = 1):
        """The meta-validation episodes `fit` scores after each epoch: `config.val_episodes`
        test-spec episodes of the val split, the same every epoch."""
        ways, shots, queries = eval_spec(config)
        return episode_dataset(dataset.split("val"), ways, shots, queries,
                               validation_batch_size(config, replicas), seed=config.seed + 1,
                               num_episodes=config.val_episodes, split="val",
                               **sampler_options(config))

    def check_ways(self, ways: int) -> None:
        """Raises a ValueError if this learner cannot serve `ways`-way episodes."""
        if self.max_ways is not None and ways > self.max_ways:
            raise ValueError(f"This {type(self).__name__} has {self.max_ways} outputs, so it "
                             f"serves at most {self.max_ways} ways; got ways={ways}. Evaluate "
                             f"with ways <= {self.max_ways}, or train with --set=ways={ways}.")

    def meta_test(self, dataset, config, split: str = "test", num_episodes: int | None = None,
                  seed: int = 1234, ways: int | None = None, shots: int | None = None,
                  log_dir: str | None = None, step: int = 0) -> dict:
        """Query accuracy over `num_episodes` (default `config.eval_episodes`) episodes of
        `split` with its 95% interval: a dict with `accuracy`, `ci95`, `episodes`, `ways`,
        `shots`, `queries`, `sampler` and `drawn` (see `tfmeta.evaluation.evaluate`): the
        config's episodes, fixed or variable. `ways`/`shots` override the config's
        meta-test setting (with variable episodes, they ask for fixed ones of that setting);
        `log_dir`/`step` are where a learner may log extra summaries."""
        del log_dir, step
        options = sampler_options(config)
        if ways or shots:
            options = {"sampler": "fixed", "variable": None}
        default_ways, default_shots, queries = eval_spec(config)
        ways, shots = ways or default_ways, shots or default_shots
        variable = options["variable"]
        if variable is None:
            self.check_ways(ways)
        elif self.max_ways is not None and variable.max_ways > self.max_ways:
            raise ValueError(f"This {type(self).__name__} serves at most {self.max_ways} ways, "
                             f"but variable episodes have up to variable_episodes.max_ways="
                             f"{variable.max_ways}; use --set=variable_episodes.max_ways="
                             f"{self.max_ways}.")
        return evaluation.evaluate(self, dataset.split(split), ways, shots, queries,
                                   num_episodes or config.eval_episodes,
                                   config.eval_meta_batch_size, seed, split, **options)

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
        support_labels = tf.cast(support_labels, tf.int32)
        ways = self.episode_checks(support_images, support_labels, query_images)
        with tf.control_dependencies([ways]):
            episodes = {"support_images": tf.identity(support_images)[None],
                        "support_labels": tf.identity(support_labels)[None],
                        "query_images": tf.identity(query_images)[None]}
        logits = self.query_logits(episodes, training=False)[0]
        return logits[:, :ways]

    def serving_module(self, dataset) -> tf.Module:
        """The module a SavedModel export holds; its `signatures()` are the served functions."""
        return AdaptAndPredict(self, dataset)

    def feature_model(self) -> keras.Model:
        """The Keras backbone whose outputs are this learner's image features."""
        raise ValueError(f"{type(self).__name__} has no single image backbone to write "
                         "features with; pass a Keras feature model to write_embeddings().")

"""Reptile (Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms").

https://arxiv.org/abs/1803.02999, after OpenAI's supervised-reptile code. Snapshot the
meta-weights phi, train a copy on each task of a meta-batch with k steps of an ordinary
optimizer, and move phi toward the adapted weights:

    for i, task in enumerate(meta_batch):
        W[i] = phi
        for batch in mini_batches(task.support, inner_batch_size, inner_steps):
            W[i] = inner_optimizer.step(W[i], grad(loss(W[i], batch), W[i]))
    epsilon = meta_step_size + (meta_step_size_final - meta_step_size) * step / anneal_steps
    phi = phi + epsilon * (mean(W) - phi)          # weights.interpolate(phi, mean(W), epsilon)

With `outer_optimizer=True`, `phi - mean(W)` is handed to the compiled Keras optimizer as
the gradient instead (the paper's Adam variant; SGD with learning rate epsilon is the
rule above). Either way the optimizer's `iterations` counts meta-steps (the interpolation
path increments it explicitly), so checkpoints, resuming and the annealing agree.

The inner optimizer is written on tensors (`InnerAdam`, `InnerSGD`): Keras optimizers
assign variables, which an inner loop never does. The reference uses Adam with beta1=0,
and a fresh Adam state for every task here (the reference code carried the second moment
across tasks; a per-task state makes adaptation a pure function of phi and the task).
Mini-batches are drawn as in the reference: the support set is shuffled, cut into
batches, and reshuffled when it runs out.

Batch norm always normalizes with the statistics of the batch it sees (as the reference),
so moving averages are never used. At meta-test time, `transductive=True` classifies all
queries of an episode in one batch; `transductive=False` classifies each query in a batch
made of the support set plus that query alone (the paper's non-transductive protocol).

Weight arithmetic goes through `tfmeta.weights`; `InnerAdam`, `InnerSGD`,
`mean_over_tasks` and `reptile_update` are shared with Reptile-GAN.
"""

from __future__ import annotations

import weakref

import keras
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.base import MetaLearner, accuracy, check_episodes, cross_entropy
from tfmeta.data.episodes import episode_dataset

INNER_OPTIMIZERS = ("adam", "sgd")
EVAL_SEED = 2 ** 31 - 1  # mini-batch order at meta-test time: fixed, so serving is deterministic
# learner -> its compiled query_logits for eager callers (kept off the learner so SavedModel
# export does not try to save it).
_COMPILED = weakref.WeakKeyDictionary()


# ------------------------------------------------------------- inner optimizers on tensors
class InnerSGD:
    """`params - learning_rate * grads`; its state is empty."""

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    def init(self, params):
        del params
        return ()

    def step(self, params, grads, state):
        return weights.gradient_step(params, grads, self.learning_rate), state


class InnerAdam:
    """Adam (Kingma and Ba 2015) on tensors, in the form of TF1's AdamOptimizer:

        t = t + 1
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        params = params - lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)

    The state `(t, m, v)` is a nest of tensors, so it can be a `tf.while_loop` variable.
    """

    def __init__(self, learning_rate: float, beta_1: float = 0.0, beta_2: float = 0.999,
                 epsilon: float = 1e-8):
        self.learning_rate = float(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def init(self, params):
        zeros = [tf.zeros_like(p) for p in params]
        return (tf.constant(0.0), zeros, list(zeros))

    def step(self, params, grads, state):
        t, m, v = state
        t = t + 1.0
        m = [self.beta_1 * m_i + (1.0 - self.beta_1) * g for m_i, g in zip(m, grads)]
        v = [self.beta_2 * v_i + (1.0 - self.beta_2) * tf.square(g) for v_i, g in zip(v, grads)]
        rate = (self.learning_rate * tf.sqrt(1.0 - self.beta_2 ** t)
                / (1.0 - self.beta_1 ** t))
        directions = [m_i / (tf.sqrt(v_i) + self.epsilon) for m_i, v_i in zip(m, v)]
        return weights.gradient_step(params, directions, rate), (t, m, v)


def make_inner_optimizer(name: str, learning_rate: float, beta_1: float = 0.0):
    if name == "adam":
        return InnerAdam(learning_rate, beta_1=beta_1)
    if name == "sgd":
        return InnerSGD(learning_rate)
    raise ValueError(f"inner_optimizer must be one of {INNER_OPTIMIZERS}; got {name!r}.")


# ------------------------------------------------------------------------ shared helpers
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


def reptile_update(model: keras.Model, variables, adapted_mean, epsilon,
                   outer_optimizer: bool) -> None:
    """The outer step on `variables` (phi) toward `adapted_mean` (mean over tasks of W).

    outer_optimizer=False: phi = phi + epsilon * (mean(W) - phi), then
        `model.optimizer.iterations += 1`.
    outer_optimizer=True: `model.optimizer.apply_gradients(phi - mean(W))`.
    """
    phi = weights.values(variables)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if outer_optimizer:
        # Each replica averages its own tasks; the optimizer all-reduces a SUM, so scale.
        gradients = weights.scale(weights.subtract(phi, adapted_mean), 1.0 / replicas)
        model.optimizer.apply_gradients(zip(gradients, variables))
        return
    if replicas > 1:
        raise ValueError(
            f"Reptile's interpolation update runs on one replica; this strategy has {replicas}. "
            "Set learner.outer_optimizer=True with optimizer.name='sgd' (learning rate = "
            "meta step size) to run the same rule through the distributed optimizer.")
    weights.assign(variables, weights.interpolate(phi, adapted_mean, epsilon))
    model.optimizer.iterations.assign_add(1)


class ReptileSchedule:
    """Constructor arguments and the annealed meta step size shared by Reptile learners."""

    def init_schedule(self, meta_step_size, meta_step_size_final, anneal_steps, outer_optimizer):
        if not 0.0 < meta_step_size <= 1.0 or not 0.0 <= meta_step_size_final <= 1.0:
            raise ValueError("meta step sizes interpolate toward the adapted weights and must be "
                             f"in (0, 1] and [0, 1]; got meta_step_size={meta_step_size}, "
                             f"meta_step_size_final={meta_step_size_final}.")
        if int(anneal_steps) < 1:
            raise ValueError(f"anneal_steps must be >= 1; got {anneal_steps}.")
        self.meta_step_size = float(meta_step_size)
        self.meta_step_size_final = float(meta_step_size_final)
        self.anneal_steps = int(anneal_steps)
        self.outer_optimizer = bool(outer_optimizer)

    def current_meta_step_size(self) -> tf.Tensor:
        """epsilon at the optimizer's current step."""
        return linear_anneal(self.optimizer.iterations, self.meta_step_size,
                             self.meta_step_size_final, self.anneal_steps)


# --------------------------------------------------------------------------- the learner
class Reptile(ReptileSchedule, MetaLearner):
    """Reptile around any Keras classifier whose outputs are N-way logits.

    Example:

        backbone = tfmeta.models.conv4((28, 28, 1), num_classes=5, downsample="strided")
        reptile = Reptile(backbone, inner_steps=5, inner_batch_size=10, anneal_steps=100000)
        reptile.compile(optimizer=keras.optimizers.SGD())  # counts steps (outer_optimizer=False)
        reptile.fit(episode_dataset(train_classes, 5, 10, 1, meta_batch_size=5), ...)
        logits = reptile.adapt_and_predict(support_images, support_labels, query_images)

    Args:
      model: a built Keras model mapping images to `[n, num_outputs]` logits.
      inner_steps, inner_batch_size: inner iterations and their batch size while training.
      inner_steps_test, inner_batch_size_test: the same when evaluating or serving.
      inner_optimizer: "adam" (the paper's) or "sgd"; inner_lr its learning rate;
        inner_beta_1 Adam's beta_1 (0 in the reference code).
      meta_step_size, meta_step_size_final, anneal_steps: epsilon, annealed linearly.
      outer_optimizer: hand `phi - mean(W)` to the compiled optimizer instead.
      transductive: classify an episode's queries in one batch (else one at a time).
    """

    def __init__(self, model: keras.Model, inner_steps: int = 5, inner_batch_size: int = 10,
                 inner_steps_test: int = 50, inner_batch_size_test: int = 5,
                 inner_optimizer: str = "adam", inner_lr: float = 1e-3,
                 inner_beta_1: float = 0.0, meta_step_size: float = 1.0,
                 meta_step_size_final: float = 0.0, anneal_steps: int = 100000,
                 outer_optimizer: bool = False, transductive: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not model.built:
            raise ValueError(f"Reptile needs a built model; build {model.name!r} with an "
                             "input shape.")
        for name, value in (("inner_steps", inner_steps), ("inner_steps_test", inner_steps_test),
                            ("inner_batch_size", inner_batch_size),
                            ("inner_batch_size_test", inner_batch_size_test)):
            if int(value) != value or value < (0 if "steps" in name else 1):
                raise ValueError(f"{name} must be a {'non-negative' if 'steps' in name else 'positive'}"
                                 f" integer; got {value!r}.")
        self.init_schedule(meta_step_size, meta_step_size_final, anneal_steps, outer_optimizer)
        self.model = model
        self.inner_steps, self.inner_steps_test = int(inner_steps), int(inner_steps_test)
        self.inner_batch_size = int(inner_batch_size)
        self.inner_batch_size_test = int(inner_batch_size_test)
        self.inner_optimizer = make_inner_optimizer(inner_optimizer, inner_lr, inner_beta_1)
        self.transductive = bool(transductive)
        self.num_outputs = int(model.output_shape[-1])

    # -------------------------------------------------------------------- the method
    def forward(self, params, state, images):
        """Logits `[n, num_outputs]` with fast weights; batch norm uses batch statistics."""
        logits, _ = self.model.stateless_call(params, state, images, training=True)
        return tf.cast(logits, tf.float32)

    def adapt(self, params, state, images, labels, steps: int, batch_size: int, seed):
        """Inner loop: `steps` optimizer steps on mini-batches of one task's support set.

        Args:
          params: one tensor per backbone trainable variable (phi).
          state: the backbone's non-trainable values.
          images, labels: the support set, `[n, ...]` and `[n]`.
          seed: `[2]` ints fixing the mini-batch order.
        Returns the adapted weights W (a list like `params`).
        """
        if steps == 0:
            return list(params)
        batches = minibatch_indices(tf.shape(labels)[0], batch_size, steps, seed)

        def body(k, fast, optimizer_state):
            index = batches[k]
            with tf.GradientTape() as tape:
                tape.watch(fast)
                loss = cross_entropy(tf.gather(labels, index),
                                     self.forward(fast, state, tf.gather(images, index)))
            grads = tape.gradient(loss, fast)
            fast, optimizer_state = self.inner_optimizer.step(fast, grads, optimizer_state)
            return k + 1, fast, optimizer_state

        _, fast, _ = tf.while_loop(lambda k, *_: k < steps, body,
                                   (tf.constant(0), list(params),
                                    self.inner_optimizer.init(params)))
        return fast

    def predict_queries(self, fast, state, support_images, query_images):
        """Query logits `[m, num_outputs]`, transductively or one query at a time."""
        if self.transductive:
            return self.forward(fast, state, query_images)

        def one_query(query):
            return self.forward(fast, state, tf.concat([support_images, query[None]], 0))[-1]

        return tf.map_fn(one_query, query_images,
                         fn_output_signature=tf.TensorSpec([self.num_outputs], tf.float32))

    def _seed_step(self, training):
        return self.optimizer.iterations if training else tf.constant(EVAL_SEED, tf.int64)

    def query_logits(self, episodes, training=False):
        if tf.executing_eagerly():
            # Eager while-loops run op by op (minutes for a meta-batch); compile instead.
            if self not in _COMPILED:
                learner = weakref.ref(self)  # a strong reference would keep the key alive
                _COMPILED[self] = tf.function(
                    lambda episodes, training: learner()._query_logits(episodes, training),
                    reduce_retracing=True)
            return _COMPILED[self](episodes, bool(training))
        return self._query_logits(episodes, training)

    def _query_logits(self, episodes, training):
        params = weights.values(self.model.trainable_variables)
        state = weights.values(self.model.non_trainable_variables)
        steps = self.inner_steps if training else self.inner_steps_test
        batch_size = self.inner_batch_size if training else self.inner_batch_size_test
        step = tf.cast(self._seed_step(training), tf.int64)

        def one_task(task):
            i, support_images, support_labels, query_images = task
            fast = self.adapt(params, state, support_images, support_labels, steps, batch_size,
                              tf.stack([step, tf.cast(i, tf.int64)]))
            return self.predict_queries(fast, state, support_images, query_images)

        batch = tf.shape(episodes["support_labels"])[0]
        return tf.map_fn(one_task, (tf.range(batch), episodes["support_images"],
                                    episodes["support_labels"], episodes["query_images"]),
                         fn_output_signature=tf.TensorSpec([None, self.num_outputs], tf.float32))

    def train_step(self, data):
        episodes = check_episodes(data)
        variables = self.model.trainable_variables
        phi = weights.values(variables)
        state = weights.values(self.model.non_trainable_variables)
        step = tf.cast(self.optimizer.iterations, tf.int64)

        def adapt_task(i):
            support_labels = episodes["support_labels"][i]
            fast = self.adapt(phi, state, episodes["support_images"][i], support_labels,
                              self.inner_steps, self.inner_batch_size,
                              tf.stack([step, tf.cast(i, tf.int64)]))
            # Training metrics: the adapted weights on this task's queries (never used to update).
            logits = self.predict_queries(fast, state, episodes["support_images"][i],
                                          episodes["query_images"][i])
            labels = episodes["query_labels"][i]
            return fast, [cross_entropy(labels, logits), accuracy(labels, logits)]

        batch = tf.shape(episodes["support_labels"])[0]
        adapted_mean, (loss, acc) = mean_over_tasks(adapt_task, batch, phi, num_metrics=2)
        reptile_update(self, variables, adapted_mean, self.current_meta_step_size(),
                       self.outer_optimizer)
        self.loss_tracker.update_state(loss, sample_weight=batch)
        self.accuracy_tracker.update_state(acc, sample_weight=batch)
        return {m.name: m.result() for m in self.metrics}

    @property
    def max_ways(self):
        return self.num_outputs


def from_config(config, input_shape):
    """Builds Reptile around the configured backbone with `config.ways` outputs; epsilon
    anneals over `config.num_steps` unless `learner.anneal_steps` is set."""
    from tfmeta.models import backbone_from_config

    backbone = backbone_from_config(config.model, input_shape, num_classes=config.ways)
    kwargs = dict(config.learner)
    kwargs["anneal_steps"] = kwargs.get("anneal_steps") or config.num_steps
    return Reptile(backbone, **kwargs)


def training_data(dataset, config, replicas=1):
    """Training episodes with `config.train_shots` examples per class (the paper trains on
    more shots than it tests with); validation episodes as the trainer makes them."""
    from tfmeta.training.trainer import training_data as episodic_data

    _, validation = episodic_data(dataset, config, replicas)
    train_shots = config.get("train_shots") or config.shots
    train = episode_dataset(dataset.split("train"), config.ways, train_shots, config.queries,
                            config.meta_batch_size, seed=config.seed, split="train")
    return train, validation

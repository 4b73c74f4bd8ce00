"""Memory-Augmented Neural Network (Santoro, Bartunov, Botvinick, Wierstra and
Lillicrap, ICML 2016). https://arxiv.org/abs/1605.06065

An episode is a sequence. At step t the network sees example x_t together with the
one-hot label of the previous step, y_{t-1} (the label offset: the label of step t is
given at t+1), and predicts y_t, so it must bind each example to the label that
arrives one step later through an external memory. One step (paper eqs. 1-8):

    h, c = lstm_controller([x_t, onehot(y_{t-1}), r_{t-1}], (h, c))  # reads fed back, as NTM
    k = tanh(W_k h); a = tanh(W_add h); alpha = W_alpha h   # per read/write head
    lu = indices of the `heads` least used slots of w_u          # w_lu of step t-1
    M[lu[0]] = 0                                        # erase the least used slot
    w_w = sigmoid(alpha) * w_r + (1 - sigmoid(alpha)) * onehot(lu)  # LRUA write weights
    M = M + w_w^T a                                     # write
    w_r = softmax(beta * cosine(k, M))                  # content-based read
    r = w_r @ M
    w_u = gamma * w_u + w_r + w_w                       # usage, decay gamma
    logits = W_o [h, r]

tfmeta's N-way episodes: the support set, shuffled in time, is the sequence (its
labels are fed offset by one step); each query is then one more step, taken from the
state after the support sequence with the last support label as its label input, in
parallel for all queries (so queries never see each other or any query label).
`query_logits` returns those steps' logits `[B, M, N]`; `sequence_logits` also
returns the support steps'. Meta-training minimizes the cross-entropy of every step,
support and query, as the paper's loss over the whole sequence. The order in time is
random while training and, otherwise, a permutation seeded by the episode's pixels
(deterministic serving).

Two choices the paper leaves open or that it makes differently:

- `write_key=False` (default) writes a separate add vector `a`, as the NTM does and as
  the public reimplementations of this paper do; the paper's equation writes the key
  itself (`write_key=True`), which makes the read right after a write find the key it
  just wrote.
- `key_strength=True` gives each read head the NTM's learned sharpness
  `beta = 1 + softplus(W_beta h)`; the paper's read is `beta = 1`. A softmax over
  cosines in [-1, 1] is nearly uniform over 128 slots (the best match gets a weight of
  e / (e + 127) = 2%), so the binding of an image to its label is learned far later:
  measured on Omniglot (20x20 pixels, 50-step sequences), the sequence accuracy rose
  above chance after ~800 steps with it and reached 75% after 1500 steps against 51%
  without it. The configs turn it on; the class default is the paper's.

`accuracy_by_instance` reports accuracy by presentation number (1st, 2nd, 5th, 10th),
as the paper's Table 1, on sequences of `instances` examples per class.

Inputs to the controller are features of an image backbone (any Keras feature model;
the paper used flattened 20x20 pixels: pass `backbone=None`).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfmeta.algorithms.base import ORDER_SALT
from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.recipe import Recipe
from tfmeta.data import EpisodeShape, episode_dataset
from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config
from tfmeta.ranges import NON_NEGATIVE_INT, POSITIVE_INT, UNIT_INTERVAL
from tfmeta.tensors import cosine_similarity, fold, unfold


class LRUAMemory(keras.layers.Layer):
    """LSTM controller with an external memory read by content and written by LRUA.

    `step(inputs [R, in], state) -> (output [R, units + heads * slot_size], state)`;
    `write_key` writes the key instead of a separate add vector; `key_strength` adds a
    learned sharpness to the cosine read (see the module docstring).
    `initial_state(rows)` gives the zero state `(h [R, units], c [R, units],
    M [R, slots, size], w_r [R, heads, slots], w_u [R, slots], r [R, heads * size])`.
    """

    def __init__(self, input_dim: int, units: int = 200, memory_slots: int = 128,
                 slot_size: int = 40, heads: int = 4, gamma: float = 0.95,
                 write_key: bool = False, key_strength: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= gamma <= 1.0:
            raise UserError(f"gamma (usage decay) must be in [0, 1]; got {gamma}.")
        if heads > memory_slots:
            raise UserError(f"heads={heads} needs at least as many memory_slots; got "
                            f"{memory_slots}.")
        self.units, self.slots, self.slot_size = units, memory_slots, slot_size
        self.heads, self.gamma = heads, gamma
        self.controller = keras.layers.LSTMCell(units, name="controller")
        self.controller.build((None, input_dim + heads * slot_size))
        self.key_layer = keras.layers.Dense(heads * slot_size, activation="tanh", name="keys")
        self.key_layer.build((None, units))
        self.write_key = bool(write_key)
        if not self.write_key:
            self.add_layer = keras.layers.Dense(heads * slot_size, activation="tanh", name="add")
            self.add_layer.build((None, units))
        self.alpha_layer = keras.layers.Dense(heads, name="alpha")
        self.alpha_layer.build((None, units))
        self.key_strength = bool(key_strength)
        if self.key_strength:
            self.strength_layer = keras.layers.Dense(heads, name="strength")
            self.strength_layer.build((None, units))
        self.output_dim = units + heads * slot_size

    def initial_state(self, rows):
        return (tf.zeros([rows, self.units]), tf.zeros([rows, self.units]),
                tf.fill([rows, self.slots, self.slot_size], 1e-6),
                tf.zeros([rows, self.heads, self.slots]), tf.zeros([rows, self.slots]),
                tf.zeros([rows, self.heads * self.slot_size]))

    def step(self, inputs, state):
        h, c, memory, read_weights, usage, reads = state
        h, (_, c) = self.controller(tf.concat([inputs, reads], -1), [h, c])
        keys = tf.reshape(self.key_layer(h), [-1, self.heads, self.slot_size])      # [R, H, W]
        gate = tf.sigmoid(self.alpha_layer(h))[..., None]                            # [R, H, 1]
        _, least_used = tf.math.top_k(-usage, self.heads)                            # [R, H]
        least_used_weights = tf.one_hot(least_used, self.slots)                      # [R, H, S]
        memory = memory * (1.0 - least_used_weights[:, 0, :, None])
        write_weights = gate * read_weights + (1.0 - gate) * least_used_weights
        added = keys if self.write_key else tf.reshape(
            self.add_layer(h), [-1, self.heads, self.slot_size])                      # [R, H, W]
        memory = memory + tf.einsum("rhs,rhw->rsw", write_weights, added)
        similarity = cosine_similarity(keys, memory)                                 # [R, H, S]
        if self.key_strength:
            similarity *= 1.0 + tf.nn.softplus(self.strength_layer(h))[..., None]
        read_weights = tf.nn.softmax(similarity, axis=-1)
        reads = tf.einsum("rhs,rsw->rhw", read_weights, memory)
        usage = (self.gamma * usage + tf.reduce_sum(read_weights, 1)
                 + tf.reduce_sum(write_weights, 1))
        reads = tf.reshape(reads, [-1, self.heads * self.slot_size])
        return tf.concat([h, reads], -1), (h, c, memory, read_weights, usage, reads)


class MANN(EpisodicClassifier):
    """A memory-augmented network that learns an N-way episode as a sequence.

    Example:

        learner = MANN(conv4((28, 28, 1), filters=32), num_classes=5)
        learner.compile(optimizer=keras.optimizers.Adam(1e-3))
        support_logits, query_logits, order = learner.sequence_logits(episodes)

    Args:
      backbone: Keras model, images -> features `[n, D]`; None flattens the pixels.
      input_shape: one example's shape (needed when `backbone` is None).
      num_classes: label classes of the sequence (one-hot size, the most ways served).
      units, memory_slots, slot_size, heads, gamma: as LRUAMemory (paper: 200, 128,
        40, 4, 0.95).
      write_key: write the read key (the paper's equation) instead of an add vector.
      key_strength: learned read sharpness beta per head (NTM); False is the paper's.
      eval_order_seed: seed of the time order used when not training.
    """

    argument_ranges = {"units": POSITIVE_INT, "memory_slots": POSITIVE_INT,
                       "slot_size": POSITIVE_INT, "heads": POSITIVE_INT, "gamma": UNIT_INTERVAL,
                       "eval_order_seed": NON_NEGATIVE_INT}

    def __init__(self, backbone: keras.Model | None, num_classes: int, input_shape=None,
                 units: int = 200, memory_slots: int = 128, slot_size: int = 40,
                 heads: int = 4, gamma: float = 0.95, write_key: bool = False,
                 key_strength: bool = False, eval_order_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.check_arguments(locals())
        if backbone is None:
            if input_shape is None:
                raise UserError("MANN without a backbone flattens pixels and needs "
                                "input_shape=(H, W, C); got input_shape=None.")
            feature_dim = int(np.prod(input_shape))
        elif not backbone.built or len(backbone.output_shape) != 2:
            raise UserError("MANN's backbone must be a built model with flat features [n, D]; "
                            f"got output shape {getattr(backbone, 'output_shape', None)}.")
        else:
            feature_dim = int(backbone.output_shape[-1])
        if num_classes < 2:
            raise UserError(f"num_classes must be >= 2; got {num_classes}.")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.eval_order_seed = int(eval_order_seed)
        self.memory = LRUAMemory(feature_dim + num_classes, units, memory_slots, slot_size,
                                 heads, gamma, write_key, key_strength, name="memory")
        self.classifier = keras.layers.Dense(num_classes, name="classifier")
        self.classifier.build((None, self.memory.output_dim))

    def _features(self, images, training):
        """`[B, n, ...]` examples -> `[B, n, D]` controller inputs (pixels or backbone features)."""
        flat = fold(images)
        if self.backbone is None:
            features = tf.reshape(flat, [tf.shape(flat)[0], -1])
        else:
            features = tf.cast(self.backbone(flat, training=training), tf.float32)
        return unfold(features, tf.shape(images)[0])

    def time_order(self, support_images, training):
        """`[B, n]` permutation of the support set in time.

        Random while training; otherwise a pseudo-random permutation seeded by the
        episode's own pixels, so serving is deterministic yet the label order in time
        differs between episodes (a fixed order would be a pattern to exploit).
        """
        batch, length = tf.shape(support_images)[0], tf.shape(support_images)[1]
        if training:  # a pure function of the meta-step, so resumed runs draw the same orders
            return tf.argsort(tf.random.stateless_uniform([batch, length],
                                                          self.step_seed(ORDER_SALT)), axis=-1)
        content = tf.reduce_sum(tf.reshape(support_images, [batch, -1]), -1)
        seeds = tf.stack([tf.fill([batch], self.eval_order_seed),
                          tf.bitcast(tf.cast(content, tf.float32), tf.int32)], -1)
        scores = tf.map_fn(lambda seed: tf.random.stateless_uniform([length], seed), seeds,
                           fn_output_signature=tf.float32)
        return tf.argsort(scores, axis=-1)

    def sequence_logits(self, episodes, training=False):
        """Runs the episode as a sequence.

        Returns (support_logits `[B, n, N]` in time order, query_logits `[B, M, N]`,
        order `[B, n]`: the support index presented at each step).
        """
        support_labels = tf.cast(episodes["support_labels"], tf.int32)
        batch = tf.shape(support_labels)[0]
        order = self.time_order(episodes["support_images"], training)
        support = tf.gather(self._features(episodes["support_images"], training), order,
                            batch_dims=1)                                         # [B, n, D]
        labels = tf.one_hot(tf.gather(support_labels, order, batch_dims=1), self.num_classes)
        previous = tf.concat([tf.zeros_like(labels[:, :1]), labels[:, :-1]], 1)  # offset by one
        inputs = tf.transpose(tf.concat([support, previous], -1), [1, 0, 2])      # time-major

        def step(carry, x):
            output, state = self.memory.step(x, carry[1])
            return self.classifier(output), state

        initial = (tf.zeros([batch, self.num_classes]), self.memory.initial_state(batch))
        support_logits, states = tf.scan(step, inputs, initializer=initial)
        final = tf.nest.map_structure(lambda s: s[-1], states)

        queries = self._features(episodes["query_images"], training)             # [B, M, D]
        count = tf.shape(queries)[1]
        query_inputs = tf.concat(
            [queries, tf.broadcast_to(labels[:, -1:], [batch, count, self.num_classes])], -1)
        tiled = tf.nest.map_structure(
            lambda s: tf.reshape(tf.repeat(s[:, None], count, axis=1),
                                 tf.concat([[-1], tf.shape(s)[1:]], 0)), final)
        output, _ = self.memory.step(tf.reshape(query_inputs, [batch * count, -1]), tiled)
        query_logits = tf.reshape(self.classifier(output), [batch, count, self.num_classes])
        return tf.transpose(support_logits, [1, 0, 2]), query_logits, order

    def query_logits(self, episodes, training=False):
        return self.sequence_logits(episodes, training)[1]

    def meta_loss(self, episodes):
        """The paper's loss: cross-entropy of every step of the sequence, support and query."""
        support_logits, logits, order = self.sequence_logits(episodes, training=True)
        support_labels = tf.gather(episodes["support_labels"], order, batch_dims=1)
        labels = tf.concat([support_labels, tf.cast(episodes["query_labels"], tf.int32)], 1)
        loss = tf.reduce_mean(self.loss_fn(labels, tf.concat([support_logits, logits], 1)))
        return loss + self.regularization_loss(), logits

    @property
    def max_ways(self):
        return self.num_classes

    def meta_test(self, dataset, spec, split="test", num_episodes=None, seed=1234, ways=None,
                  shots=None, log_dir=None, step=0) -> dict:
        """The episode accuracy, and (`by_instance`) the paper's Table 1 measure: accuracy by
        presentation number on 10-instance sequences of 100 episodes."""
        result = super().meta_test(dataset, spec, split, num_episodes, seed, ways, shots,
                                   log_dir, step)
        instances = min(10, int(dataset.split(split).class_counts.min()) - 1)
        report = tuple(k for k in (1, 2, 5, 10) if k <= instances)
        if report:
            result["by_instance"] = {str(k): v for k, v in accuracy_by_instance(
                self, dataset.split(split), result["ways"], instances, 100, seed=seed,
                report=report).items()}
        return result

    def feature_model(self) -> keras.Model:
        if self.backbone is None:
            return super().feature_model()
        return self.backbone


def instance_numbers(labels):
    """1-based presentation number of each step's class: `[B, n]` labels in time order."""
    labels = np.asarray(labels)
    numbers = np.zeros(labels.shape, np.int64)
    for row in range(labels.shape[0]):
        seen = {}
        for t, label in enumerate(labels[row]):
            seen[label] = seen.get(label, 0) + 1
            numbers[row, t] = seen[label]
    return numbers


def accuracy_by_instance(learner, classes, ways=5, instances=10, num_episodes=100,
                         meta_batch_size=20, seed=1234, report=(1, 2, 5, 10)) -> dict:
    """Accuracy of the support-sequence predictions by presentation number (paper Table 1).

    Sequences hold `instances` examples of each of `ways` classes (50 steps for 5 x 10),
    in the learner's evaluation order. Returns {instance: accuracy} for `report`.
    """
    if max(report) > instances:
        raise UserError(f"Reporting instance {max(report)} needs instances >= {max(report)}; "
                        f"got instances={instances}.")
    batches = math.ceil(num_episodes / meta_batch_size)
    episodes = episode_dataset(classes, EpisodeShape(ways, instances, 1), meta_batch_size,
                               seed=seed, num_episodes=batches * meta_batch_size)
    run = tf.function(lambda batch: learner.sequence_logits(batch, training=False))
    correct, numbers = [], []
    for batch in episodes:
        support_logits, _, order = run(batch)
        labels = tf.gather(batch["support_labels"], order, batch_dims=1).numpy()
        correct.append(np.argmax(support_logits.numpy(), -1) == labels)
        numbers.append(instance_numbers(labels))
    correct, numbers = np.concatenate(correct), np.concatenate(numbers)
    return {k: float(correct[numbers == k].mean()) for k in report}


class MANNRecipe(Recipe):
    """MANN on the pixels (`model.name="none"`, the paper's) or on the features of the
    configured backbone, with `config.ways` label classes."""

    fixed_arguments = ("input_shape",)  # the dataset's

    def build(self, config, input_shape):
        backbone = backbone_from_config(config.model, input_shape)
        return self.learner(backbone, num_classes=config.ways, input_shape=input_shape,
                            **config.learner)


RECIPE = MANNRecipe(MANN)

"""Meta Networks (Munkhdalai and Yu, ICML 2017). https://arxiv.org/abs/1703.00837

A base learner `b` and a dynamic representation (embedding) function `u`, each with
slow weights (W, Q: learned across tasks) and fast weights (W*, Q*: generated per
task by the meta learner from loss gradients, the "meta information"). Fast weights
enter by layer augmentation: an augmented layer runs its input through the slow
and the fast weights and sums the two outputs. Algorithm 1 of the paper:

    # representation-level fast weights, from a contrastive loss on support pairs
    for (x_a, x_b) in pairs(support):
        grad_Q[a, b] = d loss_emb(u(Q, x_a), u(Q, x_b), same_class(a, b)) / dQ
    Q* = mean(d(G, grad_Q))                           # d: meta learner, coordinate-wise MLP
    # base-level (example-level) fast weights, one per support example
    for (x_i, y_i) in support:
        W*_i = m(Z, d loss_task(b(W, x_i), y_i) / dW)  # m: meta learner, coordinate-wise MLP
        r'_i = u(Q, Q*, x_i)                           # memory: keys R, values W*
    # queries read the memory by attention
    for x in query:
        a = softmax(cosine(R, u(Q, Q*, x)))
        logits = b(W, a @ W*, x)
    meta_loss = mean(loss_task(logits, y_query))     # trains W, Q, Z, G (and the CNNs)

Here `u` is a CNN followed by an augmented dense layer (representation `[n, rep]`)
and `b` a CNN followed by an augmented linear output layer (logits `[n, N]`):

    u(x) = relu(g(x) @ Q + q) + relu(g(x) @ Q* + q*)
    b(x) = f(x) @ W + w + f(x) @ W*_x + w*_x

Gradients are preprocessed as in the paper (Andrychowicz et al.'s (log|x|/p, sign x))
and are constants to the meta-gradient. The contrastive loss is Hadsell et al.'s:
`same * d^2 + (1 - same) * max(0, margin - d)^2`, d the Euclidean distance.
Deviation for CPU: fast weights augment only the top layer of each network (the
paper also augmented convolutional layers); all support pairs are used instead of T
sampled ones.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.lstm_meta import preprocess_gradients
from tfmeta.algorithms.recipe import Recipe
from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config
from tfmeta.ranges import POSITIVE, POSITIVE_INT
from tfmeta.tensors import cosine_similarity, embed_support_and_query


class CoordinateMLP(keras.layers.Layer):
    """A meta learner (`m` or `d`): the same small MLP applied to every gradient coordinate.

    `[...]` gradient -> `[...]` fast weight: preprocess to 2 features, `hidden` ReLU units,
    one linear output.
    """

    def __init__(self, hidden: int = 20, p: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.p = p
        self.hidden = keras.layers.Dense(hidden, activation="relu", name="hidden")
        self.out = keras.layers.Dense(1, name="out",
                                      kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01))
        self.hidden.build((None, 2))
        self.out.build((None, hidden))

    def call(self, gradients):
        return self.out(self.hidden(preprocess_gradients(gradients, self.p)))[..., 0]


def augmented_dense(inputs, slow, fast, activation=None):
    """Layer augmentation: act(x @ W + w) + act(x @ W* + w*), with per-row fast weights.

    inputs `[B, n, D]`; slow (kernel `[D, U]`, bias `[U]`); fast (kernel `[B, D, U]` or
    `[B, n, D, U]`, bias `[B, U]` or `[B, n, U]`).
    """
    activation = activation or (lambda x: x)
    kernel, bias = fast
    if kernel.shape.rank == 3:
        fast_out = tf.einsum("bnd,bdu->bnu", inputs, kernel) + bias[:, None]
    else:
        fast_out = tf.einsum("bnd,bndu->bnu", inputs, kernel) + bias
    return activation(inputs @ slow[0] + slow[1]) + activation(fast_out)


def per_row_gradients(loss_fn, kernel, bias, rows):
    """Gradients of each row's loss w.r.t. its own copy of (kernel, bias).

    `loss_fn(kernels [B, rows, D, U], biases [B, rows, U]) -> per-row losses [B, rows]`;
    returns constants of those two shapes (one gradient per example or pair).
    """
    batch = tf.shape(rows)[0]
    count = tf.shape(rows)[1]
    kernels = tf.broadcast_to(kernel, tf.concat([[batch, count], tf.shape(kernel)], 0))
    biases = tf.broadcast_to(bias, tf.concat([[batch, count], tf.shape(bias)], 0))
    with tf.GradientTape() as tape:
        tape.watch([kernels, biases])
        total = tf.reduce_sum(loss_fn(kernels, biases))
    grads = tape.gradient(total, [kernels, biases])
    return [tf.stop_gradient(g) for g in grads]


class MetaNet(EpisodicClassifier):
    """Meta Networks around two feature CNNs (`embedding` for u, `base` for b).

    Example:

        learner = MetaNet(conv4((28, 28, 1), filters=32), conv4((28, 28, 1), filters=32),
                          num_classes=5)
        learner.compile(optimizer=keras.optimizers.Adam(1e-3))

    Args:
      embedding: Keras model, images -> features `[n, D_u]` (g of u).
      base: Keras model, images -> features `[n, D_b]` (f of b).
      num_classes: outputs of the base learner (the most ways it serves).
      representation_units: size of u's augmented layer.
      meta_hidden: hidden units of the meta learners m and d.
      margin: margin of the contrastive representation loss.
      preprocess_p: p of the gradient preprocessing.
    """

    argument_ranges = {"representation_units": POSITIVE_INT, "meta_hidden": POSITIVE_INT,
                       "margin": POSITIVE, "preprocess_p": POSITIVE}

    def __init__(self, embedding: keras.Model, base: keras.Model, num_classes: int,
                 representation_units: int = 64, meta_hidden: int = 20, margin: float = 1.0,
                 preprocess_p: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.check_arguments(locals())
        for name, net in (("embedding", embedding), ("base", base)):
            if not net.built or len(net.output_shape) != 2:
                raise UserError(f"MetaNet's {name} must be a built model with flat features "
                                f"[n, D]; got output shape {getattr(net, 'output_shape', None)}.")
        if num_classes < 2:
            raise UserError(f"num_classes must be >= 2; got {num_classes}.")
        self.embedding, self.base = embedding, base
        self.num_classes = int(num_classes)
        self.margin = float(margin)
        embed_dim, base_dim = int(embedding.output_shape[-1]), int(base.output_shape[-1])
        self.Q = self.add_weight(shape=(embed_dim, representation_units), name="Q",
                                 initializer="glorot_uniform")
        self.q = self.add_weight(shape=(representation_units,), name="q", initializer="zeros")
        self.W = self.add_weight(shape=(base_dim, num_classes), name="W",
                                 initializer="glorot_uniform")
        self.w = self.add_weight(shape=(num_classes,), name="w", initializer="zeros")
        self.d = CoordinateMLP(meta_hidden, preprocess_p, name="d")  # representation level
        self.m = CoordinateMLP(meta_hidden, preprocess_p, name="m")  # base level

    # ------------------------------------------------------------ the method
    def representation_fast_weights(self, support_features, support_labels):
        """Q*, q* of each task from the contrastive loss on all support pairs.

        support_features `[B, n, D_u]`, support_labels `[B, n]` -> (`[B, D_u, R]`, `[B, R]`).
        """
        n = tf.shape(support_labels)[1]
        upper = tf.linalg.band_part(tf.ones([n, n]), 0, -1) - tf.linalg.band_part(
            tf.ones([n, n]), 0, 0)
        pairs = tf.cast(tf.where(upper > 0), tf.int32)                            # [T, 2]
        first = tf.gather(support_features, pairs[:, 0], axis=1)                  # [B, T, D]
        second = tf.gather(support_features, pairs[:, 1], axis=1)
        same = tf.cast(tf.equal(tf.gather(support_labels, pairs[:, 0], axis=1),
                                tf.gather(support_labels, pairs[:, 1], axis=1)), tf.float32)

        def pair_losses(kernels, biases):
            embed_a = tf.nn.relu(tf.einsum("btd,btdr->btr", first, kernels) + biases)
            embed_b = tf.nn.relu(tf.einsum("btd,btdr->btr", second, kernels) + biases)
            distance = tf.sqrt(tf.reduce_sum(tf.square(embed_a - embed_b), -1) + 1e-8)
            return same * distance ** 2 + (1 - same) * tf.nn.relu(self.margin - distance) ** 2

        grad_Q, grad_q = per_row_gradients(pair_losses, self.Q, self.q, first)
        # The mean over pairs; a support set of one example has none, and gets Q* = 0.
        pair_count = tf.cast(tf.maximum(tf.shape(pairs)[0], 1), tf.float32)
        return (tf.reduce_sum(self.d(grad_Q), 1) / pair_count,
                tf.reduce_sum(self.d(grad_q), 1) / pair_count)

    def example_fast_weights(self, support_features, support_labels):
        """W*_i, w*_i of each support example: `[B, n, D_b, N]`, `[B, n, N]`."""
        labels = tf.one_hot(support_labels, self.num_classes)

        def example_losses(kernels, biases):
            logits = tf.einsum("bnd,bndk->bnk", support_features, kernels) + biases
            return tf.nn.softmax_cross_entropy_with_logits(labels, logits)

        grad_W, grad_w = per_row_gradients(example_losses, self.W, self.w, support_features)
        return self.m(grad_W), self.m(grad_w)

    def represent(self, features, fast):
        """u(Q, Q*, x): `[B, n, D_u]` -> `[B, n, R]`."""
        return augmented_dense(features, (self.Q, self.q), fast, tf.nn.relu)

    def _features(self, net, episodes, training):
        return embed_support_and_query(net, episodes["support_images"],
                                       episodes["query_images"], training)

    def query_logits(self, episodes, training=False):
        labels = episodes["support_labels"]
        support_g, query_g = self._features(self.embedding, episodes, training)
        support_f, query_f = self._features(self.base, episodes, training)
        representation_fast = self.representation_fast_weights(support_g, labels)
        memory_keys = self.represent(support_g, representation_fast)            # R: [B, n, R]
        memory_values = self.example_fast_weights(support_f, labels)           # M: W*, w*
        query_keys = self.represent(query_g, representation_fast)              # [B, M, R]
        attention = tf.nn.softmax(cosine_similarity(query_keys, memory_keys), -1)  # [B, M, n]
        fast_W = tf.einsum("bmn,bndk->bmdk", attention, memory_values[0])
        fast_w = tf.einsum("bmn,bnk->bmk", attention, memory_values[1])
        return augmented_dense(query_f, (self.W, self.w), (fast_W, fast_w))

    @property
    def max_ways(self):
        return self.num_classes

    def feature_model(self) -> keras.Model:
        return self.base


class MetaNetRecipe(Recipe):
    """MetaNet with two backbones of the configured kind (u's and b's feature CNNs) and
    `config.ways` outputs."""

    def build(self, config, input_shape):
        embedding = backbone_from_config(config.model, input_shape)
        base = backbone_from_config(config.model, input_shape)
        return self.learner(embedding, base, num_classes=config.ways, **config.learner)


RECIPE = MetaNetRecipe(MetaNet)

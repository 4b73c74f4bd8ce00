"""LEO: Meta-Learning with Latent Embedding Optimization (Rusu et al., ICLR 2019).

https://arxiv.org/abs/1807.05960. LEO adapts a low-dimensional latent code of a
linear softmax classifier rather than the classifier itself. It works on fixed
image embeddings (the paper's are 640-d WRN-28-10 features). For each task, with
support embeddings `x [N*K, D]`, labels `y`, queries `x_q`:

    codes = encoder(dropout(x))                                   # [N*K, L]
    relations = mean_j relation_network(concat(codes_i, codes_j)) # all pairs of the task
    mu_z, sigma_z = class_mean(relations)                         # [N, L] each
    z = mu_z + sigma_z * eps          # eps ~ N(0, I); z = mu_z at test time
    kl = mean(log N(z; mu_z, sigma_z) - log N(z; 0, I))
    z_0 = z
    for _ in range(inner_steps):                                  # latent adaptation
        w = decode(z)                 # w ~ N(mu_w(z), sigma_w(z)), [N, D]
        z = z - inner_lr * grad(cross_entropy(y, dropout(x) @ w.T), z)
    w = decode(z)
    for _ in range(finetuning_steps):                             # fine-tuning of w
        w = w - finetuning_lr * grad(cross_entropy(y, dropout(x) @ w.T), w)
    task_loss = cross_entropy(y_q, dropout(x_q) @ w.T)
                + kl_weight * kl
                + encoder_penalty_weight * mean((stop_gradient(z) - z_0) ** 2)

    meta_loss = mean(task_loss over the meta-batch)
                + l2_penalty_weight * sum(||kernel||^2 / 2)   # encoder, relation net, decoder
                + orthogonality_penalty_weight * mean((correlation(decoder.kernel) - I) ** 2)
    g = clip_by_norm(clip_by_value(grad(meta_loss), +-gradient_threshold),
                     gradient_norm_threshold)                 # each tensor on its own
    params = adam(g, params)

`inner_lr` (one rate per latent dimension) and `finetuning_lr` (one per embedding
dimension) are meta-learned. The inner loops are differentiated to second order:
each inner gradient is taken with its own tape inside the meta-gradient's tape.
Standard deviations are `exp(s) - 1 + offset` as in DeepMind's reference code
(offset 0 for latents, the Glorot scale sqrt(2 / (D + N)) for weights), floored
at 1e-10. The fast weights here are the latents and the classifier, plain
tensors; no variable is assigned in the inner loops.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import tensorflow as tf
from keras import layers

from tfmeta import evaluation, weights
from tfmeta.algorithms.base import NOISE_SALT
from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.recipe import Recipe
from tfmeta.data.shape import EpisodeShape
from tfmeta.errors import UserError
from tfmeta.ranges import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT
from tfmeta.tensors import class_means, num_ways

MIN_STDDEV = 1e-10
EVAL_SEED = 2 ** 31 - 1  # noise when sampling at test time (deterministic_test=False)


def kl_divergence(samples, means, stddev):
    """Per-task single-sample KL estimate `[B]` of N(means, stddev) from N(0, I).

    All arguments `[B, ...]`; the result is the mean over the non-batch axes of
    `log N(samples; means, stddev) - log N(samples; 0, 1)` (the log 2*pi terms cancel).
    """
    log_posterior = -0.5 * tf.square((samples - means) / stddev) - tf.math.log(stddev)
    log_prior = -0.5 * tf.square(samples)
    axes = tf.range(1, tf.rank(samples))
    return tf.reduce_mean(log_posterior - log_prior, axis=axes)


def orthogonality_penalty(kernel):
    """Mean squared difference between the correlation matrix of `kernel`'s rows and I.

    kernel: `[L, 2D]` (the decoder's: one row per latent dimension). Scalar.
    """
    kernel = tf.convert_to_tensor(kernel)
    norms = tf.norm(kernel, axis=1, keepdims=True) + 1e-32
    correlation = tf.matmul(kernel, kernel, transpose_b=True) / tf.matmul(
        norms, norms, transpose_b=True)
    identity = tf.eye(tf.shape(correlation)[0], dtype=correlation.dtype)
    return tf.reduce_mean(tf.square(correlation - identity))


def clip_gradients(grads, gradient_threshold, gradient_norm_threshold):
    """Clips each gradient by value to +-gradient_threshold, then by its own L2 norm.

    A threshold <= 0 turns that clipping off.
    """
    if gradient_threshold > 0:
        grads = [tf.clip_by_value(g, -gradient_threshold, gradient_threshold) for g in grads]
    if gradient_norm_threshold > 0:
        grads = [tf.clip_by_norm(g, gradient_norm_threshold) for g in grads]
    return grads


@dataclasses.dataclass
class Adaptation:
    """What LEO's inner loops produce for a meta-batch.

    classifier_weights: `[B, N, D]` after latent adaptation and fine-tuning.
    initial_latents, latents: `[B, N, L]` before and after latent adaptation.
    kl: `[B]` KL term of the initial latents (0 for deterministic codes).
    """

    classifier_weights: tf.Tensor
    initial_latents: tf.Tensor
    latents: tf.Tensor
    kl: tf.Tensor

    @property
    def encoder_penalty(self):
        """`[B]`: mean squared distance from the initial to the (constant) adapted latents."""
        return tf.reduce_mean(
            tf.square(tf.stop_gradient(self.latents) - self.initial_latents), axis=[1, 2])


class Draws:
    """Seeds for the stateless random draws of one pass (dropout masks, latent and weight
    samples): a base seed folded with a running count, so every draw gets its own seed and
    the pass is a pure function of the base seed (the meta-step)."""

    def __init__(self, base_seed):
        self.base_seed, self.count = base_seed, 0

    def next(self):
        self.count += 1
        return tf.random.experimental.stateless_fold_in(self.base_seed, self.count)


class LEO(EpisodicClassifier):
    """LEO on fixed embeddings (see the module docstring for the update rule).

    Example:

        dataset = tfmeta.data.load_dataset("mini_imagenet", data_dir="embeddings", embeddings="center")
        leo = LEO(embedding_dim=640, num_latents=64, inner_steps=5, finetuning_steps=5)
        leo.compile(optimizer=keras.optimizers.Adam(2.7e-4))
        leo.fit(episode_dataset(dataset.split("train"), EpisodeShape(5, 1, 15),
                                meta_batch_size=12), ...)
        logits = leo.adapt_and_predict(support_embeddings, support_labels, query_embeddings)

    Args:
      embedding_dim: D, the size of one input embedding.
      num_latents: L, the size of a class's latent code.
      inner_steps: gradient steps on the latents.
      finetuning_steps: gradient steps on the decoded classifier weights.
      inner_lr_init, finetuning_lr_init: initial values of the learned inner rates.
      dropout_rate: dropout on the embeddings fed to the encoder and the classifier
        (meta-training only).
      kl_weight, encoder_penalty_weight, l2_penalty_weight, orthogonality_penalty_weight:
        beta, gamma, lambda_1 and lambda_2 of the paper.
      gradient_threshold, gradient_norm_threshold: clipping of the meta-gradient by
        value, then of each tensor by norm (<= 0: off).
      deterministic_test: use the means of latents and weights when not training
        (the paper's choice); False samples them at test time too.
    """

    argument_ranges = {
        "embedding_dim": POSITIVE_INT, "num_latents": POSITIVE_INT, "inner_steps": POSITIVE_INT,
        "finetuning_steps": NON_NEGATIVE_INT, "inner_lr_init": POSITIVE,
        "finetuning_lr_init": POSITIVE, "dropout_rate": FRACTION, "kl_weight": NON_NEGATIVE,
        "encoder_penalty_weight": NON_NEGATIVE, "l2_penalty_weight": NON_NEGATIVE,
        "orthogonality_penalty_weight": NON_NEGATIVE}

    def __init__(self, embedding_dim: int, num_latents: int = 64, inner_steps: int = 5,
                 finetuning_steps: int = 5, inner_lr_init: float = 1.0,
                 finetuning_lr_init: float = 1e-3, dropout_rate: float = 0.5,
                 kl_weight: float = 1e-3, encoder_penalty_weight: float = 1e-9,
                 l2_penalty_weight: float = 1e-8, orthogonality_penalty_weight: float = 1e-3,
                 gradient_threshold: float = 0.1, gradient_norm_threshold: float = 0.1,
                 deterministic_test: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.check_arguments(locals())
        self.embedding_dim = int(embedding_dim)
        self.num_latents = int(num_latents)
        self.inner_steps = int(inner_steps)
        self.finetuning_steps = int(finetuning_steps)
        self.dropout_rate = float(dropout_rate)
        self.kl_weight = float(kl_weight)
        self.encoder_penalty_weight = float(encoder_penalty_weight)
        self.l2_penalty_weight = float(l2_penalty_weight)
        self.orthogonality_penalty_weight = float(orthogonality_penalty_weight)
        self.gradient_threshold = float(gradient_threshold)
        self.gradient_norm_threshold = float(gradient_norm_threshold)
        self.deterministic_test = bool(deterministic_test)
        self._draws = None  # the Draws of the pass in progress (see `draws`)

        latents = self.num_latents
        self.encoder = layers.Dense(latents, use_bias=False, name="encoder")
        # A three-layer MLP without biases, ReLU between layers (the reference's).
        self.relation_network = [
            layers.Dense(2 * latents, activation=activation, use_bias=False,
                         name=f"relation_network_{i}")
            for i, activation in enumerate(("relu", "relu", None))]
        self.decoder = layers.Dense(2 * self.embedding_dim, use_bias=False, name="decoder")
        self.encoder.build((None, self.embedding_dim))
        for layer in self.relation_network:
            layer.build((None, 2 * latents))
        self.decoder.build((None, latents))
        self.inner_lr = self.add_weight(
            shape=(latents,), initializer=keras.initializers.Constant(inner_lr_init),
            name="inner_lr")
        self.finetuning_lr = self.add_weight(
            shape=(self.embedding_dim,), name="finetuning_lr",
            initializer=keras.initializers.Constant(finetuning_lr_init))

    # ------------------------------------------------------------ the parts
    def draws(self, training) -> Draws:
        """The seeds of the pass in progress, or of a new one: the meta-step's while
        training, a fixed seed otherwise (deterministic serving)."""
        if self._draws is not None:
            return self._draws
        return Draws(self.step_seed(NOISE_SALT) if training
                     else tf.constant([EVAL_SEED, 0], tf.int64))

    @contextlib.contextmanager
    def random_pass(self, training):
        """Inside it, every draw comes from one `Draws` (nested passes share the outer one)."""
        if self._draws is not None:
            yield
            return
        self._draws = self.draws(training)
        try:
            yield
        finally:
            self._draws = None

    def dropout(self, embeddings, training):
        if training and self.dropout_rate > 0:
            return tf.nn.experimental.stateless_dropout(embeddings, rate=self.dropout_rate,
                                                        seed=self.draws(training).next())
        return embeddings

    def sampling(self, training) -> bool:
        return training or not self.deterministic_test

    def possibly_sample(self, distribution_params, stddev_offset, training):
        """`[B, N, 2C]` means and unnormalized stddevs -> (samples `[B, N, C]`, kl `[B]`).

        stddev = max(exp(s) - (1 - stddev_offset), 1e-10); deterministic (the means,
        KL 0) when not sampling.
        """
        means, unnormalized_stddev = tf.split(distribution_params, 2, axis=-1)
        if not self.sampling(training):
            return means, tf.zeros(tf.shape(means)[:1], means.dtype)
        stddev = tf.maximum(tf.exp(unnormalized_stddev) - (1.0 - stddev_offset), MIN_STDDEV)
        noise = tf.random.stateless_normal(tf.shape(means), self.draws(training).next(),
                                           dtype=means.dtype)
        samples = means + stddev * noise
        return samples, kl_divergence(samples, means, stddev)

    def encode(self, support_images, support_labels, num_classes, training):
        """Support embeddings `[B, N*K, D]` -> latent distribution params `[B, N, 2L]`.

        The relation network sees every ordered pair of codes within a task; a
        class's parameters average its examples' relation outputs.
        """
        codes = self.encoder(self.dropout(support_images, training))  # [B, S, L]
        shape = tf.shape(codes)
        pair_shape = tf.stack([shape[0], shape[1], shape[1], shape[2]])
        left = tf.broadcast_to(codes[:, :, None, :], pair_shape)
        right = tf.broadcast_to(codes[:, None, :, :], pair_shape)
        relations = tf.concat([left, right], axis=-1)
        for layer in self.relation_network:
            relations = layer(relations)  # [B, S, S, 2L]
        return class_means(tf.reduce_mean(relations, axis=2), support_labels, num_classes)

    def decode(self, latents, training):
        """Latents `[B, N, L]` -> classifier weights `[B, N, D]` (sampled when training)."""
        num_classes = tf.cast(tf.shape(latents)[1], tf.float32)
        glorot_stddev = tf.sqrt(2.0 / (num_classes + self.embedding_dim))
        classifier_weights, _ = self.possibly_sample(self.decoder(latents), glorot_stddev,
                                                     training)
        return classifier_weights

    def predict(self, images, classifier_weights, training):
        """Logits `[B, M, N]` of embeddings `[B, M, D]` under weights `[B, N, D]`."""
        return tf.einsum("bmd,bnd->bmn", self.dropout(images, training), classifier_weights)

    def inner_loss(self, support_images, support_labels, classifier_weights, training):
        """Per-task support cross-entropy `[B]`."""
        logits = self.predict(support_images, classifier_weights, training)
        return self.loss_fn(support_labels, logits)

    # --------------------------------------------------------- inner loops
    def leo_inner_loop(self, support_images, support_labels, latents, training):
        """Gradient steps on the latents; returns (adapted latents, decoded weights).

        The support loss is summed over tasks, so each task's latents get exactly
        the gradient of its own loss.
        """
        for _ in range(self.inner_steps):
            with tf.GradientTape() as tape:
                tape.watch(latents)
                classifier_weights = self.decode(latents, training)
                loss = tf.reduce_sum(self.inner_loss(support_images, support_labels,
                                                     classifier_weights, training))
            grad = tape.gradient(loss, latents)
            latents = weights.gradient_step([latents], [grad], self.inner_lr)[0]
        return latents, self.decode(latents, training)

    def finetuning_inner_loop(self, support_images, support_labels, classifier_weights,
                              training):
        """Gradient steps on the classifier weights `[B, N, D]` themselves."""
        for _ in range(self.finetuning_steps):
            with tf.GradientTape() as tape:
                tape.watch(classifier_weights)
                loss = tf.reduce_sum(self.inner_loss(support_images, support_labels,
                                                     classifier_weights, training))
            grad = tape.gradient(loss, classifier_weights)
            classifier_weights = weights.gradient_step(
                [classifier_weights], [grad], self.finetuning_lr)[0]
        return classifier_weights

    def adapt(self, support_images, support_labels, training=False) -> Adaptation:
        """Both inner loops on a meta-batch of support sets `[B, N*K, D]`, `[B, N*K]`.

        Its random draws (and the query dropout of `query_logits`/`meta_loss`, which set
        up the pass) come from one `Draws`, so the pass is a pure function of the step.
        """
        support_images = tf.convert_to_tensor(support_images, tf.float32)
        support_labels = tf.cast(support_labels, tf.int32)
        num_classes = num_ways(support_labels)
        with self.random_pass(training):
            latent_params = self.encode(support_images, support_labels, num_classes, training)
            initial_latents, kl = self.possibly_sample(latent_params, 0.0, training)
            latents, classifier_weights = self.leo_inner_loop(
                support_images, support_labels, initial_latents, training)
            classifier_weights = self.finetuning_inner_loop(
                support_images, support_labels, classifier_weights, training)
        return Adaptation(classifier_weights, initial_latents, latents, kl)

    # -------------------------------------------- EpisodicClassifier hooks
    def query_logits(self, episodes, training=False):
        with self.random_pass(training):
            adaptation = self.adapt(episodes["support_images"], episodes["support_labels"],
                                    training)
            return self.predict(episodes["query_images"], adaptation.classifier_weights,
                                training)

    def regularization_loss(self):
        """lambda_1 * L2 of the network kernels + lambda_2 * decoder orthogonality."""
        kernels = [self.encoder.kernel, *[d.kernel for d in self.relation_network],
                   self.decoder.kernel]
        l2 = tf.add_n([tf.nn.l2_loss(tf.convert_to_tensor(k)) for k in kernels])
        return (self.l2_penalty_weight * l2 + self.orthogonality_penalty_weight
                * orthogonality_penalty(self.decoder.kernel))

    def meta_loss(self, episodes):
        """Mean over tasks of query loss + beta KL + gamma encoder penalty, + the penalties."""
        with self.random_pass(training=True):
            adaptation = self.adapt(episodes["support_images"], episodes["support_labels"],
                                    training=True)
            logits = self.predict(episodes["query_images"], adaptation.classifier_weights,
                                  training=True)
        task_loss = (self.query_loss(episodes, logits) + self.kl_weight * adaptation.kl
                     + self.encoder_penalty_weight * adaptation.encoder_penalty)
        return tf.reduce_mean(task_loss) + self.regularization_loss(), logits

    def transform_gradients(self, gradients):
        """Clipping by value, then each tensor by its norm (the reference's). Under several
        replicas each replica's mean gradient is clipped, then averaged."""
        return clip_gradients(gradients, self.gradient_threshold, self.gradient_norm_threshold)

    def meta_test(self, dataset, spec, split="test", num_episodes=None, seed=1234, ways=None,
                  shots=None, log_dir=None, step=0) -> dict:
        """The paper's protocol: every remaining example of each class is a query.

        With the config's `eval_queries` set (`spec.eval_queries`), that many queries per
        class instead. Classes may differ in size, so "every remaining" is the smallest
        class's count minus K.
        """
        del log_dir, step
        ways, shots = ways or spec.test.ways, shots or spec.test.shots
        classes = dataset.split(split)
        queries = spec.eval_queries or int(classes.class_counts.min()) - shots
        if queries < 1:
            raise UserError(f"The smallest class of the {split!r} split has "
                            f"{int(classes.class_counts.min())} examples, none left as queries "
                            f"after {shots} shots; use fewer shots.")
        return evaluation.evaluate(self, classes, EpisodeShape(ways, shots, queries),
                                   num_episodes or spec.eval_episodes,
                                   spec.eval_meta_batch_size, seed, split)


class LEORecipe(Recipe):
    """LEO takes embeddings (`(D,)` examples), and builds no backbone of its own."""

    input_kinds = ("embeddings",)

    def build(self, config, input_shape):
        """LEO for embeddings of `input_shape` `(D,)` from `config.learner`."""
        if len(input_shape) != 1:
            raise UserError(
                f"LEO takes embeddings of shape (D,); got examples of shape "
                f"{tuple(input_shape)}. Train it on --dataset=mini_imagenet, tiered_imagenet or "
                "embeddings (write embeddings of an image dataset with bin/write_embeddings.py).")
        return self.learner(embedding_dim=int(input_shape[0]), **config.learner)


RECIPE = LEORecipe(LEO)

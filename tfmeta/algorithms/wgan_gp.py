"""Wasserstein GAN losses with gradient penalty (Gulrajani et al. 2017, "Improved Training
of Wasserstein GANs"), written for fast weights, plus image grids for TensorBoard.

With critic D and generator G, for real images x, fakes x~ = G(z) and, per sample,
x^ = u * x + (1 - u) * x~ with u ~ U[0, 1]:

    critic_loss    = mean(D(x~)) - mean(D(x)) + penalty_weight * mean((|grad_x^ D(x^)|_2 - 1)**2)
    generator_loss = -mean(D(G(z)))

The norm is per sample, over all of that sample's pixels and channels. One gradient of
`sum(D(x^))` gives every per-sample gradient at once, because the critic scores each image
on its own (layer norm, no batch norm).
"""

from __future__ import annotations

import tensorflow as tf


def gradient_penalty(critic_fn, real, fake, seed):
    """mean over samples of (|d critic(x^) / d x^|_2 - 1)**2 at random interpolates x^.

    Args:
      critic_fn: images `[n, H, W, C]` -> scores `[n, 1]`.
      real, fake: `[n, H, W, C]` each.
      seed: `[2]` ints for the interpolation weights u `[n, 1, 1, 1]`.
    """
    n = tf.shape(real)[0]
    u = tf.random.stateless_uniform(tf.stack([n, 1, 1, 1]), seed)
    interpolates = u * real + (1.0 - u) * fake
    with tf.GradientTape() as tape:
        tape.watch(interpolates)
        scores = tf.reduce_sum(critic_fn(interpolates))
    grads = tape.gradient(scores, interpolates)
    # The tiny constant keeps the gradient of the norm finite where grads vanish.
    norms = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=tf.range(1, tf.rank(grads))) + 1e-12)
    return tf.reduce_mean(tf.square(norms - 1.0))


def critic_loss(critic_fn, real, fake, seed, penalty_weight: float = 10.0):
    """Returns (loss, wasserstein estimate mean(D(x)) - mean(D(x~)), penalty)."""
    wasserstein = tf.reduce_mean(critic_fn(real)) - tf.reduce_mean(critic_fn(fake))
    penalty = gradient_penalty(critic_fn, real, fake, seed)
    return -wasserstein + penalty_weight * penalty, wasserstein, penalty


def generator_loss(critic_fn, fake):
    return -tf.reduce_mean(critic_fn(fake))


def image_grid(images, columns: int = 8):
    """`[n, H, W, C]` -> one image `[1, rows * H, columns * W, C]` (missing cells black)."""
    images = tf.convert_to_tensor(images, tf.float32)
    n = int(images.shape[0])
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    pad = rows * columns - n
    if pad:
        images = tf.concat([images, tf.zeros([pad, *images.shape[1:]], images.dtype)], 0)
    height, width, channels = images.shape[1:]
    grid = tf.reshape(images, [rows, columns, height, width, channels])
    grid = tf.transpose(grid, [0, 2, 1, 3, 4])
    return tf.reshape(grid, [1, rows * height, columns * width, channels])

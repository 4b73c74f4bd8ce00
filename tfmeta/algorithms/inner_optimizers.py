"""Optimizers written on tensors, for inner loops (Reptile, Reptile-GAN).

Keras optimizers assign variables, which an inner loop never does: these take a list
of weight tensors, their gradients and a state (a nest of tensors, so it can be a
`tf.while_loop` variable), and return new weights and state:

    optimizer = make_inner_optimizer("adam", 1e-3, beta_1=0.0)
    state = optimizer.init(params)
    params, state = optimizer.step(params, grads, state)
"""

from __future__ import annotations

import tensorflow as tf

from tfmeta import weights
from tfmeta.errors import UserError

INNER_OPTIMIZERS = ("adam", "sgd")


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
    raise UserError(f"inner_optimizer must be one of {INNER_OPTIMIZERS}; got {name!r}.")

"""The Gaussian MLP policy of MAML's RL experiments, as a plain Keras model.

    outputs = policy(observations)            # [n, 2 * action_dim]
    means, log_stds = split(outputs, 2)       # each [n, action_dim]
    action ~ Normal(means, exp(log_stds))

The log standard deviations are a learned vector (state-independent, as rllab's
`GaussianMLPPolicy`), held by the `LogStd` layer so that every parameter is a trainable
variable of the model and fast weights run through `stateless_call`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class LogStd(keras.layers.Layer):
    """Outputs its learned vector `[units]` once per input row: `[n, units]`."""

    def __init__(self, units: int, initial: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.initial = float(initial)

    def build(self, input_shape):
        self.log_std = self.add_weight(shape=(self.units,), name="log_std",
                                       initializer=keras.initializers.Constant(self.initial))

    def call(self, inputs):
        return keras.ops.zeros_like(inputs[:, :1]) + self.log_std

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "initial": self.initial}


def gaussian_mlp_policy(observation_dim: int = 2, action_dim: int = 2,
                        hidden_units=(100, 100), initial_log_std: float = 0.0,
                        seed: int | None = None, name: str = "gaussian_mlp_policy"):
    """A built Keras model, observations `[n, observation_dim]` -> `[n, 2 * action_dim]`
    (means, then log standard deviations); ReLU hidden layers of `hidden_units` (none: a
    linear policy)."""
    inputs = keras.Input((observation_dim,), name="observations")
    features = inputs
    for i, units in enumerate(hidden_units):
        features = keras.layers.Dense(int(units), activation="relu", name=f"hidden_{i}",
                                      kernel_initializer=keras.initializers.GlorotUniform(
                                          None if seed is None else seed + i))(features)
    means = keras.layers.Dense(action_dim, name="means",
                               kernel_initializer=keras.initializers.GlorotUniform(seed))(features)
    log_stds = LogStd(action_dim, initial_log_std, name="log_std")(means)
    outputs = keras.layers.Concatenate(name="means_and_log_stds")([means, log_stds])
    return keras.Model(inputs, outputs, name=name)


def split_outputs(outputs):
    """Policy outputs `[..., 2A]` -> (means `[..., A]`, log_stds `[..., A]`)."""
    return tf.split(outputs, 2, axis=-1)


def gaussian_log_prob(outputs, actions):
    """log N(actions; means, exp(log_stds)^2) summed over the action axis: `[...]`.

        -0.5 * sum(((a - mean) / std)^2) - sum(log_std) - 0.5 * A * log(2 pi)
    """
    means, log_stds = split_outputs(outputs)
    z = (actions - means) * tf.exp(-log_stds)
    dims = tf.cast(tf.shape(actions)[-1], tf.float32)
    return (-0.5 * tf.reduce_sum(tf.square(z), -1) - tf.reduce_sum(log_stds, -1)
            - 0.5 * dims * math.log(2.0 * math.pi))

"""A multilayer perceptron: MAML's sinusoid regressor (Finn et al. 2017, section 5.1: two
hidden layers of 40 units with ReLU). A plain Keras model: it knows nothing about episodes
or meta-learning.
"""

from __future__ import annotations

import keras
from keras import layers

from tfmeta.errors import UserError


def mlp(input_shape=(1,), num_classes: int | None = None, hidden_units: tuple = (40, 40),
        name: str = "mlp") -> keras.Model:
    """Builds the MLP.

    Args:
      input_shape: `(features,)` of one example.
      num_classes: if set, a linear head with this many outputs (1 for scalar regression);
        else the model returns the last hidden layer's features.
      hidden_units: units of each hidden Dense + ReLU layer.
    """
    if not hidden_units or any(int(u) != u or u < 1 for u in hidden_units):
        raise UserError(f"hidden_units must be positive integers; got {hidden_units!r}.")
    inputs = keras.Input(tuple(input_shape), name="inputs")
    x = inputs
    for i, units in enumerate(hidden_units):
        x = layers.Dense(int(units), activation="relu", name=f"hidden{i + 1}")(x)
    if num_classes:
        x = layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, x, name=name)

"""The twin of Siamese Networks (Koch, Zemel and Salakhutdinov, ICML 2015 workshop).

Koch et al.'s twin is a convolutional tower ending in a fully connected sigmoid
layer (4096 units) whose outputs the weighted L1 distance compares. Their 10x10,
7x7 and 4x4 unpadded convolutions need 105x105 inputs, so the tower here is
Conv4 (3x3, batch norm, ReLU, max-pool blocks), which fits 28x28 Omniglot and
84x84 mini-ImageNet alike; the sigmoid layer is the paper's.
"""

from __future__ import annotations

import keras
from keras import layers

from tfmeta.models.conv4 import conv_block


def siamese_twin(input_shape=(28, 28, 1), filters: int = 64, num_blocks: int = 4,
                 units: int = 4096, name: str = "siamese_twin") -> keras.Model:
    """Conv4 tower + Dense(units, sigmoid): images -> features `[n, units]` in (0, 1)."""
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    for i in range(num_blocks):
        x = conv_block(x, filters, "max_pool", name=f"block{i + 1}")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(units, activation="sigmoid", name="features")(x)
    return keras.Model(inputs, x, name=name)

"""The two networks of Relation Networks (Sung et al., CVPR 2018): an embedding that keeps
feature maps, and the relation module that scores a concatenated pair of them.

Embedding: four Conv4 blocks (3x3 convolution, 64 filters, batch norm, ReLU), of
which only the first two max-pool, so it returns feature maps (7x7x64 for 28x28
Omniglot; the paper's unpadded convolutions give 5x5x64).

Relation module: two such blocks, each max-pooled, then a fully connected ReLU
layer of 8 units and one output unit. It returns the *pre-sigmoid* relation
score; the learner applies the sigmoid.
"""

from __future__ import annotations

import keras
from keras import layers

from tfmeta.errors import UserError
from tfmeta.models.conv4 import conv_block


def relation_embedding(input_shape=(28, 28, 1), filters: int = 64, num_blocks: int = 4,
                       pooled_blocks: int = 2, name: str = "relation_embedding") -> keras.Model:
    """Conv4 whose first `pooled_blocks` blocks max-pool: images -> `[n, h, w, filters]`."""
    if not 0 <= pooled_blocks <= num_blocks:
        raise UserError(f"pooled_blocks must be in 0..num_blocks={num_blocks}; "
                        f"got {pooled_blocks}.")
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    for i in range(num_blocks):
        x = conv_block(x, filters, "max_pool" if i < pooled_blocks else "none",
                       name=f"block{i + 1}")
    return keras.Model(inputs, x, name=name)


def relation_module(feature_shape, filters: int = 64, hidden_units: int = 8,
                    name: str = "relation_module") -> keras.Model:
    """Pairs `[n, h, w, 2c]` (query and class features concatenated) -> scores `[n, 1]`.

    The pools pad ("same"), so feature maps as small as 1x1 still give a 1x1 output.
    """
    inputs = keras.Input(tuple(feature_shape), name="pairs")
    x = inputs
    for i in range(2):
        x = layers.Conv2D(filters, 3, padding="same", name=f"block{i + 1}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name=f"block{i + 1}_bn")(x)
        x = layers.ReLU(name=f"block{i + 1}_relu")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{i + 1}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden_units, activation="relu", name="hidden")(x)
    x = layers.Dense(1, name="score")(x)
    return keras.Model(inputs, x, name=name)

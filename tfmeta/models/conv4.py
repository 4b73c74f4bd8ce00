"""The standard few-shot CNN ("Conv4") of Vinyals et al. 2016 and Finn et al. 2017.

Four blocks of 3x3 convolution (64 filters) -> batch norm -> ReLU -> 2x2 max-pool,
then optionally flatten and a linear head. A plain Keras model: it knows nothing
about episodes or meta-learning.
"""

from __future__ import annotations

import keras
from keras import layers

from tfmeta.errors import UserError


def conv_block(x, filters: int, downsample: str, name: str):
    strides = 2 if downsample == "strided" else 1
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    if downsample == "max_pool":
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return x


def conv4(input_shape=(28, 28, 1), num_classes: int | None = None, filters: int = 64,
          num_blocks: int = 4, downsample: str = "max_pool", flatten: bool = True,
          name: str = "conv4") -> keras.Model:
    """Builds Conv4.

    Args:
      input_shape: `(H, W, C)` of one image.
      num_classes: if set, a linear head with this many logits; else the model returns
        features (flattened if `flatten`, else the last feature map).
      filters: filters per block (64 for Omniglot, 32 in MAML's mini-ImageNet model).
      num_blocks: number of conv blocks.
      downsample: "max_pool" (2x2 pool after each block) or "strided" (stride-2 convs,
        MAML's Omniglot variant).
      flatten: flatten the feature map before the head / output.
    """
    if downsample not in ("max_pool", "strided"):
        raise UserError(f"downsample must be 'max_pool' or 'strided'; got {downsample!r}.")
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    for i in range(num_blocks):
        x = conv_block(x, filters, downsample, name=f"block{i + 1}")
    if flatten or num_classes:
        x = layers.Flatten(name="flatten")(x)
    if num_classes:
        x = layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, x, name=name)

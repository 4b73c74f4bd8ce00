"""The end of a convolutional backbone: how its feature map becomes features, and the head."""

from __future__ import annotations

import keras
from keras import layers

from tfmeta.errors import UserError

POOLINGS = ("avg", "flatten", "none")


def check_pooling(pooling: str, num_classes) -> None:
    if pooling not in POOLINGS:
        raise UserError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
    if num_classes and pooling == "none":
        raise UserError("A classification head needs pooled features; use pooling='avg'.")


def pool_and_head(x, pooling: str, num_classes=None):
    """Feature map `[n, h, w, c]` -> `[n, c]` ("avg"), `[n, h*w*c]` ("flatten") or itself
    ("none"), then a linear layer named `head` with `num_classes` outputs if given."""
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    elif pooling == "flatten":
        x = layers.Flatten(name="flatten")(x)
    if num_classes:
        x = layers.Dense(num_classes, name="head")(x)
    return x


def on_features(input_shape, num_classes=None, name: str = "on_features"):
    """The backbone of a learner whose inputs are features already (a frozen backbone's,
    computed once: `tfmeta.training.features`): the features as they are `[n, *F]`, or a
    linear head named `head` with `num_classes` outputs (MAML's and ANIL's head)."""
    inputs = keras.Input(tuple(input_shape), name="features")
    outputs = layers.Identity(name="features_out")(inputs)
    if num_classes:
        outputs = layers.Dense(num_classes, name="head")(outputs)
    return keras.Model(inputs, outputs, name=name)

"""The end of a convolutional backbone: how its feature map becomes features, and the head."""

from __future__ import annotations

from keras import layers

POOLINGS = ("avg", "flatten", "none")


def check_pooling(pooling: str, num_classes) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
    if num_classes and pooling == "none":
        raise ValueError("A classification head needs pooled features; use pooling='avg'.")


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

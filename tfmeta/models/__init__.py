"""Backbones: plain Keras models that know nothing about meta-learning.

`build_backbone(name, **kwargs)` looks one up by its config name.
"""

from __future__ import annotations

from tfmeta.models.conv4 import conv4
from tfmeta.models.relation_net import relation_embedding
from tfmeta.models.siamese_net import siamese_twin

BACKBONES = {
    "conv4": conv4,
    "relation_embedding": relation_embedding,
    "siamese_twin": siamese_twin,
}


def build_backbone(name: str, **kwargs):
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; valid backbones: {sorted(BACKBONES)}.")
    return BACKBONES[name](**kwargs)


def backbone_from_config(model_config, input_shape, **overrides):
    """Builds the backbone a config's `model` section names (`name` plus its kwargs)."""
    kwargs = dict(model_config)
    name = kwargs.pop("name")
    kwargs.update(overrides)
    return build_backbone(name, input_shape=tuple(input_shape), **kwargs)


__all__ = ["BACKBONES", "backbone_from_config", "build_backbone", "conv4"]

"""Backbones: plain Keras models that know nothing about meta-learning.

`build_backbone(name, **kwargs)` looks one up by its config name (`model.name`);
`"none"` means no backbone (the learner takes its inputs as they are).
"""

from __future__ import annotations

from tfmeta.models.conv4 import conv4
from tfmeta.models.mlp import mlp
from tfmeta.models.relation_net import relation_embedding
from tfmeta.models.resnet12 import resnet12
from tfmeta.models.resnet_gan import resnet_gan
from tfmeta.models.siamese_net import siamese_twin
from tfmeta.models.wrn import wrn28_10

NO_BACKBONE = "none"
BACKBONES = {
    "conv4": conv4,
    "mlp": mlp,  # MAML's sinusoid regressor
    "relation_embedding": relation_embedding,
    "siamese_twin": siamese_twin,
    "resnet_gan": resnet_gan,  # a (generator, critic) pair
    "resnet12": resnet12,
    "wrn28_10": wrn28_10,
}


def backbone_function(name: str):
    """The function that builds backbone `name` (its keyword arguments are `model.*`)."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; valid backbones: {sorted(BACKBONES)} or "
                         f"{NO_BACKBONE!r}.")
    return BACKBONES[name]


def build_backbone(name: str, **kwargs):
    return backbone_function(name)(**kwargs)


def backbone_from_config(model_config, input_shape, **overrides):
    """Builds the backbone a config's `model` section names (`name` plus its kwargs), or
    returns None for `name="none"`."""
    kwargs = dict(model_config)
    name = kwargs.pop("name")
    kwargs.pop("init_from", None)  # weights to start from: applied by the trainer
    if name == NO_BACKBONE:
        return None
    kwargs.update(overrides)
    return build_backbone(name, input_shape=tuple(input_shape), **kwargs)


__all__ = ["BACKBONES", "NO_BACKBONE", "backbone_from_config", "backbone_function",
           "build_backbone", "conv4"]

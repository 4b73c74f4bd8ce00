"""Backbones: plain Keras models that know nothing about meta-learning.

`build_backbone(name, **kwargs)` looks one up by its config name (`model.name`): one of
tfmeta's own (`BACKBONES`), or one from outside (`tfmeta.models.external`):
`keras_hub:<preset or folder>`, `keras_applications:<Name>`, `file:<path.keras>`. `"none"`
means no backbone (the learner takes its inputs as they are).

Every backbone takes `model.trainable` (`tfmeta.models.blocks`): "all" (the default),
"none" (frozen: only the learner's head or metric trains) or "last:K" (its last K blocks).
"""

from __future__ import annotations

import functools
import logging

from tfmeta.errors import UserError
from tfmeta.models import blocks, external
from tfmeta.models.conv4 import conv4
from tfmeta.models.heads import on_features
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
    # inputs that are features already (a frozen backbone's, computed once): the identity,
    # or a linear head for the learners that want one
    "on_features": on_features,
}
# Fields every backbone's config section takes besides its function's arguments: weights to
# start from (a tfmeta run, applied by the trainer) and what trains.
COMMON_FIELDS = {"init_from": None, "trainable": "all"}


def valid_names() -> str:
    return (f"{sorted(BACKBONES)}, {NO_BACKBONE!r} (no backbone), or one from outside: "
            + ", ".join(external.example_name(k) for k in external.KINDS))


def backbone_function(name: str):
    """The function that builds backbone `name` (its keyword arguments are `model.*`)."""
    kind, target = external.split_name(name)
    if kind is not None:
        return functools.partial(external.BUILDERS[kind], target)
    if name not in BACKBONES:
        raise UserError(f"Unknown backbone {name!r}; valid backbones: {valid_names()}.")
    return BACKBONES[name]


def check_backbone_name(name: str) -> None:
    """Refuses, before anything is built, a `model.name` that names no backbone (an
    external one: that cannot load, see `external.check_name`)."""
    if name == NO_BACKBONE:
        return
    if external.split_name(name)[0] is not None:
        external.check_name(name)
        return
    backbone_function(name)


def is_frozen(model_config) -> bool:
    """Whether a config's backbone is frozen whole (`model.trainable="none"`)."""
    model_config = dict(model_config or {})
    return model_config.get("name", NO_BACKBONE) != NO_BACKBONE and \
        blocks.parse_trainable(model_config.get("trainable")) == 0


def build_backbone(name: str, **kwargs):
    return backbone_function(name)(**kwargs)


def backbone_from_config(model_config, input_shape, **overrides):
    """Builds the backbone a config's `model` section names (`name` plus its kwargs), frozen
    as its `trainable` says, or returns None for `name="none"`."""
    kwargs = dict(model_config)
    name = kwargs.pop("name")
    kwargs.pop("init_from", None)  # weights to start from: applied by the trainer
    trainable = kwargs.pop("trainable", "all")
    if name == NO_BACKBONE:
        return None
    kwargs.update(overrides)
    backbone = build_backbone(name, input_shape=tuple(input_shape), **kwargs)
    if hasattr(backbone, "layers"):  # (not resnet_gan's (generator, critic) pair)
        blocks.set_trainable(backbone, trainable)
    return backbone


def copy_backbone_weights(source, target, where: str = "the source run") -> list:
    """Copies `source`'s layer weights into `target`'s, layer by layer (matched by name and
    shape; a classification head of another size keeps its own). Returns the layers copied;
    raises a ValueError if none match."""
    by_name = {layer.name: layer for layer in source.layers}
    copied = []
    for layer in target.layers:
        match = by_name.get(layer.name)
        if match is None or not layer.weights:
            continue
        values = match.get_weights()
        if [v.shape for v in values] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(values)
            copied.append(layer.name)
    if not copied:
        raise UserError(f"model.init_from={where!r}: no layer of its backbone ({source.name}) "
                        f"matches this one ({target.name}) by name and shape; use the same "
                        "model.name and sizes as that run.")
    logging.info("Initialized %d backbone layers from %s: %s", len(copied), where, copied)
    return copied


def resolved_fields(model_config, input_shape) -> dict:
    """What a run records of its backbone beyond what its config said (an external one's
    absolute path, input size and normalization: `external.resolved_fields`)."""
    return external.resolved_fields(model_config, input_shape)


__all__ = ["BACKBONES", "COMMON_FIELDS", "NO_BACKBONE", "backbone_from_config",
           "backbone_function", "build_backbone", "check_backbone_name", "conv4",
           "copy_backbone_weights", "is_frozen",
           "resolved_fields"]

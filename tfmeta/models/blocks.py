"""A backbone's blocks, and which of them train: `model.trainable=all|none|last:K`.

Transfer learning freezes a pretrained backbone, or all of it but its last few blocks
(Keras's transfer-learning guide; P>M>F fine-tunes a whole ViT, linear probes none of it).
A *block* is what a backbone repeats: Conv4's `block1..block4`, ResNet-12's four
residual blocks, a keras.applications ResNet's `conv5_block3`, EfficientNet's `block6h`,
a ViT's transformer layers. They are found from the layer names, whatever the source:

  1. the backbone's weighted layers in order, descending into a container layer (one
     with no weights of its own and several weighted sublayers: KerasHub's `vit_encoder`)
     unless its own name is already a block's;
  2. consecutive layers whose names share a block key (the name up to its last
     `block|stage|layer|layers|stack|expanded_conv` + number: `conv5_block3_2_conv` ->
     `conv5_block3`) form one block; any other weighted layer is a block of its own;
  3. a normalization-only block (a final batch or layer norm) joins the block before it.

The classification head (a layer named `head`, added by the learner) is never frozen:
`none` trains only the head or the learner's metric. A frozen layer is `trainable=False`,
so Keras runs its batch norm in inference mode (moving statistics) even under
`training=True`, as the transfer-learning guide prescribes.
"""

from __future__ import annotations

import dataclasses
import re

import keras

from tfmeta.errors import UserError

HEAD = "head"
BLOCK_KEY = re.compile(r"^(.*(?:block|stage|layers?|stack|expanded_conv)_?\d+[a-z]?)")
FIRST_MOBILENET_BLOCK = re.compile(r"^(expanded_conv)(?:_[a-z]|$)")
NORMALIZATIONS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                  keras.layers.GroupNormalization, keras.layers.UnitNormalization)
TRAINABLE_FORMS = "all, none or last:K (K >= 1)"


@dataclasses.dataclass(frozen=True)
class Block:
    """A named run of a backbone's weighted layers."""

    name: str
    layers: tuple


def parse_trainable(value) -> int | None:
    """`model.trainable` -> None (all), 0 (none) or K (the last K blocks); a ValueError
    naming the value otherwise."""
    text = str(value).strip().lower() if value is not None else "all"
    if text == "all":
        return None
    if text == "none":
        return 0
    match = re.fullmatch(r"last:(\d+)", text)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise UserError(f"model.trainable must be {TRAINABLE_FORMS}; got {value!r}.")


def _own_weights(layer) -> list:
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _children(layer) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=False))


def block_key(name: str) -> str | None:
    """The block a layer name belongs to (`conv5_block3_1_conv` -> `conv5_block3`), or None."""
    match = BLOCK_KEY.match(name) or FIRST_MOBILENET_BLOCK.match(name)
    return match.group(1) if match else None


def weighted_units(layer) -> list:
    """The layers below `layer` that blocks are made of, in order (step 1 above)."""
    units = []
    for child in _children(layer):
        if not child.weights or child.name == HEAD:
            continue
        weighted = [c for c in _children(child) if c.weights]
        if not _own_weights(child) and len(weighted) >= 2 and block_key(child.name) is None:
            units += weighted_units(child)
        else:
            units.append(child)
    return units


def _normalization_only(layers) -> bool:
    return all(isinstance(layer, NORMALIZATIONS) for layer in layers)


def backbone_blocks(model) -> list:
    """The blocks of `model` (see the module docstring), first to last, head excluded."""
    blocks = []
    for layer in weighted_units(model):
        key = block_key(layer.name)
        if blocks and key is not None and key == blocks[-1].name:
            blocks[-1] = Block(key, blocks[-1].layers + (layer,))
        elif blocks and isinstance(layer, NORMALIZATIONS) and \
                not _normalization_only(blocks[-1].layers):
            blocks[-1] = Block(blocks[-1].name, blocks[-1].layers + (layer,))
        else:
            blocks.append(Block(key or layer.name, (layer,)))
    return blocks


def describe_blocks(blocks, limit: int = 8) -> str:
    names = [b.name for b in blocks]
    shown = names if len(names) <= limit else names[:3] + ["..."] + names[-(limit - 4):]
    return f"{len(names)} blocks ({', '.join(shown)})"


def set_trainable(model, trainable) -> list:
    """Freezes `model` as `model.trainable` says (`parse_trainable`); returns the names of
    the blocks that train. The head, if any, always trains. A ValueError names the blocks
    when `last:K` asks for more than there are."""
    last = parse_trainable(trainable)
    if last is None:
        return [b.name for b in backbone_blocks(model)]
    blocks = backbone_blocks(model)
    if last > len(blocks):
        raise UserError(f"model.trainable=last:{last} asks for more blocks than the backbone "
                        f"{model.name!r} has: {describe_blocks(blocks)}; use last:K with K <= "
                        f"{len(blocks)}, or all.")
    for layer in _children(model):
        if layer.name != HEAD:
            layer.trainable = False
    training = blocks[len(blocks) - last:] if last else []
    for block in training:
        for layer in block.layers:
            _unfreeze(model, layer)
    return [b.name for b in training]


def _unfreeze(model, layer) -> None:
    """Sets `layer` trainable, and the containers above it (whose own flag Keras reads for
    `trainable_variables`), but not their other sublayers."""
    layer.trainable = True
    for container in _containers_of(model, layer):
        container._trainable = True


def _containers_of(model, target) -> list:
    path = []

    def walk(layer, trail):
        for child in _children(layer):
            if child is target:
                path.extend(trail)
                return True
            if walk(child, trail + [child]):
                return True
        return False

    walk(model, [])
    return path

"""ResNet generator and critic of FIGR (Clouatre and Demers 2019), as plain Keras models.

Generator: latent `[n, latent_dim]` -> Dense -> PReLU -> LayerNorm -> reshape to
`[H / 2**blocks, W / 2**blocks, filters * 2**blocks]`, then per block two residual units
(conv3 -> PReLU -> LayerNorm, twice, plus the input), a transition conv halving the
channels, and a 2x nearest upsampling; a 5x5 conv and tanh give images `[n, H, W, C]` in
[-1, 1].

Critic: images `[n, H, W, C]` -> conv7 -> PReLU -> LayerNorm, then per block two residual
units, a transition conv doubling the channels and 2x2 average pooling; global average
pooling and a linear layer give one score per image `[n, 1]`. Layer norm, not batch norm,
so every score depends on its own image only (what a per-sample gradient penalty needs).
"""

from __future__ import annotations

import keras
from keras import layers

from tfmeta.errors import UserError


def _conv_unit(x, filters: int, kernel: int, name: str):
    x = layers.Conv2D(filters, kernel, padding="same", name=f"{name}_conv")(x)
    x = layers.PReLU(shared_axes=[1, 2], name=f"{name}_prelu")(x)
    return layers.LayerNormalization(axis=[1, 2, 3], name=f"{name}_norm")(x)


def residual_unit(x, filters: int, name: str):
    """x + (conv3 -> PReLU -> LayerNorm) twice."""
    fx = _conv_unit(x, filters, 3, f"{name}_a")
    fx = _conv_unit(fx, filters, 3, f"{name}_b")
    return layers.Add(name=f"{name}_add")([x, fx])


def _check(image_shape, filters, blocks, units):
    if len(image_shape) != 3:
        raise UserError(f"image_shape must be (height, width, channels); got {image_shape}.")
    for name, value in (("filters", filters), ("blocks", blocks), ("units_per_block", units)):
        if int(value) != value or value < 1:
            raise UserError(f"{name} must be a positive integer; got {value!r}.")


def resnet_generator(image_shape=(28, 28, 1), latent_dim: int = 100, filters: int = 64,
                     blocks: int = 2, units_per_block: int = 2,
                     name: str = "resnet_generator") -> keras.Model:
    """The generator; `image_shape`'s height and width must be divisible by 2**blocks."""
    _check(image_shape, filters, blocks, units_per_block)
    height, width, channels = image_shape
    factor = 2 ** blocks
    if height % factor or width % factor:
        raise UserError(f"The generator upsamples {blocks} times by 2, so image height and "
                        f"width must be divisible by {factor}; got {image_shape}. Use fewer "
                        "blocks or another image_size.")
    latent = keras.Input((latent_dim,), name="latent")
    width_channels = filters * factor
    x = layers.Dense((height // factor) * (width // factor) * width_channels, name="project")(latent)
    x = layers.PReLU(name="project_prelu")(x)
    x = layers.LayerNormalization(name="project_norm")(x)
    x = layers.Reshape((height // factor, width // factor, width_channels))(x)
    for i in range(blocks):
        block_channels = filters * 2 ** (blocks - i)
        for unit in range(units_per_block):
            x = residual_unit(x, block_channels, f"block{i + 1}_unit{unit + 1}")
        x = _conv_unit(x, block_channels // 2, 3, f"block{i + 1}_transition")
        x = layers.UpSampling2D(2, name=f"block{i + 1}_upsample")(x)
    x = layers.Conv2D(channels, 5, padding="same", name="to_image")(x)
    images = layers.Activation("tanh", name="tanh")(x)
    return keras.Model(latent, images, name=name)


def resnet_critic(image_shape=(28, 28, 1), filters: int = 64, blocks: int = 2,
                  units_per_block: int = 2, name: str = "resnet_critic") -> keras.Model:
    """The critic (WGAN discriminator): one unbounded score per image."""
    _check(image_shape, filters, blocks, units_per_block)
    if min(image_shape[:2]) < 2 ** blocks:
        raise UserError(f"The critic halves the image {blocks} times; {image_shape} is too "
                        "small. Use fewer blocks.")
    images = keras.Input(tuple(image_shape), name="images")
    x = _conv_unit(images, filters, 7, "stem")
    for i in range(blocks):
        block_channels = filters * 2 ** i
        for unit in range(units_per_block):
            x = residual_unit(x, block_channels, f"block{i + 1}_unit{unit + 1}")
        x = _conv_unit(x, block_channels * 2, 3, f"block{i + 1}_transition")
        x = layers.AveragePooling2D(2, name=f"block{i + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    scores = layers.Dense(1, name="score")(x)
    return keras.Model(images, scores, name=name)


def resnet_gan(input_shape=(28, 28, 1), latent_dim: int = 100, filters: int = 64,
               blocks: int = 2, units_per_block: int = 2):
    """FIGR's (generator, critic) pair for images of `input_shape`."""
    return (resnet_generator(input_shape, latent_dim=latent_dim, filters=filters, blocks=blocks,
                             units_per_block=units_per_block),
            resnet_critic(input_shape, filters=filters, blocks=blocks,
                          units_per_block=units_per_block))

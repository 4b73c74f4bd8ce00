"""Random affine augmentation of training episodes, drawn per image inside the sampler.

Each example of a training episode gets its own random rotation, scale and shift
(about the image centre), so the same character seldom looks the same twice. With
few training classes (the bundled Omniglot has 161 characters) this is what closes
most of the gap between training and unseen alphabets; it is off unless a config
asks for it, and never applies to validation or test episodes.

    augment = RandomAffine(shift=0.07, rotation=10.0, scale=0.1)
    images = augment(images, seed)     # [n, H, W, C] -> [n, H, W, C], stateless in `seed`
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from tfmeta.errors import UserError

FILL_MODES = ("constant", "nearest", "reflect", "wrap")


@dataclasses.dataclass(frozen=True)
class RandomAffine:
    """Per-image uniform random affine maps.

    Attributes:
      shift: largest translation along each axis, as a fraction of the image size.
      rotation: largest rotation, in degrees, either way.
      scale: zoom drawn from `[1 - scale, 1 + scale]`.
      fill_mode: how pixels from outside the image are filled ("constant" uses
        `fill_value`, which suits Omniglot's zero background).
      fill_value: the constant fill.
    """

    shift: float = 0.0
    rotation: float = 0.0
    scale: float = 0.0
    fill_mode: str = "constant"
    fill_value: float = 0.0

    def __post_init__(self):
        for name in ("shift", "rotation", "scale"):
            if getattr(self, name) < 0:
                raise UserError(f"augment.{name} must be >= 0; got {getattr(self, name)}.")
        if self.scale >= 1:
            raise UserError(f"augment.scale must be < 1 (zoom in [1 - scale, 1 + scale]); "
                            f"got {self.scale}.")
        if self.fill_mode not in FILL_MODES:
            raise UserError(f"augment.fill_mode must be one of {FILL_MODES}; "
                            f"got {self.fill_mode!r}.")

    @classmethod
    def from_config(cls, augment_config) -> RandomAffine | None:
        """A config's `augment` section as a RandomAffine, or None when it asks for nothing."""
        if augment_config is None:
            return None
        augment = cls(**dict(augment_config))
        return augment if augment.active else None

    @property
    def active(self) -> bool:
        return bool(self.shift or self.rotation or self.scale)

    def __call__(self, images, seed):
        """Augments a batch `[n, H, W, C]` of float images; a pure function of `seed` `[2]`."""
        if not self.active:
            return images
        if images.shape.rank != 4:
            raise UserError("augment transforms images [n, H, W, C]; these examples have shape "
                            f"{images.shape[1:]}. Set augment.shift/rotation/scale to 0 for "
                            "datasets of feature vectors.")
        shape = tf.shape(images)
        count, height, width = shape[0], shape[1], shape[2]
        seeds = tf.random.experimental.stateless_split(seed, 4)
        angle = tf.random.stateless_uniform([count], seeds[0], -self.rotation, self.rotation)
        zoom = tf.random.stateless_uniform([count], seeds[1], 1.0 - self.scale, 1.0 + self.scale)
        shift_x = tf.random.stateless_uniform([count], seeds[2], -self.shift, self.shift)
        shift_y = tf.random.stateless_uniform([count], seeds[3], -self.shift, self.shift)
        transforms = affine_transforms(angle, zoom, shift_x * tf.cast(width, tf.float32),
                                       shift_y * tf.cast(height, tf.float32), height, width)
        return transform_images(images, transforms, self.fill_mode, self.fill_value)


def affine_transforms(degrees, zoom, shift_x, shift_y, height, width):
    """`[n, 8]` maps (TF's projective layout) that rotate by `degrees` and zoom by `zoom`
    about the image centre, then shift by (`shift_x`, `shift_y`) pixels; each argument `[n]`.

    TF maps an output pixel p to the input point `A p + b`; here that is
    `R(-degrees) (p - c) / zoom + c - shift`.
    """
    angle = tf.convert_to_tensor(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    zeros = tf.zeros_like(cos)
    return tf.stack([cos, -sin, cx - cos * cx + sin * cy - shift_x,
                     sin, cos, cy - sin * cx - cos * cy - shift_y, zeros, zeros], axis=1)


def transform_images(images, transforms, fill_mode="constant", fill_value=0.0):
    """Resamples `[n, H, W, C]` images bilinearly through `[n, 8]` transforms."""
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.shape(images)[1:3], fill_value=fill_value, interpolation="BILINEAR",
        fill_mode=fill_mode.upper())
    return tf.ensure_shape(transformed, images.shape)

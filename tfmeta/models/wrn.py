"""Wide residual networks (Zagoruyko and Komodakis, BMVC 2016); WRN-28-10 is LEO's backbone.

https://arxiv.org/abs/1605.07146. A 3x3 stem convolution (16 filters), then three groups
of `(depth - 4) / 6` pre-activation blocks of widths `16k, 32k, 64k` (the first block of
groups 2 and 3 has stride 2), then BN-ReLU and global average pooling:

    x = conv3x3(images, 16)
    for width, stride in ((16k, 1), (32k, 2), (64k, 2)):
        for b in range(n):                                  # n = (depth - 4) / 6
            h = conv3x3(relu(bn(x)), width, stride if b == 0 else 1)
            h = conv3x3(dropout(relu(bn(h))), width)
            x = h + (x if same shape else conv1x1(relu(bn(x)), width, stride))
    features = global_average_pool(relu(bn(x)))             # [n, 64k]

WRN-28-10: 4 blocks per group, widths 160-320-640, 640 features, 36.5M parameters
(Table 1 of the paper gives 36.5M). LEO (Rusu et al. 2019, Appendix) trained it as an
ordinary classifier on 80x80 mini-/tieredImageNet images and took these 640 features.
A plain Keras model: it knows nothing about episodes or meta-learning.
"""

from __future__ import annotations

import keras
from keras import layers

from tfmeta.errors import UserError
from tfmeta.models.heads import check_pooling, pool_and_head


def bn_relu(x, name: str):
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def conv(x, filters: int, kernel: int, stride: int, name: str):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)(x)


def wide_block(x, width: int, stride: int, dropout: float, name: str):
    """One pre-activation block: BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus shortcut."""
    activated = bn_relu(x, f"{name}_1")
    h = conv(activated, width, 3, stride, f"{name}_1_conv")
    h = bn_relu(h, f"{name}_2")
    if dropout:
        h = layers.Dropout(dropout, name=f"{name}_dropout")(h)
    h = conv(h, width, 3, 1, f"{name}_2_conv")
    if stride != 1 or x.shape[-1] != width:
        x = conv(activated, width, 1, stride, f"{name}_shortcut")
    return layers.Add(name=f"{name}_add")([h, x])


def wrn(input_shape=(80, 80, 3), num_classes: int | None = None, depth: int = 28,
        widen_factor: int = 10, dropout: float = 0.0, pooling: str = "avg",
        name: str | None = None) -> keras.Model:
    """Builds WRN-`depth`-`widen_factor`.

    Args:
      input_shape: `(H, W, C)` of one image.
      num_classes: if set, a linear head named `head` with this many logits.
      depth: 6n + 4 layers (28: four blocks per group).
      widen_factor: k; group widths are 16k, 32k, 64k.
      dropout: dropout between the two convolutions of each block (the paper: 0.3 on
        CIFAR; LEO does not say, so 0).
      pooling: "avg" (global average -> `[n, 64k]`), "flatten" or "none" (feature map).
    """
    if (depth - 4) % 6 or depth < 10:
        raise UserError(f"WRN depth must be 6n + 4 with n >= 1 (e.g. 28); got {depth}.")
    if int(widen_factor) != widen_factor or widen_factor < 1:
        raise UserError(f"widen_factor must be a positive integer; got {widen_factor}.")
    check_pooling(pooling, num_classes)
    blocks = (depth - 4) // 6
    inputs = keras.Input(tuple(input_shape), name="images")
    x = conv(inputs, 16, 3, 1, "stem_conv")
    for group, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
        for b in range(blocks):
            x = wide_block(x, width * widen_factor, stride if b == 0 else 1, dropout,
                           f"group{group + 1}_block{b + 1}")
    x = bn_relu(x, "final")
    x = pool_and_head(x, pooling, num_classes)
    return keras.Model(inputs, x, name=name or f"wrn{depth}_{widen_factor}")


def wrn28_10(input_shape=(80, 80, 3), num_classes: int | None = None, widen_factor: int = 10,
             dropout: float = 0.0, pooling: str = "avg") -> keras.Model:
    """LEO's WRN-28-10 (`widen_factor` smaller for tests and CPU runs); see `wrn`."""
    return wrn(input_shape, num_classes, 28, widen_factor, dropout, pooling,
               name=f"wrn28_{widen_factor}")

"""ResNet-12 of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019).

Four residual blocks of widths 64-160-320-640; each is three 3x3 convolutions (no bias)
with batch norm, LeakyReLU(0.1) between them, a 1x1 convolution + batch norm shortcut,
LeakyReLU after the sum, then a 2x2 max-pool:

    for width in widths:
        y = conv_bn(leaky(conv_bn(leaky(conv_bn(x)))))      # three 3x3 conv-BN
        x = max_pool(leaky(y + bn(conv1x1(x))), 2)
        x = dropout(x) or drop_block(x)                     # optional regularization
    features = global_average_pool(x)                       # [n, 640]

84x84x3 -> 5x5x640 -> 640 features (12.4M parameters). Regularization follows
MetaOptNet's `models/ResNet12_embedding.py` (github.com/kjunelee/MetaOptNet): with
`drop_rate > 0`, blocks 1-2 end in plain dropout at that rate and blocks 3-4 in
DropBlock (block size 5 on mini-ImageNet, 2 on CIFAR-FS), its rate ramped up over the
first 40000 calls (`tfmeta.models.dropblock`). MetaOptNet flattens the last 5x5x640 map
(`pooling="flatten"`, 16000 features); TADAM and later work (Tian et al. 2020) average it.
A plain Keras model: it knows nothing about episodes or meta-learning.
"""

from __future__ import annotations

import keras
from keras import layers

from tfmeta.errors import UserError
from tfmeta.models.dropblock import DropBlock
from tfmeta.models.heads import check_pooling, pool_and_head

WIDTH_RATIOS = (1.0, 2.5, 5.0, 10.0)  # 64-160-320-640 from filters=64


def conv_bn(x, filters: int, kernel: int, name: str):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)


def residual_block(x, filters: int, name: str):
    """Three 3x3 conv-BN (LeakyReLU between), a 1x1 conv-BN shortcut, LeakyReLU, 2x2 pool."""
    shortcut = conv_bn(x, filters, 1, f"{name}_shortcut")
    for i in (1, 2, 3):
        x = conv_bn(x, filters, 3, f"{name}_{i}")
        if i < 3:
            x = layers.LeakyReLU(0.1, name=f"{name}_{i}_relu")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = layers.LeakyReLU(0.1, name=f"{name}_relu")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def resnet12(input_shape=(84, 84, 3), num_classes: int | None = None, filters: int = 64,
             widths: tuple | None = None, pooling: str = "avg", drop_rate: float = 0.0,
             dropblock_size: int = 5, dropblock_schedule_steps: int = 40000,
             name: str = "resnet12") -> keras.Model:
    """Builds ResNet-12.

    Args:
      input_shape: `(H, W, C)` of one image (at least 16x16: four 2x2 pools).
      num_classes: if set, a linear head named `head` with this many logits on the
        pooled features.
      filters: width of the first block; the others are 2.5x, 5x and 10x it (64 gives
        the paper's 64-160-320-640). Ignored when `widths` is given.
      widths: the four block widths, e.g. (8, 16, 32, 64) for tests and CPU runs.
      pooling: "avg" (global average -> `[n, widths[-1]]`), "flatten" (MetaOptNet's
        `avg_pool=False`) or "none" (the last feature map, e.g. for Relation Networks).
      drop_rate: dropout after blocks 1-2 and DropBlock after blocks 3-4 (MetaOptNet: 0.1);
        0 turns both off.
      dropblock_size: DropBlock's block size (MetaOptNet: 5 on 84x84, 2 on 32x32).
      dropblock_schedule_steps: DropBlock's linear ramp of the rate, in training calls
        (MetaOptNet: 20 * 2000); 0: the full rate from the start.
    """
    widths = tuple(int(w) for w in widths) if widths is not None else tuple(
        int(round(filters * r)) for r in WIDTH_RATIOS)
    if len(widths) != 4 or min(widths) < 1:
        raise UserError(f"resnet12 has four blocks; widths must be four positive integers, "
                        f"got {widths}.")
    check_pooling(pooling, num_classes)
    if min(input_shape[:2]) < 16:
        raise UserError(f"resnet12 halves the image four times; input_shape {input_shape} is "
                        "smaller than 16x16. Use larger images or conv4.")
    inputs = keras.Input(tuple(input_shape), name="images")
    x = inputs
    for index, width in enumerate(widths):
        block = f"block{index + 1}"
        x = residual_block(x, width, block)
        if drop_rate and index < 2:
            x = layers.Dropout(drop_rate, name=f"{block}_dropout")(x)
        elif drop_rate:
            x = DropBlock(drop_rate, dropblock_size, dropblock_schedule_steps,
                          name=f"{block}_dropblock")(x)
    x = pool_and_head(x, pooling, num_classes)
    return keras.Model(inputs, x, name=name)

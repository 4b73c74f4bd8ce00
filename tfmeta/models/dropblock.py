"""DropBlock (Ghiasi, Lin and Le, NeurIPS 2018), https://arxiv.org/abs/1810.12890.

Dropout of contiguous `block_size x block_size` regions of a feature map, channel by
channel, so that a convolutional layer cannot recover a dropped unit from its
neighbours. In training, for a `[n, H, W, C]` input and drop rate `r`:

    b = min(block_size, H, W)
    gamma = r / b**2 * (H * W) / ((H - b + 1) * (W - b + 1))      # seeds per position
    seeds ~ Bernoulli(gamma) on the (H - b + 1) x (W - b + 1) centres where a block fits
    dropped = max_pool(pad(seeds), b, stride 1, "SAME")          # each seed -> a b x b block
    keep = 1 - dropped
    y = x * keep * keep.size / sum(keep)                         # expected activation kept

so that about a fraction `r` of the units is dropped (blocks overlap, so slightly
fewer). At inference `y = x`.

The schedule is MetaOptNet's (Lee et al. 2019, `models/ResNet12_embedding.py` of
github.com/kjunelee/MetaOptNet): the drop rate grows linearly from 0 to `drop_rate` over
the first `schedule_steps` training calls of the layer (they use 20 * 2000 = 40000),

    rate = min(drop_rate, drop_rate * calls / schedule_steps)

Both the random draws and the call counter are layer state (a Keras `SeedGenerator` and
a non-trainable variable), so `stateless_call` carries them like batch-norm statistics.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmeta.errors import UserError


class DropBlock(keras.layers.Layer):
    """DropBlock on `[n, H, W, C]` feature maps (see the module docstring).

    Args:
      drop_rate: the fraction of units to drop, in [0, 1).
      block_size: side of the dropped squares (clipped to the feature map).
      schedule_steps: training calls over which the rate ramps up from 0 (0: no ramp).
      seed: seed of the layer's `SeedGenerator` (None: from Keras' global seed).
    """

    def __init__(self, drop_rate: float = 0.1, block_size: int = 5, schedule_steps: int = 0,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= drop_rate < 1:
            raise UserError(f"DropBlock drop_rate must be in [0, 1); got {drop_rate}.")
        if int(block_size) != block_size or block_size < 1:
            raise UserError(f"DropBlock block_size must be an integer >= 1; got {block_size}.")
        if int(schedule_steps) != schedule_steps or schedule_steps < 0:
            raise UserError(f"DropBlock schedule_steps must be an integer >= 0; got "
                            f"{schedule_steps}.")
        self.drop_rate = float(drop_rate)
        self.block_size = int(block_size)
        self.schedule_steps = int(schedule_steps)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     name="calls", dtype="float32")

    def rate(self):
        """The drop rate of the current call (the ramp over `schedule_steps` calls)."""
        if not self.schedule_steps:
            return tf.constant(self.drop_rate)
        return tf.minimum(self.drop_rate, self.drop_rate * self.calls / self.schedule_steps)

    def call(self, inputs, training=False):
        if not training or self.drop_rate == 0:
            return inputs
        self.calls.assign_add(1.0)
        shape = tf.shape(inputs)
        height, width = inputs.shape[1], inputs.shape[2]
        block = min(self.block_size, height, width)
        valid_h, valid_w = height - block + 1, width - block + 1
        gamma = self.rate() / block ** 2 * (height * width) / (valid_h * valid_w)
        uniform = keras.random.uniform([shape[0], valid_h, valid_w, shape[3]],
                                       seed=self.seed_generator)
        seeds = tf.cast(uniform < gamma, inputs.dtype)
        before, after = block // 2, (block - 1) // 2  # with SAME pooling: the block fits
        seeds = tf.pad(seeds, [[0, 0], [before, after], [before, after], [0, 0]])
        dropped = tf.nn.max_pool2d(seeds, block, 1, "SAME")
        keep = 1.0 - dropped
        total = tf.cast(tf.size(keep), inputs.dtype)
        return inputs * keep * total / tf.maximum(tf.reduce_sum(keep), 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "drop_rate": self.drop_rate,
                "block_size": self.block_size, "schedule_steps": self.schedule_steps,
                "seed": self.seed}

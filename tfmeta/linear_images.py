"""Image preprocessing written as matrix products, in ops every runtime has.

TensorFlow's resizes (area, bilinear, bilinear with antialiasing) are linear and separable:
resizing an image `x [H, W]` to `[h, w]` is `A x B^T` with `A [h, H]` and `B [w, W]`
whatever the method. The ops themselves (`ResizeArea`, `ScaleAndTranslate`) are neither
LiteRT built-ins nor computed alike by ONNX's `Resize` (up to 0.67 apart on [0, 1] images),
whereas a matrix product is the same everywhere. So:

    resize_matrix(H, h, method, antialias)    A, read off tf.image.resize itself
    matrix_resize(x, (h, w), method, antialias)   x [n, H, W, C] -> [n, h, w, C]
    SeparableMap.of(preprocess, raw_shape)    a dataset's whole preprocessing (a resize,
                                              then per-channel scale and offset) as
                                              y = A x B_c^T + y0, read off by probing it and
                                              checked on random images

The matrices are the resize applied to the identity, so they reproduce it to float32
rounding (about 1e-6 on [0, 1] images).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# How far a probed map may stray from the preprocessing it stands for, on random images,
# relative to the outputs' scale.
TOLERANCE = 1e-5
# Probe images per call (a 512-pixel side probes 512 images of 512 x 512).
PROBE_BATCH = 32


def resize_matrix(size_in: int, size_out: int, method: str = "bilinear",
                  antialias: bool = False) -> np.ndarray:
    """float32 `[size_out, size_in]`: `tf.image.resize` along one axis, as a matrix."""
    identity = np.eye(size_in, dtype=np.float32)[:, :, None, None]        # [in, in, 1, 1]
    with tf.init_scope():  # eagerly, also while a graph (a Keras model, a tf.function) traces
        resized = tf.image.resize(identity, (size_out, 1), method=method, antialias=antialias)
        return resized.numpy()[:, :, 0, 0].T


def apply_separable(x, rows, columns, offset=None):
    """`rows [h, H] @ x_c @ columns_c^T (+ offset [h, w, C])` for each image and channel of
    `x [n, H, W, C]`; `columns` `[w, W]` or per channel `[C, w, W]`.

    Written with batched matrix products of equal batch sizes (one per channel), reshapes
    and transposes only: no broadcasting matmul, which runtimes disagree on."""
    channels, height = int(x.shape[-1]), int(np.shape(rows)[1])
    width = int(np.shape(columns)[-1])
    out_height, out_width = np.shape(rows)[0], np.shape(columns)[-2]
    columns = np.broadcast_to(columns, [channels, out_width, np.shape(columns)[-1]])
    t = tf.reshape(tf.transpose(x, [3, 0, 2, 1]), [channels, -1, height])    # [C, n*W, H]
    t = tf.matmul(t, tf.constant(np.ascontiguousarray(
        np.broadcast_to(np.transpose(rows), [channels, height, out_height]))))  # [C, n*W, h]
    t = tf.transpose(tf.reshape(t, [channels, -1, width, out_height]), [0, 1, 3, 2])
    t = tf.matmul(tf.reshape(t, [channels, -1, width]),
                  tf.constant(np.ascontiguousarray(np.swapaxes(columns, 1, 2))))  # [C, n*h, w]
    t = tf.transpose(tf.reshape(t, [channels, -1, out_height, out_width]), [1, 2, 3, 0])
    return t if offset is None else t + tf.constant(offset)


def matrix_resize(x, size, method: str = "bilinear", antialias: bool = False):
    """`tf.image.resize(x, size, method, antialias)` of `x [n, H, W, C]` (static H, W) as two
    matrix products."""
    height, width = int(x.shape[1]), int(x.shape[2])
    return apply_separable(x, resize_matrix(height, int(size[0]), method, antialias),
                           resize_matrix(width, int(size[1]), method, antialias))


class NotSeparable(ValueError):
    """A preprocessing that is not a separable linear map plus an offset."""


class SeparableMap:
    """`y = A x_c B_c^T + y0` per channel c: a preprocessing that resizes and then maps each
    channel affinely, as matrices (`of` finds them)."""

    def __init__(self, rows, columns, offset):
        self.rows, self.columns, self.offset = rows, columns, offset

    @classmethod
    def of(cls, preprocess, raw_shape, value_range=(0.0, 1.0), seed: int = 0) -> SeparableMap:
        """The map `preprocess` (raw images `[n, *raw_shape]` -> model inputs) is, read off by
        probing it with images of one bright row and of one bright column, then checked on
        random images in `value_range`; raises `NotSeparable` where it is not such a map."""
        height, width, channels = (int(d) for d in raw_shape)

        def run(images):
            return np.concatenate([np.asarray(preprocess(tf.constant(images[i:i + PROBE_BATCH])),
                                              np.float32)
                                   for i in range(0, len(images), PROBE_BATCH)])

        offset = run(np.zeros([1, height, width, channels], np.float32))[0]   # [h, w, C]
        if offset.ndim != 3 or offset.shape[-1] != channels:
            raise NotSeparable(f"it maps images {tuple(raw_shape)} to {offset.shape}")
        rows = np.zeros([height, height, width, channels], np.float32)
        rows[np.arange(height), np.arange(height)] = 1.0
        columns = np.zeros([width, height, width, channels], np.float32)
        columns[np.arange(width), :, np.arange(width)] = 1.0
        by_row = run(rows) - offset                                           # [H, h, w, C]
        by_column = run(columns) - offset                                     # [W, h, w, C]
        whole = run(np.ones([1, height, width, channels], np.float32))[0] - offset
        if abs(whole[0, 0, 0]) < 1e-6:
            raise NotSeparable("a uniform image does not change its first output pixel")
        # G(row i)[o, p, c] = A[o, i] beta[p, c], G(column j)[o, p, c] = a[o] s_c B[p, j],
        # G(1) = a[o] beta[p, c]: A' = G(row)[:, :, 0, 0] and B'_c = G(column)[0] / G(1)[0, 0, 0]
        # give A' x B'_c^T = G(x).
        separable = cls(by_row[:, :, 0, 0].T.copy(),
                        np.transpose(by_column[:, 0, :, :] / whole[0, 0, 0], [2, 1, 0]).copy(),
                        offset)
        low, high = value_range if value_range is not None else (0.0, 1.0)
        probe = np.random.default_rng(seed).uniform(low, high, [2, height, width, channels])
        expected = run(probe.astype(np.float32))
        got = separable(tf.constant(probe, tf.float32)).numpy()
        error = float(np.max(np.abs(got - expected)))
        scale = max(float(np.max(np.abs(expected))), 1e-6)
        if error > TOLERANCE * scale:
            raise NotSeparable(f"it differs from a resize and a per-channel affine map by "
                               f"{error:.3g} (at scale {scale:.3g})")
        return separable

    def __call__(self, images):
        return apply_separable(tf.convert_to_tensor(images, tf.float32), self.rows,
                               self.columns, self.offset)

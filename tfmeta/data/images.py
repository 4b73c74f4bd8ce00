"""What the natural-image datasets share: batched decoding and their preprocessing.

mini-ImageNet, tieredImageNet, CIFAR-FS and FC100 keep their examples as uint8 pixels
(`ClassImages.images`, `[n, H, W, 3]` at the files' own size: tieredImageNet is 16 GB
that way, 64 GB as float32) and give `ClassImages.transform`, which the episode sampler
applies after gathering an episode:

    transform(pixels) = preprocess(float32(pixels) / 255)
    preprocess(images) = (resize(images, image_size) - mean) / std       # per channel

`preprocess` (raw float32 in [0, 1] at the files' own size -> model inputs) is the same
function exported models apply to their inputs, so a served model and the trainer see
identical inputs. The resize (bilinear with antialiasing, as PIL's ANTIALIAS) runs only
when `image_size` differs from the files' size; `normalize=False` leaves values in [0, 1]
(Reptile-GAN generates images in that range).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfmeta.data import image_headers
from tfmeta.data.base import FewShotDataset
from tfmeta.data.classes import ClassImages
from tfmeta.errors import UserError
from tfmeta.ranges import Range

# Per-channel pixel mean and standard deviation (of 0..255 values) the field normalizes
# with, from MetaOptNet (Lee et al. 2019, github.com/kjunelee/MetaOptNet, data/*.py):
# mini_imagenet.py and tiered_imagenet.py use the first pair, CIFAR_FS.py and FC100.py
# the second.
IMAGENET_MEAN_STD = ((120.39586422, 115.59361427, 104.54012653),
                     (70.68188272, 68.27635443, 72.54505529))
CIFAR100_MEAN_STD = ((129.37731888, 124.10583864, 112.47758569),
                     (68.20947949, 65.43124043, 70.45866994))


def make_preprocess(raw_size, image_size: int | None, mean_std, normalize: bool = True):
    """Raw images `[n, *raw_size, C]` float32 in [0, 1] (`raw_size` a side or (H, W)) ->
    model inputs `[n, image_size, image_size, C]`: resized (bilinear with antialiasing) if
    the sizes differ (`image_size` None: kept), then `(x - mean) / std` per channel (unless
    `normalize=False` or `mean_std` is None)."""
    raw = (raw_size, raw_size) if isinstance(raw_size, int) else tuple(raw_size)
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise UserError(f"image_size must be a positive integer; got {image_size!r}.")
    size = raw if image_size is None else (image_size, image_size)
    normalize = normalize and mean_std is not None
    if normalize:
        mean = tf.constant(np.asarray(mean_std[0], np.float32) / 255.0)
        std = tf.constant(np.asarray(mean_std[1], np.float32) / 255.0)

    def preprocess(images):
        images = tf.convert_to_tensor(images, tf.float32)
        if size != raw:
            images = tf.image.resize(images, size, antialias=True)
        if normalize:
            images = (images - mean) / std
        return images

    return preprocess


def pixels_transform(preprocess: Callable):
    """`ClassImages.transform` for uint8 pixels: `preprocess(float32(pixels) / 255)`."""

    def transform(pixels):
        return preprocess(tf.cast(pixels, tf.float32) / 255.0)

    return transform


def _as_bytes(item) -> bytes:
    """One encoded image as bytes: the pickles hold them as uint8 arrays or bytes."""
    if isinstance(item, np.ndarray):
        return item.tobytes()
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    raise TypeError(f"an encoded image is bytes or a uint8 array; got {type(item).__name__}")


IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # what tf.io.decode_image reads

# The most pixels an image file may declare before it is decoded (`data.max_image_pixels`
# of `--dataset=folder`): Pillow's default `PIL.Image.MAX_IMAGE_PIXELS`, 1024 * 1024 * 1024
# // 4 // 3 = 89478485 (a 1 GB RGBA image, / 3), its guard against decompression bombs.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
IMAGE_PIXELS = Range(1, integer=True)


def check_max_image_pixels(max_image_pixels) -> None:
    if not IMAGE_PIXELS.contains(max_image_pixels):
        raise UserError(f"data.max_image_pixels must be {IMAGE_PIXELS.describe()}: the most "
                        f"pixels an image file may declare (default {MAX_IMAGE_PIXELS}, "
                        f"Pillow's); got {max_image_pixels!r}.")


def refuse_oversized(encoded: Sequence, describe: Callable[[int], str],
                     from_files: bool = False, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Reads the header of every image (`image_headers.read_header`: its first bytes, no
    decoding) and raises a ValueError naming the first that declares more than
    `max_image_pixels` pixels (every frame's, for a GIF), its size and how to raise the
    limit. A header that does not parse is left to the decoder's corrupt-image errors."""
    check_max_image_pixels(max_image_pixels)
    for i, item in enumerate(encoded):
        header = image_headers.read_header(item if from_files else _as_bytes(item))
        if header is not None and header.pixels > max_image_pixels:
            raise UserError(
                f"Image {describe(i)} declares {header.describe()} pixels ({header.pixels:,}), "
                f"more than the {max_image_pixels:,} an image may have (data.max_image_pixels, "
                "Pillow's guard against decompression bombs); shrink or remove it, or if it "
                f"is genuine raise the limit, e.g. --set=data.max_image_pixels={header.pixels}.")


def decode_image(data, size: int, channels: int = 3, crop_to_aspect_ratio: bool = False):
    """One encoded JPEG, PNG, BMP or GIF (its first frame), any mode, -> uint8
    `[size, size, channels]` (see `conform_image`).

    TensorFlow decodes them but for what `_decoded_in_numpy` tells by the first bytes: a
    paletted BMP (1, 2, 4 or 8 bits per pixel, which `tf.io.decode_bmp` refuses or, at 8
    bits, reads as grey without its palette) is decoded by `decode_paletted_bmp`; an
    animated WebP (whatever its name says) is refused as corrupt, since TensorFlow 2.21's
    decoder corrupts memory on one (the process aborts).
    """
    data = tf.convert_to_tensor(data, tf.string)
    image = tf.cond(_decoded_in_numpy(data), lambda: _numpy_decoded(data),
                    lambda: tf.io.decode_image(data, channels=0, expand_animations=False))
    return conform_image(image, size, channels, crop_to_aspect_ratio)


def _decoded_in_numpy(data):
    """Whether encoded `data` is a BMP that is paletted (or has an OS/2 header, which
    `tf.io.decode_bmp` misreads) or an animated WebP, from its first 32 bytes."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 32), "\0" * 32]), 0, 32)
    head = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int32)

    def starts(offset, text):
        return tf.reduce_all(tf.equal(head[offset:offset + len(text)], list(text.encode())))

    info_size = head[14] + head[15] * 256
    bits = head[28] + head[29] * 256
    paletted_bmp = starts(0, "BM") & ((info_size < 40) | (bits <= 8))
    animated_webp = (starts(0, "RIFF") & starts(8, "WEBPVP8X") &
                     (tf.bitwise.bitwise_and(head[20], image_headers.WEBP_ANIMATION_FLAG) > 0))
    return paletted_bmp | animated_webp


def _numpy_decoded(data):
    """`_decode_in_numpy` in the graph; its refusal fails the op (an assertion, which
    prints no Python traceback where a dataset skips the image)."""
    image, reason = tf.numpy_function(_decode_in_numpy, [data], (tf.uint8, tf.string),
                                      stateful=False)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(reason, ""), [reason])]):
        return tf.identity(image)


def _decode_in_numpy(data) -> tuple:
    """(pixels, b"") of what `_decoded_in_numpy` names, or (no pixels, why not); `data` as
    `tf.numpy_function` gives a string tensor (a 0-d object array) or as bytes."""
    data = data.item() if isinstance(data, np.ndarray) else bytes(data)
    try:
        header = image_headers.read_header(data)
        if header is not None and header.animated:
            raise UserError("an animated WebP, which TensorFlow cannot decode safely; save "
                            "its first frame as PNG")
        return decode_paletted_bmp(data), b""
    except ValueError as error:
        return np.zeros((0, 0, 1), np.uint8), str(error).encode()


BMP_COMPRESSIONS = {1: "RLE8", 2: "RLE4", 3: "BITFIELDS", 4: "JPEG", 5: "PNG"}


def decode_paletted_bmp(data: bytes) -> np.ndarray:
    """An uncompressed (BI_RGB) paletted BMP, 1, 2, 4 or 8 bits per pixel -> uint8
    `[H, W, 3]` of its palette's colours, `[H, W, 1]` when every palette colour is grey
    (as `tf.io.decode_image` gives grey images).

    Rows are stored bottom-up (top-down where the height is negative), each padded to a
    multiple of 4 bytes; an index past the palette is black. A compressed (RLE) BMP, one
    cut short, or any other is a ValueError saying what it is.
    """
    if len(data) < 26 or data[:2] != b"BM":
        raise UserError("not a BMP file")
    pixels_at, info_size = struct.unpack_from("<II", data, 10)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: uint16 sides, palette of RGB triples
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
        compression, colours, entry = 0, 0, 3
    elif info_size >= 40 and len(data) >= 50:
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
        colours, entry = struct.unpack_from("<I", data, 46)[0], 4
    else:
        raise UserError(f"a BMP with an info header of {info_size} bytes, which tfmeta does "
                        "not read; save it as PNG")
    if compression:
        raise UserError(f"a BMP compressed with {BMP_COMPRESSIONS.get(compression, compression)}"
                        ", which tfmeta does not decode; save it uncompressed or as PNG")
    if bits not in (1, 2, 4, 8):
        header = " with an OS/2 header" if info_size == 12 else ""
        raise UserError(f"a {bits}-bit BMP{header}, which tfmeta does not read; save it as PNG")
    if width <= 0 or height == 0:
        raise UserError(f"a BMP of {width}x{height} pixels")
    top_down, height = height < 0, abs(height)
    count = min(colours or 1 << bits, 1 << bits)
    palette_at = 14 + info_size
    row_bytes = (width * bits + 31) // 32 * 4
    need = max(palette_at + count * entry, pixels_at + row_bytes * height)
    if len(data) < need:
        raise UserError(f"a BMP cut short: its {width}x{height} pixels and {count} colours "
                        f"need {need} bytes, it has {len(data)}")
    palette = np.frombuffer(data, np.uint8, count * entry, palette_at).reshape(count, entry)
    palette = palette[:, 2::-1]  # stored blue, green, red (, reserved)
    grey = bool(np.all(palette == palette[:, :1]))
    palette = np.concatenate([palette, np.zeros((256 - count, 3), np.uint8)])
    rows = np.frombuffer(data, np.uint8, row_bytes * height, pixels_at).reshape(height,
                                                                                 row_bytes)
    if bits < 8:  # the leftmost pixel in the high bits
        rows = np.unpackbits(rows, axis=1).reshape(height, -1, bits) @ (
            1 << np.arange(bits - 1, -1, -1))
    indices = rows[:, :width] if top_down else rows[::-1, :width]
    image = palette[indices]
    return np.ascontiguousarray(image[..., :1] if grey else image)


def conform_image(image, size: int, channels: int = 3, crop_to_aspect_ratio: bool = False):
    """A uint8 image `[H, W, any channels]` -> `[size, size, channels]`.

    Modes are brought to `channels` as PIL's `convert` does: grey is repeated to RGB, RGB
    becomes grey by ITU-R 601 luma, alpha is dropped. `crop_to_aspect_ratio` first cuts
    the largest centred square (else the image is squashed, as Keras's
    `image_dataset_from_directory` does by default). Images of another size are resized
    with antialiasing (PIL's ANTIALIAS, as mini-ImageNet's resizing script) and rounded.
    """
    image.set_shape([None, None, None])
    present = tf.shape(image)[-1]
    colour = tf.cond(present >= 3, lambda: image[..., :3],
                     lambda: tf.repeat(image[..., :1], 3, axis=-1))  # grey (+ alpha)
    if channels == 1:
        grey = tf.image.rgb_to_grayscale(tf.cast(colour, tf.float32))
        grey = tf.cast(tf.clip_by_value(tf.round(grey), 0.0, 255.0), tf.uint8)
        image = tf.cond(present < 3, lambda: image[..., :1], lambda: grey)  # grey stays exact
    else:
        image = colour
    if crop_to_aspect_ratio:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top:top + side, left:left + side]

    def resized():
        big = tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(big), 0.0, 255.0), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [size, size]))
    return tf.reshape(tf.cond(same, lambda: image, resized), [size, size, channels])


def _decoded(encoded, size, channels, crop_to_aspect_ratio, from_files, batch_size):
    """Decodes in parallel batches, skipping what fails; returns (pixels of the images that
    decoded, in order, and the indices of those that did not)."""
    if from_files:
        items = tf.data.Dataset.from_tensor_slices([os.fspath(p) for p in encoded])
    else:
        items = tf.data.Dataset.from_generator(
            lambda: (_as_bytes(item) for item in encoded),
            output_signature=tf.TensorSpec([], tf.string))

    def decode(index, item):
        data = tf.io.read_file(item) if from_files else item
        return index, decode_image(data, size, channels, crop_to_aspect_ratio)

    stream = tf.data.Dataset.zip(tf.data.Dataset.range(len(encoded)), items).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors().batch(
        batch_size)
    out = np.empty((len(encoded), size, size, channels), np.uint8)
    kept = np.zeros(len(encoded), bool)
    count = 0
    for index, pixels in stream.as_numpy_iterator():
        out[count:count + len(index)] = pixels
        kept[index] = True
        count += len(index)
    return out[:count] if count < len(encoded) else out, np.flatnonzero(~kept)


def decode_images(encoded: Sequence, size: int, describe: Callable[[int], str],
                  from_files: bool = False, batch_size: int = 256, channels: int = 3,
                  crop_to_aspect_ratio: bool = False,
                  max_image_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decodes JPEG, PNG, BMP or GIF images with TensorFlow, in parallel batches (see
    `decode_image`), each header read first (`refuse_oversized`).

    Args:
      encoded: one item per image: its encoded bytes (or uint8 array of them), or with
        `from_files` the path of its file.
      size: images are `[size, size, channels]`; others are resized to it.
      describe: `i -> name of image i` for error messages (a file, or an index in a pickle).
      from_files: read each item's file.
      batch_size: images decoded per step.
      channels, crop_to_aspect_ratio: see `decode_image`.
      max_image_pixels: the most pixels an image may declare (`refuse_oversized`).

    Returns uint8 `[len(encoded), size, size, channels]`, in the order of `encoded`. Raises
    a ValueError naming the first image that declares too many pixels, or else the first
    that does not decode (FileNotFoundError: that is missing).
    """
    pixels, bad = decode_images_skipping(encoded, size, from_files, batch_size, channels,
                                         crop_to_aspect_ratio, max_image_pixels, describe)
    if len(bad):
        raise_for_bad_image(encoded, bad, describe, from_files)
    return pixels


def decode_images_skipping(encoded: Sequence, size: int, from_files: bool = False,
                           batch_size: int = 256, channels: int = 3,
                           crop_to_aspect_ratio: bool = False,
                           max_image_pixels: int = MAX_IMAGE_PIXELS,
                           describe: Callable[[int], str] | None = None) -> tuple:
    """`decode_images` that skips what does not decode: (uint8 pixels of the images that
    decoded, in order; the indices of the others). An image that declares more than
    `max_image_pixels` pixels is not skipped: it is refused (`refuse_oversized`), since it
    is no corrupt file but the limit's to judge. `describe` names image `i` in that error
    (default: its file, or "number i")."""
    if not len(encoded):
        return np.empty((0, size, size, channels), np.uint8), np.zeros(0, np.int64)
    if describe is None:
        describe = (lambda i: os.fspath(encoded[i])) if from_files else (lambda i: f"number {i}")
    refuse_oversized(encoded, describe, from_files, max_image_pixels)
    return _decoded(encoded, size, channels, crop_to_aspect_ratio, from_files, batch_size)


def decode_failure(item, from_files: bool = False) -> str | None:
    """Why one image does not decode (the decoder's first line), or None if it does."""
    try:
        data = tf.io.read_file(os.fspath(item)) if from_files else _as_bytes(item)
        if _decoded_in_numpy(data):
            return _decode_in_numpy(tf.convert_to_tensor(data).numpy())[1].decode() or None
        decode_image(data, 8)
    except (tf.errors.OpError, TypeError) as error:
        reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
        reason = re.sub(r"\{\{[^}]*\}\}|\[Op:[^]]*\].*", "", reason).strip()
        return reason.splitlines()[0] if reason else type(error).__name__
    return None


def raise_for_bad_image(encoded, bad, describe, from_files):
    """Raises for the first of the images `bad` (indices) that is missing or does not
    decode alone, naming it and how many others failed."""
    others = f" ({len(bad) - 1} other image(s) fail too)" if len(bad) > 1 else ""
    for i in bad:
        if from_files and not os.path.isfile(encoded[i]):
            raise FileNotFoundError(f"Missing image {describe(i)}{others}: it is listed but "
                                    "not there; restore the file or get the dataset again.")
        reason = decode_failure(encoded[i], from_files)
        if reason is not None:
            raise UserError(f"Corrupt image {describe(i)}{others}: it does not decode as "
                            f"JPEG, PNG, BMP or GIF ({reason}). Replace it or get the "
                            "dataset again.")
    raise RuntimeError(f"Images {list(bad)[:5]} failed to decode in a batch but decode "
                       "alone; please report this.")


def group_by_class(labels: np.ndarray) -> tuple:
    """(order, classes, counts): `order` lists example indices class after class (stable,
    classes in increasing label order), `classes` the labels present, `counts` per class."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    classes, counts = np.unique(labels, return_counts=True)
    return order, classes, counts


def class_images(images: np.ndarray, counts, names, transform=None,
                 groups=None) -> ClassImages:
    """`ClassImages` over `images` already stored class after class (no copy, which matters
    for tieredImageNet's 9.5 GB training split); `counts[c]` examples of class `names[c]`,
    of group `groups[c]` (None: the classes have no groups)."""
    counts = np.asarray(counts, np.int64)
    if counts.sum() != len(images) or len(counts) != len(names) or not len(counts):
        raise UserError(f"{len(names)} class names and counts summing to {counts.sum()} do "
                        f"not describe {len(images)} images.")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ClassImages(images, offsets, counts, tuple(str(n) for n in names), transform,
                       class_groups=groups)


def check_disjoint_classes(split_classes: dict, where: str,
                           fix: str = "Use the official split files.") -> None:
    """Few-shot splits are by class: a class in two splits leaks training classes into
    evaluation, so it is refused, naming the class and the splits."""
    seen = {}
    for split, classes in split_classes.items():
        for name in classes:
            if name in seen:
                raise UserError(f"Class {name!r} is in both the {seen[name]!r} and the "
                                f"{split!r} split of {where}; few-shot splits must not share "
                                f"classes. {fix}")
            seen[name] = split


def merge_splits(first: ClassImages, second: ClassImages) -> ClassImages:
    """The classes of `first` then those of `second` (train + val for `train_on_val`), with
    their groups where both have groups."""
    grouped = first.class_groups is not None and second.class_groups is not None
    return class_images(np.concatenate([first.images, second.images]),
                        np.concatenate([first.class_counts, second.class_counts]),
                        first.class_names + second.class_names, first.transform,
                        first.class_groups + second.class_groups if grouped else None)


def image_dataset(name: str, title: str, splits: dict, train_on_val: bool, data_dir: str,
                  source_files, raw_shape, preprocess):
    """The `FewShotDataset` of an image benchmark's decoded `splits` (train + val merged for
    training when `train_on_val`), described by `title` and the split sizes."""
    if train_on_val:
        splits["train"] = merge_splits(splits["train"], splits["val"])
    description = (f"{title} from {data_dir}{', training on train + val' if train_on_val else ''}"
                   ": " + ", ".join(f"{s} {c.num_classes} classes / {len(c.images)} images"
                                    for s, c in splits.items()))
    return FewShotDataset(name, splits, raw_shape, preprocess, description,
                          data_dir=os.path.abspath(data_dir), source_files=tuple(source_files))


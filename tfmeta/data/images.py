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
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfmeta.data.episodes import ClassImages

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
        raise ValueError(f"image_size must be a positive integer; got {image_size!r}.")
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


def decode_image(data, size: int, channels: int = 3, crop_to_aspect_ratio: bool = False):
    """One encoded JPEG, PNG, BMP or GIF (its first frame), any mode, -> uint8
    `[size, size, channels]` (see `conform_image`)."""
    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    return conform_image(image, size, channels, crop_to_aspect_ratio)


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
                  crop_to_aspect_ratio: bool = False) -> np.ndarray:
    """Decodes JPEG, PNG, BMP or GIF images with TensorFlow, in parallel batches (see
    `decode_image`).

    Args:
      encoded: one item per image: its encoded bytes (or uint8 array of them), or with
        `from_files` the path of its file.
      size: images are `[size, size, channels]`; others are resized to it.
      describe: `i -> name of image i` for error messages (a file, or an index in a pickle).
      from_files: read each item's file.
      batch_size: images decoded per step.
      channels, crop_to_aspect_ratio: see `decode_image`.

    Returns uint8 `[len(encoded), size, size, channels]`, in the order of `encoded`. Raises
    a ValueError naming the first image that does not decode (FileNotFoundError: that is
    missing).
    """
    pixels, bad = decode_images_skipping(encoded, size, from_files, batch_size, channels,
                                         crop_to_aspect_ratio)
    if len(bad):
        raise_for_bad_image(encoded, bad, describe, from_files)
    return pixels


def decode_images_skipping(encoded: Sequence, size: int, from_files: bool = False,
                           batch_size: int = 256, channels: int = 3,
                           crop_to_aspect_ratio: bool = False) -> tuple:
    """`decode_images` that skips what does not decode: (uint8 pixels of the images that
    decoded, in order; the indices of the others)."""
    if not len(encoded):
        return np.empty((0, size, size, channels), np.uint8), np.zeros(0, np.int64)
    return _decoded(encoded, size, channels, crop_to_aspect_ratio, from_files, batch_size)


def decode_failure(item, from_files: bool = False) -> str | None:
    """Why one image does not decode (the decoder's first line), or None if it does."""
    try:
        data = tf.io.read_file(os.fspath(item)) if from_files else _as_bytes(item)
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
            raise ValueError(f"Corrupt image {describe(i)}{others}: it does not decode as "
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
        raise ValueError(f"{len(names)} class names and counts summing to {counts.sum()} do "
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
                raise ValueError(f"Class {name!r} is in both the {seen[name]!r} and the "
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
    from tfmeta.data.base import FewShotDataset

    if train_on_val:
        splits["train"] = merge_splits(splits["train"], splits["val"])
    description = (f"{title} from {data_dir}{', training on train + val' if train_on_val else ''}"
                   ": " + ", ".join(f"{s} {c.num_classes} classes / {len(c.images)} images"
                                    for s, c in splits.items()))
    return FewShotDataset(name, splits, raw_shape, preprocess, description,
                          data_dir=os.path.abspath(data_dir), source_files=tuple(source_files))


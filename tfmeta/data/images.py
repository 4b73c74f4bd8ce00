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


def make_preprocess(raw_size: int, image_size: int, mean_std, normalize: bool = True):
    """Raw images `[n, raw_size, raw_size, 3]` float32 in [0, 1] -> model inputs
    `[n, image_size, image_size, 3]`: resized if the sizes differ, then `(x - mean) / std`
    per channel (unless `normalize=False`)."""
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer; got {image_size!r}.")
    mean = tf.constant(np.asarray(mean_std[0], np.float32) / 255.0)
    std = tf.constant(np.asarray(mean_std[1], np.float32) / 255.0)

    def preprocess(images):
        images = tf.convert_to_tensor(images, tf.float32)
        if image_size != raw_size:
            images = tf.image.resize(images, (image_size, image_size), antialias=True)
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


def _decode_one(data, size: int):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])

    def resized():
        # Files at another size (e.g. Ravi & Larochelle's images before their resizing
        # script ran) are brought to `size` as that script does (PIL's ANTIALIAS).
        big = tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(big), 0.0, 255.0), tf.uint8)

    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [size, size]))
    return tf.reshape(tf.cond(same, lambda: image, resized), [size, size, 3])


def decode_images(encoded: Sequence, size: int, describe: Callable[[int], str],
                  from_files: bool = False, batch_size: int = 256) -> np.ndarray:
    """Decodes JPEG or PNG images with TensorFlow, in parallel batches.

    Args:
      encoded: one item per image: its encoded bytes (or uint8 array of them), or with
        `from_files` the path of its file.
      size: images are `[size, size, 3]`; others are resized to it.
      describe: `i -> name of image i` for error messages (a file, or an index in a pickle).
      from_files: read each item's file.
      batch_size: images decoded per step.

    Returns uint8 `[len(encoded), size, size, 3]`, in the order of `encoded`. Raises a
    ValueError naming the first image that is missing or does not decode.
    """
    out = np.empty((len(encoded), size, size, 3), np.uint8)
    if not len(encoded):
        return out

    def items():
        for item in encoded:
            yield item if from_files else _as_bytes(item)

    def decode(item):
        return _decode_one(tf.io.read_file(item) if from_files else item, size)

    stream = tf.data.Dataset.from_generator(
        items, output_signature=tf.TensorSpec([], tf.string)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    start = 0
    iterator = iter(stream)
    while start < len(encoded):
        try:
            batch = next(iterator).numpy()
        except (tf.errors.OpError, TypeError):
            _raise_for_bad_image(encoded, start, min(start + batch_size, len(encoded)),
                                 size, describe, from_files)
            raise  # every image of the batch decodes alone: not an image problem
        out[start:start + len(batch)] = batch
        start += len(batch)
    return out


def _raise_for_bad_image(encoded, start, stop, size, describe, from_files):
    """Decodes images start..stop-1 one at a time and raises for the first bad one."""
    for i in range(start, stop):
        if from_files and not os.path.isfile(encoded[i]):
            raise FileNotFoundError(f"Missing image {describe(i)}: the split file names it; "
                                    "restore the file or get the dataset again.")
        try:
            data = tf.io.read_file(encoded[i]) if from_files else _as_bytes(encoded[i])
            _decode_one(data, size)
        except (tf.errors.OpError, TypeError) as error:
            reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
            raise ValueError(f"Corrupt image {describe(i)}: it does not decode as JPEG or PNG "
                             f"({reason.strip().splitlines()[0]}). Replace it or get the "
                             "dataset again.") from None


def group_by_class(labels: np.ndarray) -> tuple:
    """(order, classes, counts): `order` lists example indices class after class (stable,
    classes in increasing label order), `classes` the labels present, `counts` per class."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    classes, counts = np.unique(labels, return_counts=True)
    return order, classes, counts


def class_images(images: np.ndarray, counts, names, transform=None) -> ClassImages:
    """`ClassImages` over `images` already stored class after class (no copy, which matters
    for tieredImageNet's 9.5 GB training split); `counts[c]` examples of class `names[c]`."""
    counts = np.asarray(counts, np.int64)
    if counts.sum() != len(images) or len(counts) != len(names) or not len(counts):
        raise ValueError(f"{len(names)} class names and counts summing to {counts.sum()} do "
                         f"not describe {len(images)} images.")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ClassImages(images, offsets, counts, tuple(str(n) for n in names), transform)


def merge_splits(first: ClassImages, second: ClassImages) -> ClassImages:
    """The classes of `first` then those of `second` (train + val for `train_on_val`)."""
    return class_images(np.concatenate([first.images, second.images]),
                        np.concatenate([first.class_counts, second.class_counts]),
                        first.class_names + second.class_names, first.transform)


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


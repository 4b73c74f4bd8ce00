"""A user's own images as a `FewShotDataset`: what `--dataset=folder`, `--dataset=tfds:NAME`
and the Python constructors (`tfmeta.data.from_arrays`, `from_tf_dataset`, `from_folder`)
share.

    data = tfmeta.data.from_arrays(images, labels)          # uint8 [n, H, W(, C)], [n]
    train = episode_dataset(data, EpisodeShape(ways=5, shots=1, queries=15), meta_batch_size=4)

Few-shot splits are by class: the classes (not the images) are split into train, val and
test by seeded fractions (`split_fractions`, default 0.64 / 0.16 / 0.20, mini-ImageNet's
64 / 16 / 20), or as `class_split` names them. Classes with groups (`class_groups`: a
folder's `group/class` folders, `tfmeta.data.folder`'s `class_depth`) are split by whole
groups (`split_groups`), so the test classes come from groups never seen in training. The
trainer records the split in `config.json`, so evaluation and export use the same classes
even if the seed's defaults change.

Pixels are stored as uint8, like the image benchmarks', and preprocessed per episode:

    transform(pixels) = preprocess(float32(pixels) / 255)
    preprocess(images) = (resize(images, image_size) - mean) / std     # per channel

with `mean` and `std` of the training classes' pixels (`normalize=False`: values stay in
[0, 1]). Exported models take `[n, H, W, C]` float32 in [0, 1] and apply `preprocess`.

A class with fewer images than an episode takes of each is left out of that split's
episodes with a warning naming it (`ClassImages.drop_small_classes`).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from tfmeta.data import images as image_utils
from tfmeta.data.base import FewShotDataset
from tfmeta.errors import UserError
from tfmeta.ranges import IMAGE_SIZE

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.64, 0.16, 0.20)
CHANNELS = (1, 3)


# ------------------------------------------------------------------------- options
def check_image_options(image_size, channels=None) -> None:
    IMAGE_SIZE.check("data.image_size", image_size)
    if channels is not None and channels not in CHANNELS:
        raise UserError(f"data.channels must be 1 (grey) or 3 (RGB); got {channels!r}.")


def check_fractions(fractions) -> tuple:
    """`fractions` as three floats > 0 (train, val, test) that sum to 1, or a ValueError."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise UserError(f"data.split_fractions must be three numbers > 0 that sum to 1 "
                        f"(train, val, test), e.g. (0.64, 0.16, 0.2); got {fractions!r}.")
    return values


# --------------------------------------------------------------------- the split
def split_classes(names, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> dict:
    """{"train", "val", "test": sorted class names}: the classes shuffled by `seed` and cut
    by `fractions` (rounded to whole classes, at least one per split)."""
    return cut_classes(names, dict(zip(SPLITS, check_fractions(fractions))), seed)


def cut_classes(names, weights: dict, seed: int = 0, what: str = "classes") -> dict:
    """{split: sorted class names}: `names` shuffled by `seed` and cut in the proportions
    `weights` ({split: weight > 0}, in order), each split getting at least one class (or
    group: `what` names them in the error)."""
    names = sorted(set(names))
    splits = list(weights)
    if len(names) < len(splits):
        raise UserError(f"Splitting {what} into {', '.join(splits)} needs at least "
                        f"{len(splits)} {what}; got {len(names)} ({names}). Add {what}, or "
                        "give the split as folders train/, val/, test/.")
    total = sum(weights.values())
    counts = [max(1, round(weights[s] / total * len(names))) for s in splits[:-1]]
    while sum(counts) > len(names) - 1:  # the last split keeps at least one
        counts[int(np.argmax(counts))] -= 1
    order = np.random.default_rng(seed).permutation(len(names))
    cuts = np.cumsum([0, *counts, len(names) - sum(counts)])
    return {split: sorted(names[i] for i in order[cuts[k]:cuts[k + 1]])
            for k, split in enumerate(splits)}


def split_groups(class_groups: dict, weights: dict, seed: int = 0) -> dict:
    """{split: sorted class names}: whole groups (`class_groups`: {class name: group}) cut
    by `cut_classes` in the proportions `weights`, so no two splits share a group; the
    fractions are of groups, not of classes."""
    by_group = cut_classes(class_groups.values(), weights, seed, what="groups")
    return {split: sorted(name for name, group in class_groups.items() if group in groups)
            for split, groups in by_group.items()}


def check_class_split(class_split, names) -> dict:
    """`class_split` ({"train", "val", "test": [class names]}, e.g. from config.json) checked
    against the classes present: every split named, every class known, no class in two."""
    class_split = class_split.to_dict() if hasattr(class_split, "to_dict") else class_split
    if not isinstance(class_split, dict) or set(class_split) != set(SPLITS):
        raise UserError(f"data.class_split must map each of {list(SPLITS)} to a list of "
                        f"class names; got {class_split!r}.")
    known = set(names)
    result = {}
    for split in SPLITS:
        listed = [str(n) for n in class_split[split]]
        if not listed:
            raise UserError(f"data.class_split names no class for the {split!r} split.")
        missing = [n for n in listed if n not in known]
        if missing:
            raise UserError(f"The {split!r} split names {len(missing)} class(es) the data does "
                            f"not have, e.g. {missing[:3]}; the data's classes are "
                            f"{sorted(known)[:10]}{' ...' if len(known) > 10 else ''}. Fix "
                            "data.class_split, or pass the data the run was trained on.")
        result[split] = sorted(listed)
    image_utils.check_disjoint_classes(result, "data.class_split",
                                       "Name each class in one split only.")
    return result


# ------------------------------------------------------------------- the dataset
def channel_statistics(pixels: np.ndarray, chunk: int = 4096) -> tuple:
    """Per-channel (mean, std) of uint8 `pixels [n, H, W, C]`, in 0..255 units."""
    channels = pixels.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, len(pixels), chunk):
        block = pixels[start:start + chunk].reshape(-1, channels).astype(np.float64)
        total += block.sum(0)
        squares += np.square(block).sum(0)
    count = max(1, pixels.size // channels)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return tuple(mean), tuple(np.maximum(std, 1.0))  # a constant channel is not blown up


def build_dataset(name: str, pixels: np.ndarray, labels: np.ndarray, class_names, *,
                  class_split=None, split_fractions=DEFAULT_FRACTIONS, split_seed: int = 0,
                  train_on_val: bool = False, normalize: bool = True,
                  image_size: int | None = None, source: str = "", data_dir=None,
                  source_files=(), decoding=None, class_groups=None):
    """The `FewShotDataset` of uint8 `pixels [n, H, W, C]` whose image `i` is of class
    `class_names[labels[i]]`, split by class (see the module docstring); `class_groups`,
    one group name per class (or None), are split by group when no `class_split` is given
    and become the splits' `ClassImages.class_groups`."""
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise UserError(f"Class names must be distinct; got {names}.")
    labels = np.asarray(labels, np.int64)
    present = np.unique(labels)
    group_of = None if class_groups is None else dict(zip(names, map(str, class_groups)))
    if class_split is not None:
        split = check_class_split(class_split, [names[i] for i in present])
    elif group_of is not None:
        split = split_groups({names[i]: group_of[names[i]] for i in present},
                             dict(zip(SPLITS, check_fractions(split_fractions))), split_seed)
    else:
        split = split_classes([names[i] for i in present], split_fractions, split_seed)
    index = {n: i for i, n in enumerate(names)}
    order, groups, counts = image_utils.group_by_class(labels)
    starts = dict(zip(groups.tolist(), np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()))
    sizes = dict(zip(groups.tolist(), counts.tolist()))

    def split_indices(split_names):
        return np.concatenate([order[starts[index[n]]:starts[index[n]] + sizes[index[n]]]
                               for n in split_names])

    training = split["train"] + (split["val"] if train_on_val else [])
    mean_std = channel_statistics(pixels[split_indices(training)]) if normalize else None
    preprocess = image_utils.make_preprocess(pixels.shape[1:3], image_size, mean_std)
    transform = image_utils.pixels_transform(preprocess)
    splits = {}
    for split_name, split_names in split.items():
        chosen = split_indices(split_names)
        splits[split_name] = image_utils.class_images(
            pixels[chosen], [sizes[index[n]] for n in split_names], split_names, transform,
            None if group_of is None else [group_of[n] for n in split_names])
        splits[split_name] = _droppable(splits[split_name])
    if train_on_val:
        splits["train"] = _droppable(image_utils.merge_splits(splits["train"], splits["val"]))
    by_group = group_of is not None and class_split is None
    if by_group:
        logging.info("%s: split by group, whole groups of classes into train, val and test, "
                     "so the test classes are of groups unseen in training.", source)

    def size_of(classes):
        count = len(set(classes.class_groups or ()))
        groups = f" in {count} group{'s' if count > 1 else ''}" if count else ""
        return f"{classes.num_classes} classes{groups} / {len(classes.images)} images"

    description = (f"{source}: {len(pixels)} images of {len(present)} classes at "
                   f"{'x'.join(map(str, pixels.shape[1:]))}"
                   f"{', split by group (test groups unseen in training)' if by_group else ''}"
                   f"{', training on train + val' if train_on_val else ''}; " + ", ".join(
                       f"{s} {size_of(c)}" for s, c in splits.items()))
    return FewShotDataset(name, splits, tuple(pixels.shape[1:]), preprocess, description,
                          data_dir=data_dir, source_files=tuple(source_files),
                          chosen_split=split, decoding=decoding)


def _droppable(classes):
    return dataclasses.replace(classes, drop_small_classes=True)


# ------------------------------------------------------------- arrays, tf.data
def as_pixels(images, what: str = "images") -> np.ndarray:
    """uint8 `[n, H, W, C]` from uint8 (0..255) or float (0..1) images `[n, H, W(, C)]`."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise UserError(f"{what} must be a non-empty array [n, H, W] or [n, H, W, C] with C "
                        f"1 or 3; got shape {images.shape}.")
    if images.dtype == np.uint8:
        return images
    scale = pixel_scale(images.dtype, what)
    check_pixel_values(images.dtype, np.all(np.isfinite(images)), images.min(), images.max(),
                       what)
    return np.round(images.astype(np.float64) * scale).astype(np.uint8)


def pixel_scale(dtype, what: str = "images") -> float:
    """What images of `dtype` are multiplied by to be 0..255: 1 for integers (0..255),
    255 for floats (0..1); a ValueError for any other dtype."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 1.0
    if np.issubdtype(dtype, np.floating):
        return 255.0
    raise UserError(f"{what} must be uint8 (0..255) or float (0..1); got {dtype}.")


def check_pixel_values(dtype, finite: bool, low_seen, high_seen, what: str = "images") -> None:
    """A ValueError unless images of `dtype`, all finite and with values in [`low_seen`,
    `high_seen`], are in range: integers in [0, 255], floats in [0, 1]."""
    integer = pixel_scale(dtype, what) == 1.0
    low, high = (0, 255) if integer else (0.0, 1.0)
    if not finite or low_seen < low or high_seen > high:
        raise UserError(f"{what} of dtype {np.dtype(dtype)} must be in [{low}, {high}] "
                        f"({'0..255 integers' if integer else 'floats in 0..1'}); got "
                        f"values in [{low_seen}, {high_seen}].")


def label_indices(labels, class_names=None) -> tuple:
    """(int64 index per example, class names): string labels are their own names (sorted);
    integer labels index `class_names` if given, else are named by their value."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UserError(f"labels must be one label per image, shape [n]; got {labels.shape}.")
    if labels.dtype.kind in "USO":
        names, indices = np.unique(labels.astype(str), return_inverse=True)
        return indices.astype(np.int64), [str(n) for n in names]
    if labels.dtype.kind not in "iu":
        raise UserError(f"labels must be integers or strings; got {labels.dtype}.")
    if class_names is not None:
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise UserError(f"labels must be in 0..{len(class_names) - 1} to index the "
                            f"{len(class_names)} class_names; got {labels.min()}.."
                            f"{labels.max()}.")
        return labels.astype(np.int64), [str(n) for n in class_names]
    values, indices = np.unique(labels, return_inverse=True)
    return indices.astype(np.int64), [str(v) for v in values]


def from_arrays(images, labels, class_names=None, image_size: int | None = None,
                split_fractions=DEFAULT_FRACTIONS, split_seed: int = 0, class_split=None,
                train_on_val: bool = False, normalize: bool = True, name: str = "arrays"):
    """A `FewShotDataset` of in-memory images and their labels, split by class.

    Args:
      images: `[n, H, W]` or `[n, H, W, C]` (C 1 or 3), uint8 0..255 or float 0..1.
      labels: `[n]` integers or strings.
      class_names: names of integer labels 0..C-1 (default: the labels' values).
      image_size: the model's input side; images are resized to it in the graph (default:
        their own size). Exported models take the images' own size.
      split_fractions, split_seed, class_split, train_on_val, normalize: see the module
        docstring.
    """
    pixels = as_pixels(images)
    indices, names = label_indices(labels, class_names)
    if len(indices) != len(pixels):
        raise UserError(f"{len(pixels)} images but {len(indices)} labels; give one label "
                        "per image.")
    if image_size is not None:
        check_image_options(image_size)
    height, width, channels = pixels.shape[1:]
    decoding = ({"image_size": height, "channels": channels, "crop_to_aspect_ratio": False}
                if height == width else None)
    return build_dataset(name, pixels, indices, names, class_split=class_split,
                         split_fractions=split_fractions, split_seed=split_seed,
                         train_on_val=train_on_val, normalize=normalize,
                         image_size=image_size, source=f"{name} (in memory)",
                         decoding=decoding)


def from_tf_dataset(dataset: tf.data.Dataset, image_size: int | None = None,
                    channels: int | None = None, class_names=None, batch_size: int = 256,
                    **options):
    """A `FewShotDataset` of a `tf.data.Dataset` of `(image, label)` pairs (images uint8 or
    float in [0, 1], `[H, W(, C)]`; labels integers or strings), read once into memory.

    Images of different sizes need `image_size`: each is then brought to
    `[image_size, image_size, channels]` as image files are (`images.decode_image`), its
    values checked first as `as_pixels` checks them (integers in 0..255, floats in 0..1,
    no NaN: the same error), never clipped into range. `options` are `from_arrays`'s.
    """
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise UserError(f"from_tf_dataset takes a dataset of (image, label) pairs; its "
                        f"elements are {spec}.")
    dtype = getattr(spec[0], "dtype", None)
    conformed = image_size is not None
    if conformed:
        check_image_options(image_size, channels)
        if dtype != tf.uint8:
            pixel_scale(getattr(dtype, "as_numpy_dtype", object))  # refuses other dtypes
        dataset = dataset.map(_conform_checked(image_size, channels or 3),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images, labels, lows, highs, finite = [], [], [], [], []
    try:
        for batch in dataset.batch(batch_size).as_numpy_iterator():
            images.append(batch[0])
            labels.append(batch[1])
            if conformed:
                lows.append(batch[2])
                highs.append(batch[3])
                finite.append(batch[4])
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        raise UserError(f"The dataset's images could not be batched ({str(error).splitlines()[0]}"
                        "); images of different sizes need image_size=...") from None
    if not images:
        raise UserError("The tf.data.Dataset is empty; it must yield (image, label) pairs.")
    if conformed and dtype != tf.uint8:  # as `as_pixels` checks them without image_size
        lows, highs = np.concatenate(lows), np.concatenate(highs)
        check_pixel_values(dtype.as_numpy_dtype, bool(np.concatenate(finite).all()),
                           lows.min(), highs.max())
    labels = np.concatenate(labels)
    if labels.dtype == object:
        labels = np.array([v.decode() if isinstance(v, bytes) else v for v in labels])
    return from_arrays(np.concatenate(images), labels, class_names, **options)


def _conform_checked(image_size: int, channels: int):
    """`(image, label) -> (conformed image, label, its lowest and highest value, whether all
    are finite)`: the values are those before any scaling, for `check_pixel_values`
    (NaN is reported as the lowest and highest, as NumPy's min and max do)."""

    def conform(image, label):
        image = tf.convert_to_tensor(image)
        if image.shape.rank == 2:
            image = image[..., None]
        if image.dtype == tf.uint8:
            pixels, low, high, finite = image, tf.constant(0, tf.uint8), \
                tf.constant(255, tf.uint8), tf.constant(True)
        else:
            low, high = tf.reduce_min(image), tf.reduce_max(image)
            if image.dtype.is_floating:
                finite = tf.reduce_all(tf.math.is_finite(image))
                nan = tf.reduce_any(tf.math.is_nan(image))
                low = tf.where(nan, tf.constant(np.nan, image.dtype), low)
                high = tf.where(nan, tf.constant(np.nan, image.dtype), high)
            else:
                finite = tf.constant(True)
            scale = pixel_scale(image.dtype.as_numpy_dtype)
            values = tf.cast(image, tf.float64) * scale
            pixels = tf.cast(tf.round(tf.clip_by_value(values, 0.0, 255.0)), tf.uint8)
        return (image_utils.conform_image(pixels, image_size, channels), label, low, high,
                finite)

    return conform

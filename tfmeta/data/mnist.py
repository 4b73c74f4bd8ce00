"""MNIST (LeCun et al. 1998) from the standard `mnist.npz`, split by digit for few-shot tasks.

Reads `<data_dir>/mnist.npz` (default folder: `~/.keras/datasets`, where
`keras.datasets.mnist.load_data()` saves it) with the keys `x_train` uint8 `[60000, 28, 28]`,
`y_train` `[60000]`, `x_test` `[10000, 28, 28]`, `y_test` `[10000]`. If the file is absent
and tensorflow-datasets has `mnist` prepared under `tfds_dir` (or `use_tfds=True`), that
copy is read instead; `download_missing=True` fetches the file.

Splits (`split=`):
  * "generation" (default; FIGR, Clouatre and Demers 2019): train on digits 0-8 (training
    images), hold out digit 9: validation uses the 9s of the training images, test the 9s
    of the test images.
  * "classification" (for N-way episodes, e.g. Reptile): ten classes cannot give three
    disjoint splits of five, so train on digits 0-4 (training images) and validate and
    test on digits 5-9 (validation: training images; test: test images). Test classes
    are never trained on; validation and test share classes but not images.

Preprocessing (also inside exported models): identity at 28x28 (strokes 1, background 0),
else a bilinear resize to `image_size`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfmeta.data import base
from tfmeta.data.base import FewShotDataset, download_file
from tfmeta.data.classes import ClassImages
from tfmeta.errors import UserError

FILE_NAME = "mnist.npz"
URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".keras", "datasets")
RAW_SHAPE = (28, 28, 1)
# split -> {split name: (source part, digits)}
SPLITS = {
    "generation": {"train": ("train", tuple(range(9))), "val": ("train", (9,)),
                   "test": ("test", (9,))},
    "classification": {"train": ("train", tuple(range(5))), "val": ("train", tuple(range(5, 10))),
                       "test": ("test", tuple(range(5, 10)))},
}
KEYS = ("x_train", "y_train", "x_test", "y_test")


def make_preprocess(image_size: int = 28):
    """Decoded images `[n, 28, 28, 1]` in [0, 1] -> model inputs `[n, s, s, 1]`."""

    def preprocess(images):
        images = tf.convert_to_tensor(images, tf.float32)
        if image_size == RAW_SHAPE[0]:
            return images
        return tf.clip_by_value(tf.image.resize(images, (image_size, image_size)), 0.0, 1.0)

    return preprocess


def read_npz(path: str) -> dict:
    """The four arrays of an `mnist.npz`, checked: images uint8 `[n, 28, 28]`, labels 0..9."""
    arrays = base.read_npz(path, f"delete it and download it again from {URL}.")
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path} has keys {sorted(arrays)}; an mnist.npz needs {list(KEYS)} "
                        f"(missing {missing}). Use the standard file from {URL}.")
    for part in ("train", "test"):
        images, labels = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if images.ndim != 3 or images.shape[1:] != RAW_SHAPE[:2]:
            raise UserError(f"x_{part} in {path} has shape {images.shape}; MNIST images are "
                            f"[n, 28, 28].")
        if labels.shape != (len(images),):
            raise UserError(f"y_{part} in {path} has shape {labels.shape}; expected "
                            f"({len(images)},), one label per image.")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise UserError(f"y_{part} in {path} has labels in {labels.min()}..{labels.max()}; "
                            "MNIST labels are digits 0..9.")
    return arrays


def read_tfds(tfds_dir: str | None) -> dict:
    """The same arrays from tensorflow-datasets' prepared `mnist` (never downloads)."""
    import tensorflow_datasets as tfds

    arrays = {}
    for part in ("train", "test"):
        data = tfds.as_numpy(tfds.load("mnist", split=part, data_dir=tfds_dir, batch_size=-1,
                                       download=False))
        arrays[f"x_{part}"] = data["image"][..., 0]
        arrays[f"y_{part}"] = data["label"]
    return arrays


def tfds_prepared(tfds_dir: str | None) -> bool:
    try:
        import tensorflow_datasets as tfds

        return tfds.builder("mnist", data_dir=tfds_dir).is_prepared()
    except Exception:  # noqa: BLE001 - no tfds, or no data: the caller reports what it tried
        return False


def not_found_message(path: str, tfds_dir: str | None) -> str:
    return (f"No MNIST at {os.path.abspath(path)}, and tensorflow-datasets has no prepared "
            f"'mnist' (data_dir={tfds_dir or 'its default'}). Get the standard file with "
            f"`python -c 'import keras; keras.datasets.mnist.load_data()'` (saves it to "
            f"{DEFAULT_DIR}) or from {URL} into --data_dir, or pass --download.")


def load(data_dir: str | None = None, split: str = "generation", image_size: int = 28,
         max_per_class: int | None = None, use_tfds: bool = False,
         tfds_dir: str | None = None, download_missing: bool = False) -> FewShotDataset:
    """Loads MNIST from `<data_dir>/mnist.npz` (or tensorflow-datasets) split by digit.

    Args:
      data_dir: folder holding `mnist.npz` (default `~/.keras/datasets`).
      split: "generation" or "classification" (see the module docstring).
      image_size: side of the model's input images.
      max_per_class: keep only the first this many images of each digit in each split.
      use_tfds: read tensorflow-datasets' prepared `mnist` even if the file exists.
      tfds_dir: tensorflow-datasets' data_dir.
      download_missing: download `mnist.npz` into `data_dir` if absent.
    """
    if split not in SPLITS:
        raise UserError(f"Unknown MNIST split {split!r}; valid splits: {sorted(SPLITS)}.")
    if max_per_class is not None and max_per_class < 1:
        raise UserError(f"max_per_class must be >= 1 or None; got {max_per_class}.")
    path = os.path.join(data_dir or DEFAULT_DIR, FILE_NAME)
    if use_tfds or (not os.path.isfile(path) and not download_missing and tfds_prepared(tfds_dir)):
        if not tfds_prepared(tfds_dir):
            raise FileNotFoundError(not_found_message(path, tfds_dir))
        arrays, source = read_tfds(tfds_dir), "tensorflow-datasets"
    else:
        if not os.path.isfile(path):
            if not download_missing:
                raise FileNotFoundError(not_found_message(path, tfds_dir))
            download_file(URL, path)
        arrays, source = read_npz(path), path

    preprocess = make_preprocess(image_size)
    splits = {}
    for name, (part, digits) in SPLITS[split].items():
        images, labels = arrays[f"x_{part}"], arrays[f"y_{part}"]
        per_class = []
        for digit in digits:
            chosen = images[labels == digit][:max_per_class]
            if not len(chosen):
                raise UserError(f"Digit {digit} has no images in x_{part} of {source}; the "
                                f"{name!r} split of the {split!r} split needs it.")
            raw = chosen[..., None].astype(np.float32) / 255.0
            per_class.append(preprocess(raw).numpy())
        splits[name] = ClassImages.from_lists(per_class, [str(d) for d in digits])
    description = f"MNIST ({split} split) from {source}: " + ", ".join(
        f"{s} digits {','.join(c.class_names)} ({len(c.images)} images)"
        for s, c in splits.items())
    files = (path,) if source == path else ()
    return FewShotDataset("mnist", splits, RAW_SHAPE, preprocess, description,
                          data_dir=os.path.abspath(data_dir) if data_dir else None,
                          source_files=files)

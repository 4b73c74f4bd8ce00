"""`--dataset=folder`: a folder of class folders, Keras's `image_dataset_from_directory`
convention; the folder name is the class name.

    DIR/                          or    DIR/train/<class>/..., DIR/val/<class>/...,
      <class>/*.jpg                     DIR/test/<class>/...   (the split, fixed)
      <class>/any/nested/*.png

Without `train/`, `val/`, `test/` the classes are split by seeded fractions
(`tfmeta.data.own_data`); a missing `val/` or `test/` is cut from `train/`'s classes by
the same fractions. JPEG, PNG, BMP and GIF (first frame) of any size and mode are read,
in nested folders too; other files (a README, `.DS_Store`, `Thumbs.db`, hidden files) are
skipped and counted in the log. A corrupt image is an error naming the file, or with
`skip_corrupt=True` is skipped and listed in the log.

Images are decoded and resized to `image_size` with `channels` once
(`tfmeta.data.images.decode_image`, batched) and cached under `$TFMETA_CACHE`, keyed on
the files' paths, sizes and modification times and on these options.
`bin/predict.py` decodes the images it is given with the same function.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from tfmeta.data import images as image_utils
from tfmeta.data import own_data
from tfmeta.data.base import load_cached_arrays, source_fingerprint

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
IGNORED_NAMES = ("Thumbs.db", "desktop.ini", "__MACOSX")
CACHE_VERSION = "v1"


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_utils.IMAGE_EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def list_images(folder: str) -> tuple:
    """(image files under `folder`, sorted, nested folders included; the other files)."""
    found, others = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            path = os.path.join(root, name)
            (found if is_image_file(name) and not _hidden(name) else others).append(path)
    return found, others


def class_folders(folder: str) -> tuple:
    """({class name: [image files]} of the subfolders of `folder`, files outside any class
    folder or not images). A class folder without images is left out with a warning."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No folder {os.path.abspath(folder)}; --data_dir must be a "
                                "folder with one subfolder of images per class.")
    classes, skipped = {}, []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if _hidden(entry.name):
            continue
        if entry.is_dir():
            files, others = list_images(entry.path)
            skipped += others
            if files:
                classes[entry.name] = files
            else:
                logging.warning("Class folder %s holds no JPEG, PNG, BMP or GIF images; "
                                "leaving it out.", entry.path)
        else:
            skipped.append(entry.path)
    return classes, skipped


def find_classes(data_dir: str) -> tuple:
    """({class name: [files]}, {split: [class names]} fixed by train/ val/ test/ folders (only
    the splits present), [skipped files])."""
    if data_dir is None:
        raise ValueError("--dataset=folder needs --data_dir=<a folder with one subfolder of "
                         "images per class, or train/, val/, test/ folders of them>.")
    top, skipped = class_folders(data_dir)
    aliases = {alias: split for split, names in SPLIT_FOLDERS.items() for alias in names}
    if "train" in top and set(top) <= set(aliases):
        classes, fixed = {}, {}
        for alias in sorted(top):
            split = aliases[alias]
            if split in fixed:
                raise ValueError(f"{data_dir} has both {SPLIT_FOLDERS[split][0]}/ and "
                                 f"{alias}/; keep one folder per split.")
            split_classes, split_skipped = class_folders(os.path.join(data_dir, alias))
            skipped += split_skipped
            for name, files in split_classes.items():
                if name in classes:
                    other = next(s for s, names in fixed.items() if name in names)
                    raise ValueError(f"Class {name!r} is in both {other}/ and {alias}/ of "
                                     f"{data_dir}; few-shot splits are by class, so each class "
                                     "may be in one split only.")
                classes[name] = files
            fixed[split] = sorted(split_classes)
        return classes, fixed, skipped
    if not top:
        raise FileNotFoundError(
            f"{os.path.abspath(data_dir)} has no class folders with images (JPEG, PNG, BMP or "
            "GIF); --data_dir must hold one subfolder per class (the folder name is the class "
            "name), or train/, val/, test/ folders of them.")
    return top, {}, skipped


def complete_split(fixed: dict, fractions, seed: int) -> dict:
    """The split with `val`/`test` cut from `train`'s classes where no folder gave them, in
    the proportions of `fractions` among train and the missing splits."""
    fractions = dict(zip(own_data.SPLITS, own_data.check_fractions(fractions)))
    missing = [s for s in own_data.SPLITS if s not in fixed]
    if not missing:
        return dict(fixed)
    shares = {s: fractions[s] for s in ("train", *missing)}
    return {**fixed, **own_data.cut_classes(fixed["train"], shares, seed)}


def decode_classes(classes: dict, image_size: int, channels: int, crop_to_aspect_ratio: bool):
    """Decodes every listed file once (cached): {"pixels" uint8 [n, s, s, c], "labels"
    int64 [n] (index into the sorted class names), "bad" int64 (indices into the
    flattened file list of the files that did not decode)}."""
    names = sorted(classes)
    files = [f for n in names for f in classes[n]]
    labels = np.repeat(np.arange(len(names)), [len(classes[n]) for n in names])

    def build():
        pixels, bad = image_utils.decode_images_skipping(
            files, image_size, from_files=True, channels=channels,
            crop_to_aspect_ratio=crop_to_aspect_ratio)
        return {"pixels": pixels, "labels": np.delete(labels, bad), "bad": bad}

    key = "folder-" + source_fingerprint(files, image_size, channels, crop_to_aspect_ratio,
                                         CACHE_VERSION)
    return names, files, load_cached_arrays(key, build)


def load(data_dir: str | None = None, image_size: int = 84, channels: int = 3,
         crop_to_aspect_ratio: bool = False, split_fractions=own_data.DEFAULT_FRACTIONS,
         split_seed: int = 0, class_split: dict | None = None, skip_corrupt: bool = False,
         train_on_val: bool = False, normalize: bool = True):
    """Loads a folder of class folders (see the module docstring).

    Args:
      data_dir: the folder.
      image_size: side of the stored images and the model's inputs (resized, default 84).
      channels: 1 (grey) or 3 (RGB); other modes are converted.
      crop_to_aspect_ratio: cut the centred square before resizing (else squash).
      split_fractions: (train, val, test) fractions of the classes, when no train/, val/,
        test/ folders fix the split.
      split_seed: the seed of that split (independent of the training seed).
      class_split: {"train", "val", "test": class names}: the split, as config.json records.
      skip_corrupt: skip images that do not decode (listed in the log) instead of failing.
      train_on_val: train on the validation classes too.
      normalize: per-channel mean/std normalization with the training classes' statistics.
    """
    own_data.check_image_options(image_size, channels)
    own_data.check_fractions(split_fractions)
    classes, fixed, skipped = find_classes(data_dir)
    if skipped:
        logging.info("Skipped %d files that are not JPEG, PNG, BMP or GIF images: %s%s",
                     len(skipped), ", ".join(skipped[:5]), " ..." if len(skipped) > 5 else "")
    names, files, arrays = decode_classes(classes, image_size, channels, crop_to_aspect_ratio)
    bad = arrays["bad"]
    if len(bad):
        if not skip_corrupt:
            image_utils.raise_for_bad_image(files, bad, lambda i: files[i], from_files=True)
        logging.warning("Skipped %d image(s) that do not decode (data.skip_corrupt=True): %s",
                        len(bad), ", ".join(files[i] for i in bad))
    if class_split is None and fixed:
        class_split = complete_split(fixed, split_fractions, split_seed)
    present = {names[i] for i in np.unique(arrays["labels"])}
    lost = sorted(set(names) - present)
    if lost:
        logging.warning("Class(es) %s have no image that decodes; leaving them out.", lost)
        if class_split is not None:
            class_split = {s: [n for n in listed if n not in lost]
                           for s, listed in dict(class_split).items()}
    layout = "train/ val/ test/ folders" if fixed else "class folders"
    return own_data.build_dataset(
        "folder", arrays["pixels"], arrays["labels"], names, class_split=class_split,
        split_fractions=split_fractions, split_seed=split_seed, train_on_val=train_on_val,
        normalize=normalize, source=f"Images from {os.path.abspath(data_dir)} ({layout})",
        data_dir=os.path.abspath(data_dir),
        source_files=np.delete(np.array(files, dtype=object), bad).tolist(),
        decoding={"image_size": int(image_size), "channels": int(channels),
                  "crop_to_aspect_ratio": bool(crop_to_aspect_ratio)})

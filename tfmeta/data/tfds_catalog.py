"""`--dataset=tfds:NAME`: any image classification dataset of tensorflow-datasets.

    python bin/train.py --algo=protonet --dataset=tfds:oxford_flowers102 --data_dir=~/tfds

`--data_dir` is the TFDS data directory (default: TFDS's, `~/tensorflow_datasets`). A
dataset prepared there is read by name, also one whose builder code is not installed
(TFDS reads it from its files; their feature classes must be TFDS's own, so nothing read
from the folder can make Python import other code). `--download` calls
`download_and_prepare`.

The image and label features are found from the dataset's features: one `Image` and one
`ClassLabel` (`supervised_keys` decide between several, else `image_key` / `label_key`).
All examples of all TFDS splits (or `splits`) are pooled, exact duplicates (the same
encoded image with the same label, as in Omniglot's `small1`/`small2`, which repeat
`train`) are dropped, and the classes are split as a user's own data are
(`tfmeta.data.own_data`): few-shot splits are by class. Images are decoded from their
encoded bytes with `tfmeta.data.images.decode_image`, as `--dataset=folder` and
`bin/predict.py` decode files, and cached once the dataset is prepared.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import tensorflow as tf

from tfmeta.data import images as image_utils
from tfmeta.data import own_data
from tfmeta.data.base import load_cached_arrays, source_fingerprint
from tfmeta.errors import UserError

PREFIX = "tfds:"
CACHE_VERSION = "v1"


def dataset_name(dataset: str) -> str:
    """"tfds:cifar100" -> "cifar100" (an error unless it names one)."""
    name = dataset[len(PREFIX):] if dataset.startswith(PREFIX) else ""
    if not name or any(c.isspace() for c in name):
        raise UserError(f"A TFDS dataset is --dataset=tfds:NAME, e.g. tfds:cifar100; got "
                        f"{dataset!r}.")
    return name


# ------------------------------------------------------------------------ builder
def _feature_classes(node) -> list:
    """Every feature class name a TFDS `features.json` names."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("pythonClassName", "type") and isinstance(value, str):
                found.append(value)
            else:
                found += _feature_classes(value)
    elif isinstance(node, list):
        for value in node:
            found += _feature_classes(value)
    return found


def check_feature_files(data_dir: str | None, name: str) -> None:
    """Refuses a prepared dataset whose `features.json` names a feature class that is not
    one of TFDS's own: TFDS would import that class's module to read the files."""
    import tensorflow_datasets as tfds

    from_json = tfds.features.FeatureConnector
    registered = set(getattr(from_json, "_registered_features", {}))
    base_name = name.split("/")[0].split(":")[0]
    root = os.path.join(os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR), base_name)
    for path in tf.io.gfile.glob(os.path.join(root, "*", "*", "features.json")) + \
            tf.io.gfile.glob(os.path.join(root, "*", "features.json")):
        try:
            with tf.io.gfile.GFile(path) as f:
                classes = _feature_classes(json.load(f))
        except (ValueError, OSError) as error:
            raise UserError(f"{path} is not readable JSON ({error}); prepare the dataset "
                            "again.") from None
        foreign = sorted(c for c in set(classes) if c not in registered)
        if foreign:
            raise UserError(f"{path} names feature classes that are not TensorFlow Datasets' "
                            f"own ({foreign}); reading it would import their code, so it is "
                            "refused. Prepare the dataset with its builder installed.")


def get_builder(name: str, data_dir: str | None):
    """The TFDS builder of `name` (registered, or read from its prepared files in
    `data_dir`), or a one-line error."""
    import tensorflow_datasets as tfds

    check_feature_files(data_dir, name)
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        where = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else "TFDS's default"
        raise FileNotFoundError(
            f"No TFDS dataset {name!r}: it is not in tensorflow-datasets' catalog and "
            f"{where} holds no prepared {name}/<version>/. Check the name "
            "(tensorflow_datasets.list_builders()) or --data_dir.") from None


def find_features(features, supervised_keys, image_key: str | None,
                  label_key: str | None) -> tuple:
    """(image key, label key) of a dataset's top-level features (see the module docstring)."""
    import tensorflow_datasets as tfds

    kinds = {"image": (tfds.features.Image, image_key, "data.image_key"),
             "label": (tfds.features.ClassLabel, label_key, "data.label_key")}
    chosen = []
    for position, (kind, (cls, asked, option)) in enumerate(kinds.items()):
        candidates = sorted(k for k, f in features.items() if isinstance(f, cls))
        if asked is not None:
            if asked not in candidates:
                raise UserError(f"{option}={asked!r} is not an {cls.__name__} feature of "
                                f"this dataset; its {cls.__name__} features are {candidates} "
                                f"(all features: {sorted(features)}).")
            chosen.append(asked)
            continue
        supervised = (supervised_keys[position] if supervised_keys and len(supervised_keys) == 2
                      and isinstance(supervised_keys[position], str) else None)
        if supervised in candidates:
            chosen.append(supervised)
        elif len(candidates) == 1:
            chosen.append(candidates[0])
        elif kind in candidates:
            chosen.append(kind)
        else:
            raise UserError(f"This dataset has {len(candidates)} {cls.__name__} features "
                            f"({candidates}, of {sorted(features)}); an image classification "
                            f"dataset needs one. Choose with --set={option}=<name>.")
    return tuple(chosen)


# ------------------------------------------------------------------------ reading
def read_examples(builder, splits, image_key, label_key, image_size, channels,
                  crop_to_aspect_ratio, batch_size: int = 256) -> dict:
    """Decodes every example of `splits`: {"pixels", "labels", "bad" (names of the examples
    that do not decode), "duplicates" (count dropped)}."""
    import tensorflow_datasets as tfds

    pixels, labels, hashes, bad = [], [], [], []
    for split in splits:
        try:
            examples = builder.as_dataset(
                split=split, decoders={image_key: tfds.decode.SkipDecoding()},
                read_config=tfds.ReadConfig(try_autocache=False), shuffle_files=False)
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise FileNotFoundError(
                f"TFDS dataset {builder.name} split {split!r} cannot be read from "
                f"{builder.data_dir} ({str(error).strip().splitlines()[0]}); prepare it with "
                "--download (needs the network) or `tfds build`.") from None

        def decode(index, example):
            data = example[image_key]
            return (index, image_utils.decode_image(data, image_size, channels,
                                                    crop_to_aspect_ratio),
                    example[label_key], tf.strings.to_hash_bucket_fast(data, 2 ** 62))

        count = 0
        stream = examples.enumerate().map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                          deterministic=True).ignore_errors().batch(batch_size)
        kept = []
        for index, image, label, digest in stream.as_numpy_iterator():
            pixels.append(image)
            labels.append(label)
            hashes.append(digest)
            kept.append(index)
            count = max(count, int(index[-1]) + 1)
        total = int(builder.info.splits[split].num_examples) if split in builder.info.splits \
            else count
        missing = np.setdiff1d(np.arange(total), np.concatenate(kept) if kept else [])
        bad += [f"example {i} of split {split!r}" for i in missing]
    if not pixels:
        raise UserError(f"TFDS dataset {builder.name} has no readable examples in the "
                        f"splits {list(splits)}.")
    pixels, labels = np.concatenate(pixels), np.concatenate(labels).astype(np.int64)
    _, first = np.unique(np.stack([labels, np.concatenate(hashes)], 1), axis=0,
                         return_index=True)
    first = np.sort(first)
    return {"pixels": pixels[first], "labels": labels[first],
            "bad": np.array(bad, dtype=str), "duplicates": np.int64(len(pixels) - len(first))}


def load(name: str, data_dir: str | None = None, image_key: str | None = None,
         label_key: str | None = None, splits: tuple | None = None, image_size: int = 84,
         channels: int = 3, crop_to_aspect_ratio: bool = False,
         split_fractions=own_data.DEFAULT_FRACTIONS, split_seed: int = 0,
         class_split: dict | None = None, skip_corrupt: bool = False,
         train_on_val: bool = False, normalize: bool = True, download_missing: bool = False):
    """Loads TFDS dataset `name` as few-shot classes (see the module docstring).

    Args:
      name: the TFDS name, optionally with config and version (`omniglot:3.0.0`).
      data_dir: the TFDS data directory (default TFDS's own).
      image_key, label_key: the features to use where the dataset has several.
      splits: the TFDS splits to pool (default: all).
      image_size, channels, crop_to_aspect_ratio, split_fractions, split_seed,
      class_split, skip_corrupt, train_on_val, normalize: as `tfmeta.data.folder.load`.
      download_missing: `download_and_prepare` the dataset first.
    """
    own_data.check_image_options(image_size, channels)
    own_data.check_fractions(split_fractions)
    builder = get_builder(name, data_dir)
    if download_missing:
        try:
            builder.download_and_prepare()
        except (OSError, tf.errors.OpError) as error:
            raise OSError(f"--download: preparing TFDS dataset {name} failed "
                          f"({str(error).strip().splitlines()[0]}); check the network, or "
                          "prepare it where there is one and copy the folder.") from None
    image_key, label_key = find_features(builder.info.features, builder.info.supervised_keys,
                                         image_key, label_key)
    splits = list(splits) if splits else list(builder.info.splits)
    if not splits:
        raise FileNotFoundError(f"TFDS dataset {name} in {builder.data_dir} lists no splits: "
                                "it is not prepared. Pass --download, or name the splits "
                                "with data.splits.")

    def read():
        return read_examples(builder, splits, image_key, label_key, image_size, channels,
                             crop_to_aspect_ratio)

    files = (sorted(tf.io.gfile.glob(os.path.join(builder.data_dir, "*")))
             if builder.is_prepared() else [])
    local = [f for f in files if os.path.isfile(f)]
    arrays = (load_cached_arrays("tfds-" + source_fingerprint(
        local, name, splits, image_key, label_key, image_size, channels, crop_to_aspect_ratio,
        CACHE_VERSION), read) if local else read())
    if int(arrays["duplicates"]):
        logging.info("Dropped %d duplicate example(s) (the same image and label in several "
                     "splits).", int(arrays["duplicates"]))
    if len(arrays["bad"]):
        listed = ", ".join(arrays["bad"][:5].tolist())
        if not skip_corrupt:
            raise UserError(f"{len(arrays['bad'])} image(s) of TFDS dataset {name} do not "
                            f"decode ({listed}); set data.skip_corrupt=True to skip them.")
        logging.warning("Skipped %d image(s) that do not decode: %s", len(arrays["bad"]), listed)
    class_names = builder.info.features[label_key].names
    return own_data.build_dataset(
        f"tfds:{name}", arrays["pixels"], arrays["labels"], class_names,
        class_split=class_split, split_fractions=split_fractions, split_seed=split_seed,
        train_on_val=train_on_val, normalize=normalize,
        source=f"TFDS {name} ({', '.join(splits)}; image {image_key!r}, label {label_key!r})",
        data_dir=os.path.abspath(os.path.expanduser(data_dir)) if data_dir else None,
        source_files=files,
        decoding={"image_size": int(image_size), "channels": int(channels),
                  "crop_to_aspect_ratio": bool(crop_to_aspect_ratio)})

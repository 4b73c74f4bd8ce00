"""CIFAR-FS (Bertinetto et al., ICLR 2019) and FC100 (Oreshkin et al., NeurIPS 2018).

Both read the official CIFAR-100 python release from `--data_dir`: the archive
`cifar-100-python.tar.gz` (https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz,
fetched with `--download`) or its extracted folder `cifar-100-python/`, whose files
`train`, `test` and `meta` are pickled dicts with byte-string keys:

    train, test   b"data" uint8 [n, 3072] (channel-major: 1024 red, green, blue values),
                  b"fine_labels" [n], b"coarse_labels" [n]
    meta          b"fine_label_names" [100], b"coarse_label_names" [20]

The training and test images together give 600 images of each of the 100 classes,
split by class:

  * cifar_fs: Bertinetto et al.'s random split of the fine classes, 64 / 16 / 20
    (CIFAR_FS_SPLIT, the lists of their release as reproduced in Torchmeta,
    github.com/tristandeleu/pytorch-meta, torchmeta/datasets/assets/cifar100/cifar-fs/).
  * fc100: Oreshkin et al.'s split by superclass, 12 / 4 / 4 superclasses (60 / 20 / 20
    fine classes) so that test classes are semantically far from training ones
    (FC100_SPLIT: TADAM's superclass indices train 1-6, 9, 10, 15, 17-19; val 8, 11, 13,
    16; test 0, 7, 12, 14, as listed in Torchmeta's assets/cifar100/fc100/).

Examples stay uint8 at 32x32 and are preprocessed per episode (see `tfmeta.data.images`):
`/ 255`, resize to `image_size` unless 32, per-channel normalization with MetaOptNet's
CIFAR-100 mean/std.
"""

from __future__ import annotations

import os

import numpy as np

from tfmeta.data import images as image_utils
from tfmeta.data import safe_pickle
from tfmeta.data.base import (
    FewShotDataset,
    download_file,
    extract_archive,
    load_cached_arrays,
    source_fingerprint,
)
from tfmeta.errors import UserError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FOLDER = "cifar-100-python"
RAW_SIZE = 32
RAW_SHAPE = (RAW_SIZE, RAW_SIZE, 3)
PARTS = ("train", "test")

CIFAR_FS_SPLIT = {
    "train": (
        "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip",
        "bottle", "bowl", "can", "cup", "plate", "apple", "mushroom", "orange", "pear",
        "clock", "keyboard", "chair", "couch", "bee", "caterpillar", "cockroach", "bear",
        "lion", "tiger", "wolf", "bridge", "castle", "house", "road", "skyscraper", "cloud",
        "forest", "mountain", "elephant", "kangaroo", "porcupine", "possum", "raccoon",
        "skunk", "lobster", "spider", "boy", "girl", "dinosaur", "lizard", "snake", "turtle",
        "hamster", "mouse", "rabbit", "shrew", "squirrel", "oak_tree", "palm_tree",
        "pine_tree", "willow_tree", "bus", "train", "lawn_mower", "streetcar", "tank"),
    "val": (
        "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly",
        "sea", "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor"),
    "test": (
        "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe",
        "leopard", "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman",
        "bicycle", "pickup_truck", "rocket"),
}
FC100_SPLIT = {
    "train": ("fish", "flowers", "food_containers", "fruit_and_vegetables",
              "household_electrical_devices", "household_furniture",
              "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
              "trees", "vehicles_1", "vehicles_2"),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
            "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}


def input_kind(**options) -> str:
    del options
    return "images"


def not_found_message(data_dir) -> str:
    where = os.path.abspath(data_dir) if data_dir else "(no --data_dir given)"
    return (f"No CIFAR-100 in {where}: looked for {FOLDER}/{{train,test,meta}} and {ARCHIVE}. "
            f"Pass --download, or fetch {URL} into --data_dir.")


def find_folder(data_dir, download_missing: bool = False, url: str | None = None) -> str:
    """The extracted `cifar-100-python/` folder, unpacking (or first downloading) the
    archive if only that is there."""
    if not data_dir:
        raise FileNotFoundError(not_found_message(data_dir))
    folder = os.path.join(data_dir, FOLDER)
    if all(os.path.isfile(os.path.join(folder, f)) for f in (*PARTS, "meta")):
        return folder
    archive = os.path.join(data_dir, ARCHIVE)
    if not os.path.isfile(archive):
        if not download_missing:
            raise FileNotFoundError(not_found_message(data_dir))
        download_file(url or URL, archive, ARCHIVE_MD5)
    extract_archive(archive, data_dir)
    missing = [f for f in (*PARTS, "meta") if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"{archive} did not unpack to {folder} with {missing}; it is "
                                f"not the official archive: delete it and fetch {URL}.")
    return folder


def _read(path: str, keys: tuple) -> dict:
    raw = safe_pickle.load_data_file(path, "bytes", f"delete {FOLDER}/ and fetch {URL} again.")
    if isinstance(raw, dict):  # a pickle written by Python 3 may have str keys
        raw = {k.encode() if isinstance(k, str) else k: v for k, v in raw.items()}
    missing = [k for k in keys if not isinstance(raw, dict) or k not in raw]
    if missing:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"{path} lacks the key(s) {missing} (CIFAR-100 python pickles have "
                        f"byte-string keys); got {got}. Fetch {URL} again.")
    return raw


def read_cifar100(folder: str) -> dict:
    """Every image (train then test) as uint8 `[60000, 32, 32, 3]`, with fine and coarse
    labels and the class names."""
    meta = _read(os.path.join(folder, "meta"), (b"fine_label_names", b"coarse_label_names"))
    pixels, fine, coarse = [], [], []
    for part in PARTS:
        path = os.path.join(folder, part)
        raw = _read(path, (b"data", b"fine_labels", b"coarse_labels"))
        data = np.asarray(raw[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * RAW_SIZE ** 2:
            raise UserError(f"{path}: b'data' should be uint8 [n, 3072]; got {data.dtype} "
                            f"{data.shape}. Fetch {URL} again.")
        labels = [np.asarray(raw[k], np.int64) for k in (b"fine_labels", b"coarse_labels")]
        if any(lab.shape != (len(data),) for lab in labels):
            raise UserError(f"{path} has {len(data)} images but {len(labels[0])} fine and "
                            f"{len(labels[1])} coarse labels; fetch {URL} again.")
        for kind, values, count in (("fine", labels[0], 100), ("coarse", labels[1], 20)):
            outside = int(np.sum((values < 0) | (values >= count)))
            if outside:
                raise UserError(f"{path} has {outside} {kind} label(s) outside 0..{count - 1} "
                                f"(CIFAR-100 has {count} {kind} classes); the file is corrupt: "
                                f"fetch {URL} again.")
        pixels.append(data.reshape(-1, 3, RAW_SIZE, RAW_SIZE).transpose(0, 2, 3, 1))
        fine.append(labels[0])
        coarse.append(labels[1])
    names = {k: np.array([n.decode() if isinstance(n, bytes) else str(n) for n in meta[k]])
             for k in (b"fine_label_names", b"coarse_label_names")}
    return {"images": np.ascontiguousarray(np.concatenate(pixels)),
            "fine": np.concatenate(fine), "coarse": np.concatenate(coarse),
            "fine_names": names[b"fine_label_names"],
            "coarse_names": names[b"coarse_label_names"]}


def split_classes(arrays: dict, benchmark: str) -> dict:
    """split -> fine class names of `benchmark` ("cifar_fs" or "fc100")."""
    if benchmark == "cifar_fs":
        return {s: list(names) for s, names in CIFAR_FS_SPLIT.items()}
    coarse_of = {}
    for f, c in zip(arrays["fine"], arrays["coarse"]):
        coarse_of.setdefault(arrays["fine_names"][f], arrays["coarse_names"][c])
    return {s: sorted(f for f, c in coarse_of.items() if c in supers)
            for s, supers in FC100_SPLIT.items()}


def load_benchmark(benchmark: str, data_dir, image_size, train_on_val, normalize,
                   download_missing, url: str | None = None) -> FewShotDataset:
    folder = find_folder(data_dir, download_missing, url)
    files = [os.path.join(folder, f) for f in (*PARTS, "meta")]
    arrays = load_cached_arrays("cifar100-" + source_fingerprint(files, "v1"),
                                lambda: read_cifar100(folder))
    preprocess = image_utils.make_preprocess(RAW_SIZE, image_size,
                                             image_utils.CIFAR100_MEAN_STD, normalize)
    transform = image_utils.pixels_transform(preprocess)
    index = {str(n): i for i, n in enumerate(arrays["fine_names"])}
    order, classes, counts = image_utils.group_by_class(arrays["fine"])
    offsets = dict(zip(classes, np.concatenate([[0], np.cumsum(counts)[:-1]])))
    count_of = dict(zip(classes, counts))
    by_class = arrays["images"][order]
    splits = {}
    for split, names in split_classes(arrays, benchmark).items():
        unknown = [n for n in names if n not in index or index[n] not in count_of]
        if unknown:
            raise UserError(f"{folder} has no images of the {benchmark} class(es) {unknown}; "
                            f"its meta names {len(index)} classes. Fetch {URL} again.")
        per_class = [by_class[offsets[index[n]]:offsets[index[n]] + count_of[index[n]]]
                     for n in names]
        splits[split] = image_utils.class_images(
            np.concatenate(per_class), [len(p) for p in per_class], names, transform)
    title = {"cifar_fs": "CIFAR-FS (Bertinetto et al. split)",
             "fc100": "FC100 (Oreshkin et al. superclass split)"}[benchmark]
    return image_utils.image_dataset(benchmark, title, splits, train_on_val, data_dir, files,
                                     RAW_SHAPE, preprocess)


def load_cifar_fs(data_dir: str | None = None, image_size: int = RAW_SIZE,
                  train_on_val: bool = False, normalize: bool = True,
                  download_missing: bool = False) -> FewShotDataset:
    """`--dataset=cifar_fs`: CIFAR-100's fine classes split 64 / 16 / 20 (Bertinetto et al.).

    Args:
      data_dir: the folder holding `cifar-100-python.tar.gz` or `cifar-100-python/`.
      image_size: side of the model's input images (32: the files' own size).
      train_on_val: train on the validation classes too.
      normalize: per-channel mean/std normalization (False: values stay in [0, 1]).
      download_missing: fetch the official archive into `data_dir` if absent.
    """
    return load_benchmark("cifar_fs", data_dir, image_size, train_on_val, normalize,
                          download_missing)


def load_fc100(data_dir: str | None = None, image_size: int = RAW_SIZE,
               train_on_val: bool = False, normalize: bool = True,
               download_missing: bool = False) -> FewShotDataset:
    """`--dataset=fc100`: CIFAR-100 split by superclass 12 / 4 / 4 (Oreshkin et al.).

    Args: as `load_cifar_fs`.
    """
    return load_benchmark("fc100", data_dir, image_size, train_on_val, normalize,
                          download_missing)

"""tieredImageNet (Ren et al., ICLR 2018) from the authors' release.

Reads, from `--data_dir`, the files of Ren et al.'s release (the Google Drive link in
https://github.com/renmengye/few-shot-ssl-public, "tiered-imagenet.tar"):

    {train,val,test}_images_png.pkl   a list (or object array) of PNG-encoded 84x84x3
                                      images, each as a uint8 array or bytes
    {train,val,test}_labels.pkl       {"label_specific": int [n], "label_general": int [n],
                                       "label_specific_str": names, "label_general_str": names}

The classes are the `label_specific` ones, split by their ImageNet superclass
(`label_general`) as in the files: 351 / 97 / 160 classes (20 / 6 / 8 superclasses).
The PNGs are decoded once with TensorFlow and cached (about 780k images, 16 GB as
uint8); examples stay uint8 and are preprocessed per episode (see `tfmeta.data.images`).

`embeddings="center"` reads LEO's released 640-d embeddings instead
(`tfmeta.data.leo_embeddings`), which is what `--algo=leo` takes.
"""

from __future__ import annotations

import os

import numpy as np

from tfmeta.data import images as image_utils
from tfmeta.data import leo_embeddings, safe_pickle
from tfmeta.data.base import FewShotDataset, load_cached_arrays, source_fingerprint
from tfmeta.errors import UserError

RAW_SIZE = 84
RAW_SHAPE = (RAW_SIZE, RAW_SIZE, 3)
SPLITS = ("train", "val", "test")
IMAGES_NAME = "{split}_images_png.pkl"
LABELS_NAME = "{split}_labels.pkl"
LABEL_KEYS = ("label_specific", "label_general", "label_specific_str", "label_general_str")
SOURCE = ("Ren et al.'s release (tiered-imagenet.tar, linked from the README of "
          "github.com/renmengye/few-shot-ssl-public on Google Drive)")


def input_kind(embeddings: str | None = None, **options) -> str:
    """"embeddings" when LEO's released embeddings are chosen, else "images"."""
    del options
    return "embeddings" if leo_embeddings.crop_option(embeddings) else "images"


def split_files(data_dir, split: str) -> tuple:
    return (os.path.join(data_dir, IMAGES_NAME.format(split=split)),
            os.path.join(data_dir, LABELS_NAME.format(split=split)))


def _unpickle(path: str):
    return safe_pickle.load_data_file(path, "latin1", f"get it again from {SOURCE}.")


def read_labels(path: str) -> tuple:
    """(labels int [n], class names by label) of one `*_labels.pkl`."""
    raw = _unpickle(path)
    if not isinstance(raw, dict) or "label_specific" not in raw:
        got = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"{path} should hold a dict with keys {list(LABEL_KEYS)} (Ren et "
                        f"al.'s labels file); got {got}.")
    labels = np.asarray(raw["label_specific"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or not len(labels):
        raise UserError(f"{path}: 'label_specific' should be a non-empty int array [n]; got "
                        f"{labels.dtype} {labels.shape}.")
    names = raw.get("label_specific_str")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if (
        names is not None) else []
    if labels.min() < 0 or (names and labels.max() >= len(names)):
        raise UserError(f"{path}: 'label_specific' runs from {labels.min()} to "
                        f"{labels.max()}, but 'label_specific_str' names {len(names)} "
                        "classes; get the file again.")
    return labels, names


def decode_split(data_dir: str, split: str) -> dict:
    """Decodes one split's PNGs, class after class (classes in label order)."""
    images_path, labels_path = split_files(data_dir, split)
    labels, names = read_labels(labels_path)
    encoded = _unpickle(images_path)
    if not isinstance(encoded, (list, tuple, np.ndarray)):
        raise UserError(f"{images_path} should hold a list of PNG-encoded images; got "
                        f"{type(encoded).__name__}.")
    if len(encoded) != len(labels):
        raise UserError(f"{labels_path} has {len(labels)} labels but {images_path} holds "
                        f"{len(encoded)} images; the two files must come from the same "
                        f"release: get both again from {SOURCE}.")
    order, classes, counts = image_utils.group_by_class(labels)
    ordered = [encoded[i] for i in order]
    del encoded
    pixels = image_utils.decode_images(
        ordered, RAW_SIZE, lambda i: f"number {order[i]} in {images_path}")
    class_names = [names[c] if names else str(c) for c in classes]
    return {"images": pixels, "names": np.array(class_names), "counts": counts}


def load(data_dir: str | None = None, image_size: int = RAW_SIZE, embeddings: str | None = None,
         train_on_val: bool = False, normalize: bool = True,
         download_missing: bool = False) -> FewShotDataset:
    """Loads tieredImageNet's images (or, with `embeddings`, LEO's embeddings of them).

    Args:
      data_dir: the folder holding Ren et al.'s `*_images_png.pkl` and `*_labels.pkl`.
      image_size: side of the model's input images (84: the files' own size).
      embeddings: None (or "none") for images; "center" for LEO's released embeddings
        (`<data_dir>/tieredImageNet/center/*_embeddings.pkl`).
      train_on_val: train on the validation classes too (the val split is then not held out).
      normalize: per-channel mean/std normalization (False: values stay in [0, 1]).
      download_missing: fetch LEO's embeddings if absent; the images have no public URL.
    """
    if leo_embeddings.crop_option(embeddings):
        return leo_embeddings.load_published("tieredImageNet", data_dir, embeddings,
                                             train_on_val, download_missing)
    wanted = "{train,val,test}_images_png.pkl and {train,val,test}_labels.pkl"
    if download_missing:
        raise FileNotFoundError(f"--download: tieredImageNet's images have no public URL; get "
                                f"{wanted} from {SOURCE} into --data_dir.")
    files = {s: split_files(data_dir or "", s) for s in SPLITS}
    missing = [os.path.basename(p) for s in SPLITS for p in files[s] if not os.path.isfile(p)]
    if not data_dir or missing:
        where = os.path.abspath(data_dir) if data_dir else "(no --data_dir given)"
        leo = data_dir and os.path.isdir(os.path.join(data_dir, "tieredImageNet"))
        hint = (" It holds LEO's embeddings (tieredImageNet/): for those pass "
                "--set=data.embeddings=center, which --algo=leo's config does." if leo else "")
        raise FileNotFoundError(f"No tieredImageNet images in {where}: missing "
                                f"{missing or wanted}. There is no public download; get "
                                f"them from {SOURCE}.{hint}")

    preprocess = image_utils.make_preprocess(RAW_SIZE, image_size,
                                             image_utils.IMAGENET_MEAN_STD, normalize)
    transform = image_utils.pixels_transform(preprocess)
    splits = {}
    for split in SPLITS:
        arrays = load_cached_arrays(
            f"tiered_imagenet-{split}-" + source_fingerprint(files[split], "v1"),
            lambda s=split: decode_split(data_dir, s))
        splits[split] = image_utils.class_images(arrays["images"], arrays["counts"],
                                                 arrays["names"], transform)
    return image_utils.image_dataset(
        "tiered_imagenet", "tieredImageNet images", splits, train_on_val, data_dir,
        [p for s in SPLITS for p in files[s]], RAW_SHAPE, preprocess)

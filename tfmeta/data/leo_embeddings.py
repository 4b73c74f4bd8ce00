"""Image embeddings in the layout of the LEO paper's release (Rusu et al., ICLR 2019).

DeepMind released the 640-d features of a WRN-28-10 for mini-ImageNet and
tieredImageNet (README of https://github.com/deepmind/leo:
http://storage.googleapis.com/leo-embeddings/embeddings.zip), laid out as

    <data_dir>/<Name>/<crop>/{train,val,test}_embeddings.pkl

with Name `miniImageNet` or `tieredImageNet` and crop `center` or `multiview`
(multiview exists for mini-ImageNet only). Each file is a Python 2 pickle (read
with latin-1 encoding) of a dict:

    keys        [n] strings (or bytes) "<x>-<wnid>-<wnid>_<n>.JPEG"
    embeddings  float32 [n, dim]

The class of an example is the wnid in its key. Classes may have different
numbers of examples. `tfmeta.embeddings.write_embeddings` writes the same
layout from any tfmeta dataset and backbone; the dataset `embeddings` reads such
a folder.

Preprocessing (also inside exported models): L2 normalization of each
embedding, as the LEO data provider does (`tf.nn.l2_normalize(x, axis=-1)`).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import tensorflow as tf

from tfmeta.data import safe_pickle
from tfmeta.data.base import FewShotDataset, download_file, extract_archive, read_npz
from tfmeta.data.classes import ClassImages
from tfmeta.errors import UserError

PUBLISHED = {"miniImageNet": ("center", "multiview"), "tieredImageNet": ("center",)}
RELEASE_URL = "http://storage.googleapis.com/leo-embeddings/embeddings.zip"
# The release unpacks to embeddings/<Name>/<crop>/...; --data_dir is that embeddings/.
RELEASE_PREFIX = "embeddings/"
SPLITS = ("train", "val", "test")


def crop_option(embeddings: str | None) -> str | None:
    """The crop an image dataset's `embeddings` option asks for; None (images) for None or
    the text "none" (`--set=data.embeddings=None` over a config's "center" gives the text)."""
    return None if embeddings is None or str(embeddings).lower() in ("", "none") else embeddings


def l2_normalize(embeddings):
    """`[n, dim]` embeddings -> the same, each row scaled to unit L2 norm."""
    return tf.math.l2_normalize(tf.convert_to_tensor(embeddings, tf.float32), axis=-1)


def pickle_path(data_dir: str, name: str, crop: str, split: str) -> str:
    return os.path.join(data_dir, name, crop, f"{split}_embeddings.pkl")


def npz_path(data_dir: str, name: str, crop: str, split: str) -> str:
    """The same embeddings as a NumPy `.npz` (written beside the pickle by write_embeddings;
    an .npz read without pickle support cannot carry code)."""
    return os.path.join(data_dir, name, crop, f"{split}_embeddings.npz")


def read_pickle(path: str) -> dict:
    """Reads one embeddings file: {"keys": [n] str, "embeddings": float32 [n, dim]}.

    A `.pkl` is unpickled by `safe_pickle` (numpy arrays and containers only, so a
    tampered file cannot run code); an `.npz` is read with pickles disabled.
    """
    fix = "download or write it again."
    if path.endswith(".npz"):
        raw = read_npz(path, fix)
    else:
        raw = safe_pickle.load_data_file(path, "latin1", fix)
    if not isinstance(raw, dict) or "keys" not in raw or "embeddings" not in raw:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"{path} should hold a dict with 'keys' and 'embeddings'; got {got}.")
    keys = [k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in raw["keys"]]
    embeddings = np.asarray(raw["embeddings"], np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
        raise UserError(f"{path}: 'embeddings' should be [n, dim] with one row per key "
                        f"({len(keys)} keys); got shape {embeddings.shape}.")
    return {"keys": keys, "embeddings": embeddings}


def class_of_key(key: str, path: str = "") -> str:
    """"<x>-<wnid>-<wnid>_<n>.JPEG" -> wnid; an error naming the key if it is malformed."""
    parts = key.split("-")
    if len(parts) != 3 or parts[2].split("_")[0] != parts[1]:
        where = f" in {path}" if path else ""
        raise UserError(
            f"Bad key {key!r}{where}: LEO keys look like '<x>-<wnid>-<wnid>_<n>.JPEG', the "
            "file name starting with its class's wnid. Rewrite the file with "
            "bin/write_embeddings.py or fix its keys.")
    return parts[1]


def group_by_class(data: dict, path: str = "") -> ClassImages:
    """Groups rows by the wnid of their keys (classes sorted by wnid), L2-normalized."""
    rows = {}
    seen = set()
    for i, key in enumerate(data["keys"]):
        wnid = class_of_key(key, path)
        image = key.split("-")[2]
        if image in seen:
            raise UserError(f"Duplicate image {image!r} (key {key!r}) in {path}; each image "
                            "must appear once.")
        seen.add(image)
        rows.setdefault(wnid, []).append(i)
    if not rows:
        raise UserError(f"{path} holds no embeddings.")
    names = sorted(rows)
    normalized = l2_normalize(data["embeddings"]).numpy()
    return ClassImages.from_lists([normalized[rows[n]] for n in names], names)


def merge(a: dict, b: dict) -> dict:
    return {"keys": a["keys"] + b["keys"],
            "embeddings": np.concatenate([a["embeddings"], b["embeddings"]], axis=0)}


def not_found_message(data_dir, name, crop, missing) -> str:
    where = (f"in {os.path.abspath(data_dir)!r}: looked for {missing}" if data_dir
             else "because no --data_dir was given")
    return (
        f"No {name} embeddings ({crop}) {where}. LEO's embeddings are the paper's release ({RELEASE_URL}, "
        "linked from the README of https://github.com/deepmind/leo); extract it so that "
        f"--data_dir holds {name}/{crop}/train_embeddings.pkl (and val_, test_), or write "
        "your own with bin/write_embeddings.py.")


def load_folder(data_dir: str, name: str, crop: str = "center", train_on_val: bool = False,
                dataset_name: str = "embeddings") -> FewShotDataset:
    """Reads `<data_dir>/<name>/<crop>/{train,val,test}_embeddings.pkl`.

    Args:
      data_dir: the folder holding `<name>/`.
      name: `miniImageNet`, `tieredImageNet` or a folder written by write_embeddings.
      crop: `center` or `multiview`.
      train_on_val: add the validation examples to the training split (the paper's
        final numbers are trained on train + val); the val split is then not held out.
      dataset_name: the registry name reported in the dataset.
    """
    if not data_dir:
        raise FileNotFoundError(not_found_message(data_dir, name, crop, []))
    paths = {s: npz_path(data_dir, name, crop, s) if os.path.isfile(
        npz_path(data_dir, name, crop, s)) else pickle_path(data_dir, name, crop, s)
        for s in SPLITS}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(not_found_message(data_dir, name, crop, missing))
    files = tuple(paths.values())
    data = {s: read_pickle(p) for s, p in paths.items()}
    dims = {s: d["embeddings"].shape[1] for s, d in data.items()}
    if len(set(dims.values())) != 1:
        raise UserError(f"The splits of {data_dir}/{name}/{crop} have different embedding "
                        f"sizes {dims}; write them with the same backbone.")
    if train_on_val:
        data["train"] = merge(data["train"], data["val"])
        paths["train"] += " + " + paths["val"]
    splits = {s: group_by_class(d, paths[s]) for s, d in data.items()}
    description = (f"{name} {crop} embeddings from {data_dir}"
                   f"{' (train on train + val)' if train_on_val else ''}: " + ", ".join(
                       f"{s} {c.num_classes} classes / {len(c.images)} examples"
                       for s, c in splits.items()))
    return FewShotDataset(dataset_name, splits, (dims["train"],), l2_normalize, description,
                          value_range=None, data_dir=os.path.abspath(data_dir),
                          source_files=files)


def release_members() -> list:
    """The files of LEO's release, relative to its `embeddings/` folder."""
    return [f"{name}/{crop}/{split}_embeddings.pkl" for name, crops in PUBLISHED.items()
            for crop in crops for split in SPLITS]


def download_release(data_dir: str, url: str | None = None) -> list:
    """Downloads LEO's embeddings.zip into `data_dir`, checks that it is a zip holding every
    file of the release, and unpacks it there (`data_dir/<Name>/<crop>/*.pkl`). No checksum
    is published. Returns the files written; nothing is fetched if they are all there."""
    if not data_dir:
        raise UserError("--download needs --data_dir: the folder to put LEO's embeddings in.")
    url = url or RELEASE_URL
    if all(os.path.isfile(os.path.join(data_dir, m)) for m in release_members()):
        return []
    archive = os.path.join(data_dir, "embeddings.zip")
    if not os.path.isfile(archive):
        download_file(url, archive)
    try:
        with zipfile.ZipFile(archive) as z:
            names = {n[len(RELEASE_PREFIX):] if n.startswith(RELEASE_PREFIX) else n
                     for n in z.namelist()}
            broken = z.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        os.remove(archive)
        raise UserError(f"{archive} (from {url}) is not a readable zip ({error}); it was "
                        "deleted: try --download again.") from None
    missing = [m for m in release_members() if m not in names]
    if missing or broken:
        os.remove(archive)
        what = f"lacks {missing}" if missing else f"has a corrupt member {broken}"
        raise UserError(f"{archive} (from {url}) {what}, so it is not LEO's release; it was "
                        "deleted: try --download again.")
    return extract_archive(archive, data_dir, strip_prefix=RELEASE_PREFIX)


def load_published(name: str, data_dir: str | None = None, embeddings: str = "center",
                   train_on_val: bool = False, download_missing: bool = False) -> FewShotDataset:
    """The released LEO embeddings of `name` (`miniImageNet` or `tieredImageNet`); with
    `download_missing`, LEO's release is fetched into `data_dir` first if absent."""
    if embeddings not in PUBLISHED[name]:
        raise UserError(f"embeddings={embeddings!r} is not available for {name}; the LEO "
                        f"release has {list(PUBLISHED[name])} for it.")
    if download_missing:
        download_release(data_dir)
    registry = {"miniImageNet": "mini_imagenet", "tieredImageNet": "tiered_imagenet"}[name]
    return load_folder(data_dir, name, embeddings, train_on_val, dataset_name=registry)


def find_embedding_folders(data_dir: str, crop: str = "center") -> list:
    """Names of the subfolders of `data_dir` that hold `<crop>/train_embeddings.pkl`."""
    if not data_dir or not os.path.isdir(data_dir):
        return []
    return sorted(n for n in os.listdir(data_dir)
                  if os.path.isfile(pickle_path(data_dir, n, crop, "train")))


def load(data_dir: str | None = None, folder: str | None = None, embeddings: str = "center",
         train_on_val: bool = False) -> FewShotDataset:
    """The `embeddings` dataset: any folder in the LEO layout (e.g. from write_embeddings).

    Args:
      data_dir: the folder holding `<folder>/<crop>/*_embeddings.pkl`.
      folder: that subfolder; may be omitted when `data_dir` holds exactly one.
      embeddings: the crop subfolder (`center` unless the files say otherwise).
      train_on_val: add the validation examples to the training split.
    """
    if folder is None:
        found = find_embedding_folders(data_dir, embeddings)
        if len(found) != 1:
            what = f"several ({found})" if found else "none"
            raise FileNotFoundError(
                f"Looked for <folder>/{embeddings}/train_embeddings.pkl in "
                f"{os.path.abspath(data_dir) if data_dir else data_dir!r} and found {what}; "
                "pass --set=data.folder=<name>, or write embeddings there with "
                "bin/write_embeddings.py.")
        folder = found[0]
    return load_folder(data_dir, folder, embeddings, train_on_val)

"""mini-ImageNet (Vinyals et al. 2016) with Ravi and Larochelle's split (ICLR 2017).

Reads, from `--data_dir`, either of the two layouts the field shares:

  * Ravi and Larochelle's: `images/*.jpg` and `train.csv`, `val.csv`, `test.csv`
    (header `filename,label`; label = the image's WordNet id), from their repository
    (https://github.com/twitter/meta-learning-lstm, data/miniImagenet/) with the images
    cut from ImageNet by its `create_miniImagenet` script (84x84; larger images are
    resized to 84x84 here, as that script does).
  * the pickle caches `mini-imagenet-cache-{train,val,test}.pkl`, each a dict
    `{"image_data": uint8 [n, 84, 84, 3], "class_dict": {wnid: [indices]}}`.

Splits as in the files: 64 / 16 / 20 classes of 600 images. JPEGs are decoded once with
TensorFlow and cached (`tfmeta.data.base.load_cached_arrays`). Examples stay uint8 and
are preprocessed per episode (see `tfmeta.data.images`): `/ 255`, resize to
`image_size` unless 84, per-channel normalization with MetaOptNet's ImageNet mean/std.

`embeddings="center"` or `"multiview"` reads LEO's released 640-d embeddings instead
(`tfmeta.data.leo_embeddings`), which is what `--algo=leo` takes.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from tfmeta.data import images as image_utils
from tfmeta.data import leo_embeddings, safe_pickle
from tfmeta.data.base import FewShotDataset, load_cached_arrays, source_fingerprint
from tfmeta.errors import UserError

RAW_SIZE = 84
RAW_SHAPE = (RAW_SIZE, RAW_SIZE, 3)
SPLITS = ("train", "val", "test")
CSV_HEADER = ["filename", "label"]
PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"
SOURCES = ("Ravi & Larochelle's split files train.csv, val.csv, test.csv "
           "(github.com/twitter/meta-learning-lstm, data/miniImagenet) with their images cut "
           "from ImageNet into images/, or the mini-imagenet-cache-{train,val,test}.pkl pickles")


def input_kind(embeddings: str | None = None, **options) -> str:
    """"embeddings" when LEO's released embeddings are chosen, else "images"."""
    del options
    return "embeddings" if leo_embeddings.crop_option(embeddings) else "images"


def not_found_message(data_dir) -> str:
    where = os.path.abspath(data_dir) if data_dir else "(no --data_dir given)"
    leo = data_dir and os.path.isdir(os.path.join(data_dir, "miniImageNet"))
    hint = (" It holds LEO's embeddings (miniImageNet/): for those pass "
            "--set=data.embeddings=center, which --algo=leo's config does." if leo else "")
    return (f"No mini-ImageNet images in {where}: looked for train.csv, val.csv, test.csv with "
            f"images/*.jpg, and for {PICKLE_NAME.format(split='{train,val,test}')}. There is "
            f"no public download; get {SOURCES}.{hint}")


def find_layout(data_dir) -> str:
    """"csv" or "pickle": which complete layout `data_dir` holds (CSV first)."""
    if data_dir and os.path.isdir(data_dir):
        csvs = [os.path.isfile(os.path.join(data_dir, f"{s}.csv")) for s in SPLITS]
        pickles = [os.path.isfile(os.path.join(data_dir, PICKLE_NAME.format(split=s)))
                   for s in SPLITS]
        if all(csvs):
            return "csv"
        if all(pickles):
            return "pickle"
        partial = [f"{s}.csv" for s, ok in zip(SPLITS, csvs) if not ok] if any(csvs) else (
            [PICKLE_NAME.format(split=s) for s, ok in zip(SPLITS, pickles) if not ok]
            if any(pickles) else None)
        if partial:
            raise FileNotFoundError(f"mini-ImageNet in {os.path.abspath(data_dir)} lacks the "
                                    f"split file(s) {partial}; get them from {SOURCES}.")
    raise FileNotFoundError(not_found_message(data_dir))


def read_csv(path: str) -> list:
    """[(filename, wnid)] of one split file; an error unless the header is filename,label."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != CSV_HEADER:
        got = rows[0] if rows else "an empty file"
        raise UserError(f"{path} should start with the header 'filename,label' (Ravi & "
                        f"Larochelle's split files); got {got}. Use the official CSV.")
    bad = [i + 2 for i, row in enumerate(rows[1:]) if len(row) != 2 or not all(row)]
    if bad:
        raise UserError(f"{path} line {bad[0]}: expected 'filename,label'; fix or replace "
                        "the file.")
    outside = [i + 2 for i, row in enumerate(rows[1:]) if not is_plain_file_name(row[0].strip())]
    if outside:
        raise UserError(f"{path} line {outside[0]} names {rows[outside[0] - 1][0]!r}, which is "
                        "not a file in images/ (a split file names plain file names, no "
                        "folders or '..'); fix or replace the file.")
    if len(rows) == 1:
        raise UserError(f"{path} lists no images.")
    return [(name.strip(), label.strip()) for name, label in rows[1:]]


def is_plain_file_name(name: str) -> bool:
    """A name with no folder part, so `images/<name>` stays inside `images/`."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0") \
        and not os.path.isabs(name)


def decode_csv_split(data_dir: str, split: str) -> dict:
    """Decodes the images of one CSV split, class after class (classes sorted by wnid)."""
    rows = read_csv(os.path.join(data_dir, f"{split}.csv"))
    order, classes, counts = image_utils.group_by_class(np.array([w for _, w in rows]))
    paths = [os.path.join(data_dir, "images", rows[i][0]) for i in order]
    pixels = image_utils.decode_images(paths, RAW_SIZE, lambda i: paths[i], from_files=True)
    return {"images": pixels, "names": classes, "counts": counts}


def read_pickle_split(path: str) -> dict:
    """One `mini-imagenet-cache-*.pkl`, class after class (classes sorted by wnid)."""
    raw = safe_pickle.load_data_file(path, "latin1")
    if not isinstance(raw, dict) or not {"image_data", "class_dict"} <= set(raw):
        got = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"{path} should hold a dict with keys 'image_data' and 'class_dict' "
                        f"(the mini-ImageNet pickle cache); got {got}.")
    pixels = np.asarray(raw["image_data"])
    if pixels.dtype != np.uint8 or pixels.shape[1:] != RAW_SHAPE:
        raise UserError(f"{path}: 'image_data' should be uint8 [n, 84, 84, 3]; got "
                        f"{pixels.dtype} {pixels.shape}.")
    class_dict = {(k.decode() if isinstance(k, bytes) else str(k)): np.asarray(v, np.int64)
                  for k, v in raw["class_dict"].items()}
    names = sorted(class_dict)
    index = np.concatenate([class_dict[n] for n in names]) if names else np.zeros(0, np.int64)
    if not names or index.min() < 0 or index.max() >= len(pixels):
        raise UserError(f"{path}: 'class_dict' should map each wnid to indices into "
                        f"'image_data' (0..{len(pixels) - 1}); fix or replace the file.")
    return {"images": pixels[index], "names": np.array(names),
            "counts": np.array([len(class_dict[n]) for n in names])}


def load(data_dir: str | None = None, image_size: int = RAW_SIZE, embeddings: str | None = None,
         train_on_val: bool = False, normalize: bool = True,
         download_missing: bool = False) -> FewShotDataset:
    """Loads mini-ImageNet's images (or, with `embeddings`, LEO's embeddings of them).

    Args:
      data_dir: the folder holding either layout (see the module docstring).
      image_size: side of the model's input images (84: the files' own size).
      embeddings: None (or "none") for images; "center" or "multiview" for LEO's released embeddings
        (`<data_dir>/miniImageNet/<crop>/*_embeddings.pkl`).
      train_on_val: train on the validation classes too (the val split is then not held out).
      normalize: per-channel mean/std normalization (False: values stay in [0, 1]).
      download_missing: fetch LEO's embeddings if absent; the images have no public URL.
    """
    if leo_embeddings.crop_option(embeddings):
        return leo_embeddings.load_published("miniImageNet", data_dir, embeddings,
                                             train_on_val, download_missing)
    if download_missing:
        raise FileNotFoundError(f"--download: mini-ImageNet's images have no public URL; get "
                                f"{SOURCES} into --data_dir.")
    layout = find_layout(data_dir)
    if layout == "csv":
        split_files = {s: [os.path.join(data_dir, f"{s}.csv")] for s in SPLITS}
        for split in SPLITS:
            split_files[split] += [os.path.join(data_dir, "images", name)
                                   for name, _ in read_csv(split_files[split][0])]
    else:
        split_files = {s: [os.path.join(data_dir, PICKLE_NAME.format(split=s))] for s in SPLITS}

    preprocess = image_utils.make_preprocess(RAW_SIZE, image_size,
                                             image_utils.IMAGENET_MEAN_STD, normalize)
    transform = image_utils.pixels_transform(preprocess)
    splits = {}
    for split in SPLITS:
        if layout == "csv":
            present = [p for p in split_files[split] if os.path.isfile(p)]
            arrays = load_cached_arrays(
                "mini_imagenet-" + split + "-" + source_fingerprint(present, len(
                    split_files[split]), "v1"),
                lambda s=split: decode_csv_split(data_dir, s))
        else:
            arrays = read_pickle_split(split_files[split][0])
        splits[split] = image_utils.class_images(arrays["images"], arrays["counts"],
                                                 arrays["names"], transform)
    image_utils.check_disjoint_classes({s: c.class_names for s, c in splits.items()},
                                       f"mini-ImageNet in {data_dir}")
    return image_utils.image_dataset(
        "mini_imagenet", f"mini-ImageNet images ({layout} layout)", splits, train_on_val,
        data_dir, [p for files in split_files.values() for p in files], RAW_SHAPE, preprocess)

"""Omniglot (Lake et al. 2015) in its official layout, split for few-shot learning.

Reads `images_background`, `images_evaluation`, `images_background_small1` and
`images_background_small2`, each as the official zip or as its extracted folder,
laid out as `<set>/<alphabet>/characterNN/*.png` (105x105, one stroke image per
drawer). Characters present in several sets (the two minimal sets share Greek
and Latin) are read once.

Splits:
  * Full data (background and evaluation, 1623 characters): the split of MAML
    (Finn et al. 2017), after Matching Networks (Vinyals et al. 2016): the
    characters are shuffled with a fixed seed; 1100 train, 100 validation (the
    1200 "training characters") and 423 test.
  * Minimal sets only (the bundled default, 242 characters in 8 alphabets):
    split by alphabet so that test alphabets are never seen in training:
    MINIMAL_SPLIT below (161 / 22 / 59 characters).
  Training characters rotated by 90, 180 and 270 degrees are new classes, as in
  both papers (so the full train split has 4400 classes).

Groups: each character's alphabet (`ClassImages.class_groups`; a rotated character stays in
its alphabet), so `episode_grouping=within` draws an episode's characters from one alphabet.

Preprocessing (also inside exported models): area-resize to `image_size`
(28 by default) and invert, so strokes are 1 and background 0.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from tfmeta.data.base import FewShotDataset, download_file, load_cached_arrays, source_fingerprint
from tfmeta.data.classes import ClassImages
from tfmeta.errors import UserError

URL_PREFIX = "https://github.com/brendenlake/omniglot/raw/master/python/"
ARCHIVE_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1": "e704a628b5459e08445c13499850abc4",
    "images_background_small2": "b75a71a51d3b13f821f212756fe481fd",
}
FULL_SETS = ("images_background", "images_evaluation")
MINIMAL_SETS = ("images_background_small1", "images_background_small2")
BUNDLED_DIR = os.path.join(os.path.dirname(__file__), "bundled", "omniglot")
RAW_SHAPE = (105, 105, 1)

MINIMAL_SPLIT = {
    "train": ("Balinese", "Greek", "Japanese_(katakana)", "Korean", "Latin"),
    "val": ("Early_Aramaic",),
    "test": ("Sanskrit", "Tagalog"),
}
FULL_SPLIT_SIZES = {"train": 1100, "val": 100}  # the rest (423) is test
FULL_SPLIT_SEED = 1


def make_preprocess(image_size: int = 28):
    """Decoded images `[n, 105, 105, 1]` in [0, 1] -> model inputs `[n, s, s, 1]`."""

    def preprocess(images):
        images = tf.convert_to_tensor(images, tf.float32)
        images = tf.image.resize(images, (image_size, image_size), method="area")
        return 1.0 - images

    return preprocess


def find_sets(data_dir: str) -> dict:
    """Maps each official set found in `data_dir` to its folder or zip path."""
    found = {}
    for name in FULL_SETS + MINIMAL_SETS:
        folder, archive = os.path.join(data_dir, name), os.path.join(data_dir, name + ".zip")
        if os.path.isdir(folder):
            found[name] = folder
        elif os.path.isfile(archive):
            found[name] = archive
    return found


def download(data_dir: str, sets=FULL_SETS, url_prefix: str = URL_PREFIX) -> dict:
    """Downloads the official zips that are not in `data_dir` yet; returns find_sets()."""
    present = find_sets(data_dir)
    for name in sets:
        if name not in present:
            download_file(url_prefix + name + ".zip", os.path.join(data_dir, name + ".zip"),
                          ARCHIVE_MD5.get(name))
    return find_sets(data_dir)


def _list_pngs(source: str):
    """Yields (alphabet, character, file name, read_bytes) for each PNG of one set."""
    if os.path.isdir(source):
        for alphabet in sorted(os.listdir(source)):
            alphabet_dir = os.path.join(source, alphabet)
            if not os.path.isdir(alphabet_dir):
                continue
            for character in sorted(os.listdir(alphabet_dir)):
                character_dir = os.path.join(alphabet_dir, character)
                if not os.path.isdir(character_dir):
                    continue
                for name in sorted(fnmatch.filter(os.listdir(character_dir), "*.png")):
                    path = os.path.join(character_dir, name)
                    yield alphabet, character, path, lambda p=path: open(p, "rb").read()
        return
    try:
        archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as error:
        raise UserError(f"{source} is not a readable zip file ({error}); delete it and "
                        "download it again.") from error
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            parts = info.filename.split("/")
            if len(parts) != 4 or not parts[3].endswith(".png"):
                continue
            _, alphabet, character, _ = parts
            yield alphabet, character, f"{source}:{info.filename}", lambda i=info: _read_member(
                archive, source, i)


def _read_member(archive: zipfile.ZipFile, source: str, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise UserError(f"Corrupt member {info.filename} in {source} ({error}); delete the zip "
                        "and download it again.") from None


def _decode(path: str, data: bytes) -> np.ndarray:
    try:
        image = tf.io.decode_png(data, channels=1).numpy()
    except tf.errors.InvalidArgumentError as error:
        raise UserError(f"Corrupt image {path}: it does not decode as PNG ({error.message}). "
                        "Replace the file or download the set again.") from None
    if image.shape != RAW_SHAPE:
        raise UserError(f"Image {path} has shape {image.shape}; Omniglot images are "
                        f"{RAW_SHAPE}. Replace the file or download the set again.")
    return image


def read_characters(sources: list) -> tuple:
    """Decodes every character of the given sets.

    Returns (names, images): names `"alphabet/character"` sorted, images uint8
    `[num_characters, drawers, 105, 105, 1]`, 255 = background.
    """
    per_character = {}
    for source in sources:
        seen_here = set()
        for alphabet, character, path, read in _list_pngs(source):
            key = f"{alphabet}/{character}"
            if key in per_character and key not in seen_here:
                continue  # the same character in an earlier set (small1 and small2 overlap)
            seen_here.add(key)
            per_character.setdefault(key, []).append(_decode(path, read()))
    if not per_character:
        raise UserError(f"No Omniglot images found in {sources}; expected "
                        "<set>/<alphabet>/characterNN/*.png inside.")
    names = sorted(per_character)
    drawers = {len(per_character[n]) for n in names}
    if len(drawers) != 1:
        raise UserError(f"Omniglot characters should all have the same number of drawers; "
                        f"found counts {sorted(drawers)}. Some files are missing.")
    return names, np.stack([np.stack(per_character[n]) for n in names])


def alphabet_of(name: str) -> str:
    """The alphabet of a class name `alphabet/character[/rotN]`: its group."""
    return name.split("/")[0]


def _split_names(names: list, full: bool) -> dict:
    if full:
        order = np.random.RandomState(FULL_SPLIT_SEED).permutation(len(names))
        shuffled = [names[i] for i in order]
        n_train, n_val = FULL_SPLIT_SIZES["train"], FULL_SPLIT_SIZES["val"]
        return {"train": sorted(shuffled[:n_train]),
                "val": sorted(shuffled[n_train:n_train + n_val]),
                "test": sorted(shuffled[n_train + n_val:])}
    split = {split: [n for n in names if alphabet_of(n) in alphabets]
             for split, alphabets in MINIMAL_SPLIT.items()}
    empty = [s for s, members in split.items() if not members]
    if empty:
        found = sorted({alphabet_of(n) for n in names})
        raise UserError(
            f"These Omniglot minimal sets hold the alphabets {found}, but the minimal-set split "
            f"takes its {', '.join(empty)} split from "
            f"{[a for s in empty for a in MINIMAL_SPLIT[s]]}, which are missing: the zips are "
            "not the official images_background_small1/2. Get them again, or use the full "
            "images_background and images_evaluation.")
    return split


def _with_rotations(classes: ClassImages) -> ClassImages:
    """The classes and their rotations by 90, 180 and 270 degrees, new classes of the same
    alphabet (`alphabet/character/rot90`)."""
    per_class, names, groups = [], [], []
    for k, suffix in enumerate(("", "/rot90", "/rot180", "/rot270")):
        for i, name in enumerate(classes.class_names):
            per_class.append(np.rot90(classes.stored_examples(i), k, axes=(1, 2)))
            names.append(name + suffix)
            groups.append(classes.class_groups[i])
    return ClassImages.from_lists(per_class, names, class_groups=groups)


def not_found_message(data_dir: str) -> str:
    return (
        f"No Omniglot data in {os.path.abspath(data_dir)!r}: looked for "
        f"{', '.join(s + '[.zip]' for s in FULL_SETS + MINIMAL_SETS)}. Put the official zips "
        f"there (from {URL_PREFIX}), pass --download to fetch them, or leave --data_dir unset "
        "to use the bundled minimal sets.")


def load(data_dir: str | None = None, image_size: int = 28, rotate_train: bool = True,
         download_missing: bool = False, train_on_val: bool = False) -> FewShotDataset:
    """Loads Omniglot from `data_dir` (default: the bundled minimal sets).

    Args:
      data_dir: folder holding the official zips or their extracted folders.
      image_size: side of the model's input images.
      rotate_train: add the 90/180/270 degree rotations of training characters as classes.
      download_missing: fetch the full official zips into `data_dir` if absent.
      train_on_val: train on the validation characters too (Prototypical Networks and
        Matching Networks train on every character outside the test set). The `val`
        split is still there for monitoring, but no longer held out.
    """
    requested_dir = data_dir
    data_dir = data_dir or BUNDLED_DIR
    if download_missing:
        found = download(data_dir)
    else:
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(not_found_message(data_dir))
        found = find_sets(data_dir)
    full = all(s in found for s in FULL_SETS)
    sources = [found[s] for s in (FULL_SETS if full else MINIMAL_SETS) if s in found]
    if not sources:
        if any(s in found for s in FULL_SETS):
            missing = [s for s in FULL_SETS if s not in found]
            raise FileNotFoundError(
                f"Found only part of the full Omniglot in {data_dir!r}: {missing} missing. The "
                "MAML split needs both images_background and images_evaluation; pass --download.")
        raise FileNotFoundError(not_found_message(data_dir))
    if not full and len(sources) < len(MINIMAL_SETS):
        missing = [s for s in MINIMAL_SETS if s not in found]
        raise FileNotFoundError(
            f"Found only part of the Omniglot minimal sets in {data_dir!r}: {missing} missing. "
            "Their split by alphabet needs both images_background_small1 and "
            "images_background_small2 (or the full images_background and images_evaluation).")

    preprocess = make_preprocess(image_size)
    files = [os.path.join(root, f) for s in sources for root, _, fs in
             (os.walk(s) if os.path.isdir(s) else [(os.path.dirname(s), [], [os.path.basename(s)])])
             for f in fs]

    def build():
        names, raw = read_characters(sources)
        flat = raw.reshape(-1, *RAW_SHAPE).astype(np.float32) / 255.0
        processed = np.concatenate([preprocess(flat[i:i + 2048]).numpy()
                                    for i in range(0, len(flat), 2048)])
        return {"names": np.array(names),
                "images": processed.reshape(raw.shape[0], raw.shape[1], *processed.shape[1:])}

    arrays = load_cached_arrays(
        "omniglot-" + source_fingerprint(files, image_size, "v1"), build)
    names = [str(n) for n in arrays["names"]]
    all_classes = ClassImages.from_dense(arrays["images"], names,
                                         class_groups=[alphabet_of(n) for n in names])
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    names_by_split = _split_names(names, full)
    if train_on_val:
        names_by_split["train"] = names_by_split["train"] + names_by_split["val"]
    for split, split_names in names_by_split.items():
        classes = all_classes.select([index[n] for n in split_names])
        splits[split] = _with_rotations(classes) if split == "train" and rotate_train else classes
    kind = "full (MAML split)" if full else "minimal sets (split by alphabet)"
    kind += ", training on train + val" if train_on_val else ""
    description = f"Omniglot {kind} from {data_dir}: " + ", ".join(
        f"{s} {c.num_classes} classes in {len(set(c.class_groups))} "
        f"alphabet{'s' if len(set(c.class_groups)) > 1 else ''}" for s, c in splits.items())
    return FewShotDataset("omniglot", splits, RAW_SHAPE, preprocess, description,
                          data_dir=os.path.abspath(requested_dir) if requested_dir else None,
                          source_files=tuple(files))

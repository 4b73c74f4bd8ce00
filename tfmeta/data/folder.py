"""`--dataset=folder`: a folder of class folders, Keras's `image_dataset_from_directory`
convention; the folder name is the class name.

    DIR/                          or    DIR/train/<class>/..., DIR/val/<class>/...,
      <class>/*.jpg                     DIR/test/<class>/...   (the split, fixed)
      <class>/any/nested/*.png

Classes in groups (`class_depth=2`: the folder two levels down names a class, the level
above it its group; 3: three levels, the two above the group, and so on):

    DIR/<group>/<class>/**/*.jpg        class "group/class", group "group"
    DIR/train/<group>/<class>/...       the same under fixed split folders

Without `train/`, `val/`, `test/` the classes are split by seeded fractions
(`tfmeta.data.own_data`), or with `class_depth > 1` their groups are (whole groups, so the
test classes are of groups unseen in training, as Omniglot's test alphabets); a missing
`val/` or `test/` is cut from `train/`'s classes (groups) by the same fractions. JPEG,
PNG, BMP and GIF (first frame) of any size and mode are read, in nested folders too;
other files (a README, `.DS_Store`, `Thumbs.db`, hidden files) and images above the class
level are skipped and counted in the log. A corrupt image is an error naming the file, or
with `skip_corrupt=True` is skipped and listed in the log. An image whose header declares
more than `max_image_pixels` pixels (Pillow's limit by default) is refused before it is
decoded (`tfmeta.data.images.refuse_oversized`), skipped or not.

Everything read from the folder is untrusted, links included (`check_links`): after
resolving links every class folder and every image lies inside DIR, no class folder is DIR
itself, lies above its own place, or holds (or sits in) another class folder, and no image
file belongs to two classes; a link that breaks a rule is an error naming it and where it
points. A link that breaks none keeps working: a class folder that links to a folder of
DIR no other class uses, an image that links to a file of its own class or to one of DIR
outside every class. A file that a class reaches twice (a link to a sibling) counts once.

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
from tfmeta.errors import UserError
from tfmeta.ranges import Range

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
IGNORED_NAMES = ("Thumbs.db", "desktop.ini", "__MACOSX")
CACHE_VERSION = "v1"
# The folder level that names a class (`data.class_depth`; tfmeta.config checks it too).
CLASS_DEPTH = Range(1, 100, integer=True)


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_utils.IMAGE_EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def list_images(folder: str) -> tuple:
    """(image files under `folder`, sorted, nested folders included; the other files).

    Only regular files (or links to them) count as images: a named pipe, socket or device
    with an image's name is one of the other files, never opened (reading a pipe would
    wait forever)."""
    found, others = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            path = os.path.join(root, name)
            image = is_image_file(name) and not _hidden(name) and os.path.isfile(path)
            (found if image else others).append(path)
    return found, others


def check_class_depth(class_depth) -> None:
    """`class_depth` in `CLASS_DEPTH`, or a ValueError saying what it means."""
    if not CLASS_DEPTH.contains(class_depth):
        raise UserError(f"data.class_depth must be {CLASS_DEPTH.describe()}: the folder "
                        f"level that names a class (1: DIR/<class>/, 2: DIR/<group>/<class>/); "
                        f"got {class_depth!r}.")


def _subfolders(folder: str) -> list:
    """The entries of `folder` that are not hidden, by name."""
    return [e for e in sorted(os.scandir(folder), key=lambda e: e.name) if not _hidden(e.name)]


def _gather_classes(folder: str, parts: tuple, class_depth: int, classes: dict,
                    skipped: list, places: dict) -> tuple:
    """Fills `classes` ({"a/b/class": [image files]}) with the folders `class_depth` levels
    below `folder` (`parts` levels down already), `places` with their paths and `skipped`
    with the files above them or not images; returns (the deepest level of folders found,
    one folder that deep)."""
    deepest, example = len(parts), folder
    for entry in _subfolders(folder):
        if not entry.is_dir():
            skipped.append(entry.path)  # not an image, or an image above the class level
            continue
        path = (*parts, entry.name)
        if len(path) < class_depth:
            level, there = _gather_classes(entry.path, path, class_depth, classes, skipped,
                                           places)
            if level > deepest:
                deepest, example = level, there
            continue
        deepest, example = class_depth, entry.path
        files, others = list_images(entry.path)
        skipped += others
        if files:
            classes["/".join(path)] = files
            places["/".join(path)] = entry.path
        else:
            logging.warning("Class folder %s holds no JPEG, PNG, BMP or GIF images; "
                            "leaving it out.", entry.path)
    return deepest, example


def class_folders(folder: str, class_depth: int = 1, links_out: bool = False) -> tuple:
    """({class name: [image files]} of the folders `class_depth` levels below `folder`,
    named by their path below it ("group/class"); files outside any class folder or not
    images). A class folder without images is left out with a warning. Links are checked
    against `folder` (`check_links`; `links_out`: links may point outside it, as in
    bin/predict.py's support set, a folder of links to photos kept elsewhere, which has no
    splits to leak across)."""
    classes, places, skipped = _class_places(folder, class_depth)
    return check_links(folder, classes, places, links_out), skipped


def _class_places(folder: str, class_depth: int) -> tuple:
    """`class_folders` before `check_links`: (classes, {class name: its folder}, skipped)."""
    _require_folder(folder)
    classes, places, skipped = {}, {}, []
    deepest, example = _gather_classes(folder, (), class_depth, classes, skipped, places)
    if deepest < class_depth and class_depth > 1:
        found = (f"its deepest folders are {deepest} level(s) down (e.g. {example}); use "
                 f"data.class_depth={deepest}" if deepest else
                 "it has no subfolders; put the images in class folders")
        raise UserError(f"data.class_depth={class_depth} reads class folders {class_depth} "
                        f"levels below {folder} (DIR/{'<group>/' * (class_depth - 1)}<class>/),"
                        f" but {found}.")
    return classes, places, skipped


# ---------------------------------------------------------------------- links
REPLACE_LINK = "replace the link by a copy or remove it"


def _inside(path: str, folder: str) -> bool:
    """Whether resolved `path` is `folder` or below it (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _link_on(path: str, top: str) -> str | None:
    """The outermost link on `path` below `top` (`path` itself or a folder above it)."""
    found, current = None, path
    while _inside(os.path.abspath(current), os.path.abspath(top)) and \
            os.path.abspath(current) != os.path.abspath(top):
        if os.path.islink(current):
            found = current
        current = os.path.dirname(current)
    return found


def _as_link(path: str, top: str, real: str) -> str:
    """"{path} is a link to {real}" (or names the link above it that takes it there)."""
    link = _link_on(path, top)
    if link is None or link == path:
        return f"{path} is a link to {real}"
    return f"{path} (through the link {link}) resolves to {real}"


def check_links(data_dir: str, classes: dict, places: dict, links_out: bool = False) -> dict:
    """`classes` ({name: [image files]}, their folders `places`) checked against the links
    under `data_dir`, every path resolved (`os.path.realpath`):

    - a class folder lies inside `data_dir`, and is neither `data_dir` nor a folder above
      its own place (a link back up: the class would hold other classes' images);
    - no class folder is, holds or sits in another one (a class would hold another's
      images, possibly across splits: a leak of test classes into training);
    - an image lies inside `data_dir`, and in no class folder but its own;
    - no file is an image of two classes (links or hard links to one file).

    Each violation is a ValueError naming the link, where it points and what to do. A file
    its class reaches twice (an image and a link to it) is kept once, logged. Returns
    `classes` with those repeats dropped. With `links_out`, class folders and images may
    lie outside `data_dir` (the other rules hold)."""
    root = os.path.realpath(data_dir)
    real = {name: os.path.realpath(place) for name, place in places.items()}
    linked = {name: _link_on(place, data_dir) is not None for name, place in places.items()}
    for name in sorted(places):
        place, where = places[name], real[name]
        if not _inside(where, root) and not links_out:
            raise UserError(f"Class folder {_as_link(place, data_dir, where)}, outside the data "
                            f"folder {root}; every class must lie inside it: {REPLACE_LINK}.")
        if _inside(os.path.realpath(os.path.dirname(place)), where):
            above = "the data folder itself" if where == root else "a folder above it"
            raise UserError(f"Class folder {_as_link(place, data_dir, where)}, {above}, so the "
                            f"class would hold other classes' images: remove the link.")
    owner = {}  # resolved class folder -> class; classes that are not links first
    for name in sorted(places, key=lambda n: (linked[n], n)):
        if real[name] in owner:
            _refuse_overlap(data_dir, places, real, name, owner[real[name]], "is also")
        owner[real[name]] = name
    for name in sorted(places):
        folder = os.path.dirname(real[name])
        while folder != root and _inside(folder, root):
            if folder in owner:
                inner, outer = name, owner[folder]
                if linked[outer] and not linked[inner]:
                    _refuse_overlap(data_dir, places, real, outer, inner, "holds")
                _refuse_overlap(data_dir, places, real, inner, outer, "is inside")
            folder = os.path.dirname(folder)
    return _check_image_links(root, classes, owner, links_out)


def _refuse_overlap(data_dir, places, real, name, other, relation):
    resolved = f" ({real[other]})" if real[other] != os.path.abspath(places[other]) else ""
    raise UserError(f"Class folder {_as_link(places[name], data_dir, real[name])}, which "
                    f"{relation} class folder {places[other]}{resolved}; an image may belong "
                    f"to one class only: {REPLACE_LINK}.")


def _check_image_links(root: str, classes: dict, owner: dict, links_out: bool) -> dict:
    """The image rules of `check_links` (`owner`: {resolved class folder: class}); returns
    the classes without repeated files."""
    seen, kept, repeats = {}, {}, 0
    for name in sorted(classes):
        kept[name] = []
        for path in classes[name]:
            if os.path.islink(path):
                target = os.path.realpath(path)
                if not _inside(target, root) and not links_out:
                    raise UserError(f"Image {path} is a link to {target}, outside the data "
                                    f"folder {root}; every image must lie inside it: "
                                    f"{REPLACE_LINK}.")
                folder = os.path.dirname(target)
                while folder not in owner and folder != root and _inside(folder, root):
                    folder = os.path.dirname(folder)
                if owner.get(folder, name) != name:
                    raise UserError(f"Image {path} of class {name!r} is a link to {target}, in "
                                    f"the folder of class {owner[folder]!r}; an image may "
                                    f"belong to one class only: {REPLACE_LINK}.")
            status = os.stat(path)
            key = (status.st_dev, status.st_ino)
            if key in seen and seen[key][0] != name:
                (other, first), this = seen[key], (name, path)
                if os.path.islink(first) and not os.path.islink(path):
                    (other, first), this = this, (other, first)
                what = (f"a link to {os.path.realpath(this[1])}" if os.path.islink(this[1])
                        else "a hard link")
                raise UserError(f"Image {this[1]} of class {this[0]!r} is {what}, the same file "
                                f"as image {first} of class {other!r}; an image may belong to "
                                f"one class only: {REPLACE_LINK}.")
            if key in seen:
                repeats += 1
                continue
            seen[key] = (name, path)
            kept[name].append(path)
    if repeats:
        logging.info("%d image file(s) reached twice within their class (a link to a sibling) "
                     "count once.", repeats)
    return kept


def _require_folder(folder: str) -> None:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No folder {os.path.abspath(folder)}; --data_dir must be a "
                                "folder with one subfolder of images per class.")


def _holds_images(folder: str) -> bool:
    """Whether any image file lies below `folder` (hidden ones aside); stops at the first."""
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        if any(is_image_file(f) and not _hidden(f) for f in files):
            return True
    return False


def find_classes(data_dir: str, class_depth: int = 1) -> tuple:
    """({class name: [files]}, {split: [class names]} fixed by train/ val/ test/ folders (only
    the splits present), [skipped files]); classes are the folders `class_depth` levels
    below `data_dir`, or below its split folders (`class_folders`), their links checked
    against `data_dir` across all splits (`check_links`)."""
    if data_dir is None:
        raise UserError("--dataset=folder needs --data_dir=<a folder with one subfolder of "
                        "images per class, or train/, val/, test/ folders of them>.")
    _require_folder(data_dir)
    aliases = {alias: split for split, names in SPLIT_FOLDERS.items() for alias in names}
    entries = _subfolders(data_dir)
    top = [e.name for e in entries if e.is_dir() and _holds_images(e.path)]
    if "train" in top and set(top) <= set(aliases):
        classes, places, fixed = {}, {}, {}
        skipped = [e.path for e in entries if not e.is_dir()]
        for entry in entries:
            if entry.is_dir() and entry.name not in top:
                logging.warning("Folder %s holds no JPEG, PNG, BMP or GIF images; leaving it "
                                "out.", entry.path)
        for alias in top:
            split = aliases[alias]
            if split in fixed:
                raise UserError(f"{data_dir} has both {SPLIT_FOLDERS[split][0]}/ and "
                                f"{alias}/; keep one folder per split.")
            split_classes, split_places, split_skipped = _class_places(
                os.path.join(data_dir, alias), class_depth)
            skipped += split_skipped
            for name, files in split_classes.items():
                if name in classes:
                    other = next(s for s, names in fixed.items() if name in names)
                    raise UserError(f"Class {name!r} is in both {other}/ and {alias}/ of "
                                    f"{data_dir}; few-shot splits are by class, so each class "
                                    "may be in one split only.")
                classes[name], places[name] = files, split_places[name]
            fixed[split] = sorted(split_classes)
        return check_links(data_dir, classes, places), fixed, skipped
    classes, skipped = class_folders(data_dir, class_depth)
    if not classes:
        raise FileNotFoundError(
            f"{os.path.abspath(data_dir)} has no class folders with images (JPEG, PNG, BMP or "
            "GIF); --data_dir must hold one subfolder per class (the folder name is the class "
            "name), or train/, val/, test/ folders of them.")
    return classes, {}, skipped


def group_of(name: str, class_depth: int) -> str | None:
    """The group of class `name` ("a/b/class" -> "a/b"), None with `class_depth` 1."""
    return name.rsplit("/", 1)[0] if class_depth > 1 else None


def complete_split(fixed: dict, fractions, seed: int, class_depth: int = 1) -> dict:
    """The split with `val`/`test` cut from `train`'s classes where no folder gave them, in
    the proportions of `fractions` among train and the missing splits; with `class_depth >
    1`, whole groups of them (`own_data.split_groups`)."""
    fractions = dict(zip(own_data.SPLITS, own_data.check_fractions(fractions)))
    missing = [s for s in own_data.SPLITS if s not in fixed]
    if not missing:
        return dict(fixed)
    shares = {s: fractions[s] for s in ("train", *missing)}
    if class_depth > 1:
        groups = {name: group_of(name, class_depth) for name in fixed["train"]}
        return {**fixed, **own_data.split_groups(groups, shares, seed)}
    return {**fixed, **own_data.cut_classes(fixed["train"], shares, seed)}


def decode_classes(classes: dict, image_size: int, channels: int, crop_to_aspect_ratio: bool,
                   class_depth: int = 1,
                   max_image_pixels: int = image_utils.MAX_IMAGE_PIXELS):
    """Decodes every listed file once (cached): {"pixels" uint8 [n, s, s, c], "labels"
    int64 [n] (index into the sorted class names), "bad" int64 (indices into the
    flattened file list of the files that did not decode)}. Each file's header is read
    before decoding (`images.refuse_oversized`); a cached decode is not read again, so the
    limit is not part of the cache's key."""
    names = sorted(classes)
    files = [f for n in names for f in classes[n]]
    labels = np.repeat(np.arange(len(names)), [len(classes[n]) for n in names])

    def build():
        pixels, bad = image_utils.decode_images_skipping(
            files, image_size, from_files=True, channels=channels,
            crop_to_aspect_ratio=crop_to_aspect_ratio, max_image_pixels=max_image_pixels)
        return {"pixels": pixels, "labels": np.delete(labels, bad), "bad": bad}

    # The class level decides the labels and the files' order. Level 1 adds nothing to the
    # key, so the caches written before `class_depth` existed stay valid.
    depth = () if class_depth == 1 else (f"class_depth={class_depth}",)
    key = "folder-" + source_fingerprint(files, image_size, channels, crop_to_aspect_ratio,
                                         CACHE_VERSION, *depth)
    return names, files, load_cached_arrays(key, build)


def load(data_dir: str | None = None, image_size: int = 84, channels: int = 3,
         crop_to_aspect_ratio: bool = False, split_fractions=own_data.DEFAULT_FRACTIONS,
         split_seed: int = 0, class_split: dict | None = None, skip_corrupt: bool = False,
         train_on_val: bool = False, normalize: bool = True, class_depth: int = 1,
         max_image_pixels: int = image_utils.MAX_IMAGE_PIXELS):
    """Loads a folder of class folders (see the module docstring).

    Args:
      data_dir: the folder.
      image_size: side of the stored images and the model's inputs (resized, default 84).
      channels: 1 (grey) or 3 (RGB); other modes are converted.
      crop_to_aspect_ratio: cut the centred square before resizing (else squash).
      split_fractions: (train, val, test) fractions of the classes (of the groups, with
        `class_depth > 1`), when no train/, val/, test/ folders fix the split.
      split_seed: the seed of that split (independent of the training seed).
      class_split: {"train", "val", "test": class names}: the split, as config.json records.
      skip_corrupt: skip images that do not decode (listed in the log) instead of failing.
      train_on_val: train on the validation classes too.
      normalize: per-channel mean/std normalization with the training classes' statistics.
      class_depth: the folder level that names a class (1: `DIR/<class>/`); the levels
        above it are its group (2: `DIR/<group>/<class>/`, class "group/class"), and the
        split is then by group.
      max_image_pixels: the most pixels an image file may declare in its header (every
        frame's, for a GIF): a file that declares more is refused before it is decoded.
        Default: Pillow's `MAX_IMAGE_PIXELS`, 1024 * 1024 * 1024 // 4 // 3 = 89478485.
    """
    own_data.check_image_options(image_size, channels)
    image_utils.check_max_image_pixels(max_image_pixels)
    own_data.check_fractions(split_fractions)
    check_class_depth(class_depth)
    class_depth = int(class_depth)
    classes, fixed, skipped = find_classes(data_dir, class_depth)
    is_above = [is_image_file(f) and not _hidden(os.path.basename(f)) for f in skipped]
    above = [f for f, image in zip(skipped, is_above) if image]
    others = [f for f, image in zip(skipped, is_above) if not image]
    if others:
        logging.info("Skipped %d files that are not JPEG, PNG, BMP or GIF images: %s%s",
                     len(others), ", ".join(others[:5]), " ..." if len(others) > 5 else "")
    if above:
        logging.info("Skipped %d images above the class folders (data.class_depth=%d): %s%s",
                     len(above), class_depth, ", ".join(above[:5]),
                     " ..." if len(above) > 5 else "")
    names, files, arrays = decode_classes(classes, image_size, channels, crop_to_aspect_ratio,
                                          class_depth, int(max_image_pixels))
    bad = arrays["bad"]
    if len(bad):
        if not skip_corrupt:
            image_utils.raise_for_bad_image(files, bad, lambda i: files[i], from_files=True)
        logging.warning("Skipped %d image(s) that do not decode (data.skip_corrupt=True): %s",
                        len(bad), ", ".join(files[i] for i in bad))
    if class_split is None and fixed:
        class_split = complete_split(fixed, split_fractions, split_seed, class_depth)
    present = {names[i] for i in np.unique(arrays["labels"])}
    lost = sorted(set(names) - present)
    if lost:
        logging.warning("Class(es) %s have no image that decodes; leaving them out.", lost)
        if class_split is not None:
            class_split = {s: [n for n in listed if n not in lost]
                           for s, listed in dict(class_split).items()}
    layout = "train/ val/ test/ folders" if fixed else "class folders"
    if class_depth > 1:
        layout += f", <group>/<class> {class_depth} levels down"
    return own_data.build_dataset(
        "folder", arrays["pixels"], arrays["labels"], names, class_split=class_split,
        class_groups=None if class_depth == 1 else [group_of(n, class_depth) for n in names],
        split_fractions=split_fractions, split_seed=split_seed, train_on_val=train_on_val,
        normalize=normalize, source=f"Images from {os.path.abspath(data_dir)} ({layout})",
        data_dir=os.path.abspath(data_dir),
        source_files=np.delete(np.array(files, dtype=object), bad).tolist(),
        decoding={"image_size": int(image_size), "channels": int(channels),
                  "crop_to_aspect_ratio": bool(crop_to_aspect_ratio)})

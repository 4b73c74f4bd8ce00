"""Writes LEO-format embeddings from any tfmeta dataset and backbone.

LEO (Rusu et al. 2019) meta-learns on fixed image features; its authors released
them for mini-ImageNet and tieredImageNet only. This module computes such
features with a backbone of yours (for example the Conv4 of a trained MAML run)
for any dataset tfmeta reads, and writes them in the release's layout:

    <output_dir>/<name>/center/{train,val,test}_embeddings.pkl
        {"keys": [n] str "<split>-<class>-<class>_<i>.JPEG", "embeddings": float32 [n, dim]}
    <output_dir>/<name>/center/class_names.json    {class id: the dataset's class name}
    <output_dir>/<name>/multiview/...              the same, each embedding the mean of views

"multiview" follows LEO's released mini-ImageNet files, whose embeddings average several
crops of each image and their flips. Here an image's views (`multiview_crops`) are ten:
the image shifted by `shift = max(1, side // 10)` pixels toward each of the four corners
(a crop of the zero-padded image) and the unshifted one, each also flipped left-right:

    padded = pad(image, shift)                                    # zeros around
    crops = [padded[dy:dy + H, dx:dx + W] for dy, dx in
             ((shift, shift), (0, 0), (0, 2 * shift), (2 * shift, 0), (2 * shift, 2 * shift))]
    views = crops + [flip_left_right(c) for c in crops]           # 10 views
    multiview = mean(features(v) for v in views)                  # [dim]

(LEO cropped larger originals, which tfmeta's preprocessed inputs no longer are; shifts of
the padded image are the closest crops of the same size.)

Class ids are `<split><index>` (e.g. `train00017`): LEO keys cannot hold the
dataset's own names, which may contain '-' or '_'. Then

    python bin/train.py --algo=leo --dataset=embeddings --data_dir=<output_dir>

meta-trains LEO on them (see `tfmeta.data.leo_embeddings`).
"""

from __future__ import annotations

import json
import os
import pickle

import keras
import numpy as np

from tfmeta.data.leo_embeddings import pickle_path
from tfmeta.errors import UserError
from tfmeta.files import atomic_write
from tfmeta.training.run import open_run

SPLITS = ("train", "val", "test")


def write_pickle(path: str, keys, embeddings) -> str:
    """Writes one split's embeddings atomically, twice: the LEO release's pickle (protocol 2,
    readable by Python 2 and 3, for LEO's own code) and, beside it, an `.npz` with the same
    arrays, which tfmeta reads first (an .npz without pickles cannot carry code)."""
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(keys) != len(embeddings):
        raise UserError(f"Need one [dim] embedding per key; got {len(keys)} keys and "
                        f"embeddings of shape {embeddings.shape}.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        pickle.dump({"keys": np.array(keys), "embeddings": embeddings}, f, protocol=2)
    with atomic_write(path[:-len(".pkl")] + ".npz", "wb") as f:
        np.savez(f, keys=np.array([str(k) for k in keys]), embeddings=embeddings)
    return path


def feature_extractor(backbone: keras.Model, layer: str | None = None) -> keras.Model:
    """The backbone up to `layer` (flattened), or without its head (a final Dense layer).

    Args:
      backbone: a functional Keras model.
      layer: the name of the layer whose output is the feature, e.g. "block4_relu" of
        Conv4 for its last feature map before pooling; None: everything but the head.
    """
    if layer is not None:
        names = [x.name for x in backbone.layers]
        if layer not in names:
            raise UserError(f"{backbone.name!r} has no layer {layer!r}; its layers: {names}.")
        output = keras.layers.Flatten(name="features")(backbone.get_layer(layer).output)
        return keras.Model(backbone.inputs, output, name=f"{backbone.name}_{layer}")
    if isinstance(backbone.layers[-1], keras.layers.Dense) and len(backbone.layers) > 1:
        return keras.Model(backbone.inputs, backbone.layers[-2].output,
                           name=f"{backbone.name}_features")
    return backbone


def embed(features: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """`[n, *example_shape]` model inputs -> float32 `[n, dim]` features (inference mode)."""
    outputs = [np.asarray(features(images[i:i + batch_size], training=False))
               for i in range(0, len(images), batch_size)]
    outputs = np.concatenate(outputs).astype(np.float32)
    return outputs.reshape(len(outputs), -1)


def recalibrate_batch_norm(features: keras.Model, images: np.ndarray, batch_size: int = 256,
                           passes: int = 30, seed: int = 0) -> None:
    """Sets batch-norm moving statistics from random batches of `images`.

    For backbones meta-trained with batch statistics only (MAML's "batch_stats"),
    whose moving averages were never updated: inference then normalizes with the
    statistics of the data rather than the initial 0 and 1.
    """
    rng = np.random.default_rng(seed)
    for _ in range(passes):
        features(images[rng.choice(len(images), min(batch_size, len(images)), replace=False)],
                 training=True)


def multiview_crops(images: np.ndarray) -> list:
    """The ten views `[n, H, W, C]` of `images` described in the module docstring."""
    height, width = images.shape[1:3]
    shift = max(1, min(height, width) // 10)
    padded = np.pad(images, [(0, 0), (shift, shift), (shift, shift), (0, 0)])
    corners = ((shift, shift), (0, 0), (0, 2 * shift), (2 * shift, 0), (2 * shift, 2 * shift))
    crops = [padded[:, dy:dy + height, dx:dx + width] for dy, dx in corners]
    return crops + [c[:, :, ::-1] for c in crops]


def embed_multiview(features: keras.Model, images: np.ndarray, batch_size: int = 256):
    """The mean embedding `[n, dim]` of the ten views of each image."""
    if images.ndim != 4:
        raise UserError(f"multiview embeddings need images [n, H, W, C]; got examples of shape "
                        f"{images.shape[1:]}. Write only the center embeddings.")
    views = [embed(features, view, batch_size) for view in multiview_crops(images)]
    return np.mean(views, axis=0).astype(np.float32)


CROPS = ("center", "multiview")


def write_embeddings(features: keras.Model, dataset, output_dir: str, name: str,
                     splits=SPLITS, batch_size: int = 256, crops=("center",)) -> dict:
    """Embeds every example of `dataset`'s splits; returns {split: pickle path} of the first
    crop written.

    Args:
      features: maps the dataset's (preprocessed) examples to feature vectors.
      dataset: a `FewShotDataset`.
      output_dir, name: files go to `<output_dir>/<name>/<crop>/`.
      splits: the splits to write (LEO reads train, val and test).
      batch_size: examples per forward pass.
      crops: "center" (each example as it is) and/or "multiview" (the mean of ten views).
    """
    if not name or any(c in name for c in "/\\"):
        raise UserError(f"name is a folder name such as 'Omniglot'; got {name!r}.")
    unknown = [c for c in crops if c not in CROPS]
    if unknown or not crops:
        raise UserError(f"crops must be some of {CROPS}; got {list(crops)}.")
    paths, class_names = {}, {}
    for split in splits:
        classes = dataset.split(split)
        inputs = classes.all_inputs()
        keys = []
        for index, count in enumerate(classes.class_counts):
            class_id = f"{split}{index:05d}"
            class_names[class_id] = classes.class_names[index]
            keys += [f"{split}-{class_id}-{class_id}_{i}.JPEG" for i in range(count)]
        for crop in crops:
            vectors = (embed(features, inputs, batch_size) if crop == "center" else
                       embed_multiview(features, inputs, batch_size))
            path = write_pickle(pickle_path(output_dir, name, crop, split), keys, vectors)
            paths.setdefault(split, path)
    for crop in crops:
        with open(os.path.join(output_dir, name, crop, "class_names.json"), "w") as f:
            json.dump(class_names, f, indent=1)
    return paths


def write_workdir_embeddings(workdir: str, output_dir: str, name: str | None = None,
                             data_dir: str | None = None, recalibrate: bool | None = None,
                             batch_size: int = 256, layer: str | None = None,
                             crops=("center",)) -> dict:
    """Writes embeddings of a trained run's dataset with the run's backbone.

    Args:
      workdir: a run written by bin/train.py (its config and newest checkpoint).
      output_dir, name: files go to `<output_dir>/<name>/center/` (name defaults to
        the run's dataset).
      data_dir: the dataset's files, as for training.
      recalibrate: recompute batch-norm statistics from the training split first;
        by default only for runs that never kept them (learner.batch_norm="batch_stats").
      batch_size: examples per forward pass.
      layer: the backbone layer whose (flattened) output is the embedding; None: the
        input of the classification head.
      crops: "center" and/or "multiview" (see the module docstring).
    """
    run = open_run(workdir, data_dir)
    features = feature_extractor(run.learner.feature_model(), layer)
    if recalibrate is None:
        recalibrate = run.config.learner.get("batch_norm") == "batch_stats"
    if recalibrate:
        recalibrate_batch_norm(features, run.dataset.split("train").all_inputs(), batch_size)
    return write_embeddings(features, run.dataset, output_dir, name or run.config.dataset,
                            batch_size=batch_size, crops=crops)

"""Datasets in their official on-disk formats, and the episode sampler.

`load_dataset(name, data_dir=None, **options)` returns a `FewShotDataset`; each
registered loader is a function `load(data_dir, **options)`, named in DATASETS as
"module" (its `load`) or "module:function".
"""

from __future__ import annotations

import importlib

from tfmeta.data.base import FewShotDataset
from tfmeta.data.episodes import ClassImages, episode_dataset

# name -> "module[:function]" of a `load(data_dir=None, **options) -> FewShotDataset`.
DATASETS = {
    "omniglot": "tfmeta.data.omniglot",
    "mnist": "tfmeta.data.mnist",  # mnist.npz (x_train, y_train, x_test, y_test)
    "mini_imagenet": "tfmeta.data.leo_embeddings:load_mini_imagenet",  # LEO's released embeddings
    "tiered_imagenet": "tfmeta.data.leo_embeddings:load_tiered_imagenet",  # LEO's released embeddings
    "embeddings": "tfmeta.data.leo_embeddings",  # any folder in the LEO layout
}


def load_dataset(name: str, data_dir: str | None = None, **options) -> FewShotDataset:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets: {sorted(DATASETS)}.")
    module, _, function = DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), function or "load")(data_dir, **options)


__all__ = ["ClassImages", "DATASETS", "FewShotDataset", "episode_dataset", "load_dataset"]

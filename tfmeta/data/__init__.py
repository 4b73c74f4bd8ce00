"""Datasets: the benchmarks in their official on-disk formats, a user's own images (a
folder of class folders, any TFDS dataset, arrays), and the episode sampler.

The package in layers, each importing only those below it:

    classes, shape            the class store interface (ClassStore, ClassImages) and
                              EpisodeShape / VariableEpisodes
    fixed_sampling,           what an episode is made of and its dict, for N-way K-shot
      variable_sampling       episodes and Meta-Dataset's variable ones
    sampling                  the one dispatch over an EpisodeShape, and episode numbering
    base, record_format       FewShotDataset and its cache; the records' on-disk format
    record_store,             records read as a ClassStore (RecordClasses); records written
      record_writer           from any FewShotDataset (bin/convert.py)
    images, own_data, folder, the loaders, each a `load(data_dir, **options)`
      tfds_catalog, ...
    record_stream             episodes streamed from records
    episodes                  the pipeline: episode_dataset over any ClassStore

A user's own data in one call: `from_folder("photos/")`, `from_arrays(images, labels)`,
`from_tf_dataset(pairs)`.

`load_dataset(name, data_dir=None, **options)` returns a `FewShotDataset`; each
registered loader is a function `load(data_dir, **options)`, named in DATASETS as
"module" (its `load`) or "module:function". `tfds:NAME` is TFDS dataset NAME
(`tfmeta.data.tfds_catalog`).
"""

from __future__ import annotations

import functools
import importlib
import inspect

from tfmeta.data import tfds_catalog
from tfmeta.data.base import FewShotDataset
from tfmeta.data.classes import ClassImages, ClassStore
from tfmeta.data.episodes import episode_dataset
from tfmeta.data.folder import load as from_folder
from tfmeta.data.own_data import from_arrays, from_tf_dataset
from tfmeta.data.shape import EpisodeShape, VariableEpisodes
from tfmeta.errors import UserError

# name -> "module[:function]" of a `load(data_dir=None, **options) -> FewShotDataset`.
DATASETS = {
    "folder": "tfmeta.data.folder",  # a folder of class folders of images (a user's own)
    "omniglot": "tfmeta.data.omniglot",
    "mnist": "tfmeta.data.mnist",  # mnist.npz (x_train, y_train, x_test, y_test)
    "mini_imagenet": "tfmeta.data.mini_imagenet",  # images (CSV or pickle cache) or LEO embeddings
    "tiered_imagenet": "tfmeta.data.tiered_imagenet",  # Ren et al.'s PNG pickles or LEO embeddings
    "cifar_fs": "tfmeta.data.cifar:load_cifar_fs",  # cifar-100-python, Bertinetto et al. split
    "fc100": "tfmeta.data.cifar:load_fc100",  # cifar-100-python, Oreshkin et al. split
    "embeddings": "tfmeta.data.leo_embeddings",  # any folder in the LEO layout
    "navigation_2d": "tfmeta.rl.navigation",  # simulated 2D navigation goals (MAML-RL)
    "sinusoid": "tfmeta.data.sinusoid",  # MAML's regression tasks, generated
    "records": "tfmeta.data.record_store",  # per-class TFRecords (bin/convert.py), streamed
}


TFDS_PREFIX = "tfds:"


def loader_function(name: str):
    """The `load(data_dir=None, **options)` function of dataset `name`."""
    if name.startswith(TFDS_PREFIX):
        return functools.partial(tfds_catalog.load, tfds_catalog.dataset_name(name))
    if name not in DATASETS:
        raise UserError(f"Unknown dataset {name!r}; valid datasets: {sorted(DATASETS)}, or "
                        f"{TFDS_PREFIX}NAME for any TFDS dataset (e.g. tfds:cifar100).")
    module, _, function = DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), function or "load")


def load_dataset(name: str, data_dir: str | None = None, download: bool = False,
                 **options) -> FewShotDataset:
    """Loads dataset `name` from `data_dir` (its default where it has one) with its options;
    `download=True` first fetches official files that are missing, where a public URL
    exists (the error says where to get the others)."""
    loader = loader_function(name)
    if download:
        if "download_missing" not in inspect.signature(loader).parameters:
            raise UserError(f"--download: {name!r} has no public download; "
                            f"{(loader.__doc__ or '').strip().splitlines()[0]}")
        options["download_missing"] = True
    return loader(data_dir, **options)


# name -> what its examples are ("images", "embeddings", "regression", "environment"), or
# "module:function" of an `input_kind(**options)` when the dataset's options decide. Known
# without reading files, so a learner and a dataset that do not fit are refused before
# anything is built.
INPUT_KINDS = {
    "folder": "images",
    "omniglot": "images",
    "mnist": "images",
    "mini_imagenet": "tfmeta.data.mini_imagenet:input_kind",
    "tiered_imagenet": "tfmeta.data.tiered_imagenet:input_kind",
    "cifar_fs": "images",
    "fc100": "images",
    "embeddings": "embeddings",
    "navigation_2d": "environment",
    "sinusoid": "regression",
}


def input_kind(name: str, options=None) -> str | None:
    """"images", "embeddings", or None when the registry does not say (see INPUT_KINDS)."""
    kind = "images" if name.startswith(TFDS_PREFIX) else INPUT_KINDS.get(name)
    if kind is None or ":" not in kind:
        return kind
    module, _, function = kind.partition(":")
    return getattr(importlib.import_module(module), function)(**dict(options or {}))


__all__ = ["ClassImages", "ClassStore", "DATASETS", "EpisodeShape", "FewShotDataset",
           "INPUT_KINDS", "TFDS_PREFIX", "VariableEpisodes", "episode_dataset", "from_arrays",
           "from_folder", "from_tf_dataset", "input_kind", "load_dataset", "loader_function"]

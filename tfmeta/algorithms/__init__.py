"""Meta-learning algorithms: Keras model subclasses that wrap a backbone.

`build_learner(config, input_shape)` builds the learner a config names; each
algorithm module exposes `from_config(config, input_shape)`.
"""

from __future__ import annotations

import importlib

from tfmeta.algorithms.base import MetaLearner
from tfmeta.algorithms.maml import MAML

# --algo name -> module with `from_config(config, input_shape) -> MetaLearner`.
ALGORITHMS = {
    "maml": "tfmeta.algorithms.maml",
    "leo": "tfmeta.algorithms.leo",
    "reptile": "tfmeta.algorithms.reptile",
    "reptile_gan": "tfmeta.algorithms.reptile_gan",
    "metasgd": "tfmeta.algorithms.metasgd",
    "anil": "tfmeta.algorithms.anil",
    "lstm_meta": "tfmeta.algorithms.lstm_meta",
    "metanet": "tfmeta.algorithms.metanet",
    "mann": "tfmeta.algorithms.mann",
    "protonet": "tfmeta.algorithms.prototypical",
    "matching": "tfmeta.algorithms.matching",
    "relation": "tfmeta.algorithms.relation",
    "siamese": "tfmeta.algorithms.siamese",
}


def algorithm_module(name: str):
    if name not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}; valid algorithms: {sorted(ALGORITHMS)}.")
    return importlib.import_module(ALGORITHMS[name])


def build_learner(config, input_shape) -> MetaLearner:
    return algorithm_module(config.algo).from_config(config, input_shape)


__all__ = ["ALGORITHMS", "MAML", "MetaLearner", "build_learner"]

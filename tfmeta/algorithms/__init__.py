"""Meta-learning algorithms: Keras model subclasses that wrap a backbone.

`learner_class(name, kind)` is the class a `--algo` name stands for on a dataset of that
input kind (`tfmeta.data.input_kind`), and `build_learner(config, input_shape)` builds the
learner a config describes through that class's `from_experiment` hook.
"""

from __future__ import annotations

import importlib
import inspect

from tfmeta.algorithms.base import MetaLearner
from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.maml import MAML
from tfmeta.data import input_kind
from tfmeta.errors import UserError

# --algo name -> "module:Class" of a MetaLearner subclass.
ALGORITHMS = {
    "maml": "tfmeta.algorithms.maml:MAML",
    "maml_plusplus": "tfmeta.algorithms.maml_plusplus:MAMLPlusPlus",
    "metasgd": "tfmeta.algorithms.metasgd:MetaSGD",
    "anil": "tfmeta.algorithms.anil:ANIL",
    "lstm_meta": "tfmeta.algorithms.lstm_meta:LSTMMetaLearner",
    "reptile": "tfmeta.algorithms.reptile:Reptile",
    "reptile_gan": "tfmeta.algorithms.reptile_gan:ReptileGAN",
    "leo": "tfmeta.algorithms.leo:LEO",
    "protonet": "tfmeta.algorithms.prototypical:PrototypicalNetwork",
    "matching": "tfmeta.algorithms.matching:MatchingNetwork",
    "relation": "tfmeta.algorithms.relation:RelationNetwork",
    "siamese": "tfmeta.algorithms.siamese:SiameseNetwork",
    "mann": "tfmeta.algorithms.mann:MANN",
    "metanet": "tfmeta.algorithms.metanet:MetaNet",
    "maml_rl": "tfmeta.algorithms.maml_rl:MAMLRL",
    "pretrain": "tfmeta.algorithms.pretrain:Pretrain",
}


# --algo name -> "module:Class" of its learner of regression tasks (input kind "regression"),
# where it has one: the MAML family's inner loops with MAMLRegression's loss and protocol.
REGRESSION_LEARNERS = {
    "maml": "tfmeta.algorithms.maml_regression:MAMLRegression",
    "maml_plusplus": "tfmeta.algorithms.maml_regression:MAMLPlusPlusRegression",
    "metasgd": "tfmeta.algorithms.maml_regression:MetaSGDRegression",
    "anil": "tfmeta.algorithms.maml_regression:ANILRegression",
}


def learner_class(name: str, kind: str | None = None) -> type[MetaLearner]:
    """The class `--algo=name` stands for; on a dataset of input kind "regression" its
    learner of regression tasks where it has one (`REGRESSION_LEARNERS`). A learner of no
    such kind is still returned: its `check_input_kind` says why it does not fit."""
    if name not in ALGORITHMS:
        raise UserError(f"Unknown algorithm {name!r}; valid algorithms: {sorted(ALGORITHMS)}.")
    location = REGRESSION_LEARNERS.get(name) if kind == "regression" else None
    module, _, cls = (location or ALGORITHMS[name]).partition(":")
    return getattr(importlib.import_module(module), cls)


def any_ways_algorithms(input_kind: str = "images") -> list:
    """The `--algo` names of the classifiers of `input_kind` that serve any number of ways
    whatever their arguments: those that keep `EpisodicClassifier.max_ways` (None)."""
    any_ways = inspect.getattr_static(EpisodicClassifier, "max_ways")
    return sorted(name for name in ALGORITHMS
                  if issubclass(cls := learner_class(name), EpisodicClassifier)
                  and input_kind in cls.input_kinds
                  and inspect.getattr_static(cls, "max_ways") is any_ways)


def prototype_head_algorithms() -> list:
    """The `--algo` names whose learners serve any number of classes with a fast head started
    from the support set's prototypes (`--set=learner.head=prototypes`, Proto-MAML): the
    MAML family's members that do not refuse one (`MAML.fast_head_refusal`)."""
    return sorted(name for name in ALGORITHMS
                  if issubclass(cls := learner_class(name), MAML) and cls.fast_head_refusal is None)


def build_learner(config, input_shape) -> MetaLearner:
    """The learner of `config.algo` for the config's dataset (`learner_class`)."""
    kind = input_kind(config.dataset, config.get("data"))
    return learner_class(config.algo, kind).from_experiment(config, input_shape)


__all__ = ["ALGORITHMS", "MAML", "REGRESSION_LEARNERS", "EpisodicClassifier", "MetaLearner",
           "any_ways_algorithms", "build_learner", "learner_class", "prototype_head_algorithms"]

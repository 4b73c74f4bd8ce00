"""Meta-learning algorithms: Keras model subclasses that wrap a backbone.

`recipe_of(name, kind)` is how a run builds and runs the learner a `--algo` name stands for on
a dataset of that input kind (`tfmeta.data.input_kind`): a `tfmeta.algorithms.recipe.Recipe`,
which the trainer and the config read; `learner_class(name, kind)` is its learner's class,
and `build_learner(config, input_shape)` the learner a config describes (`Recipe.build`).
"""

from __future__ import annotations

import importlib
import inspect

from tfmeta.algorithms.base import MetaLearner
from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.maml import MAML
from tfmeta.algorithms.recipe import Recipe
from tfmeta.data import input_kind
from tfmeta.errors import UserError

# --algo name -> "module:NAME" of its Recipe (in the learner's own module).
ALGORITHMS = {
    "maml": "tfmeta.algorithms.maml:RECIPE",
    "maml_plusplus": "tfmeta.algorithms.maml_plusplus:RECIPE",
    "metasgd": "tfmeta.algorithms.metasgd:RECIPE",
    "anil": "tfmeta.algorithms.anil:RECIPE",
    "lstm_meta": "tfmeta.algorithms.lstm_meta:RECIPE",
    "reptile": "tfmeta.algorithms.reptile:RECIPE",
    "reptile_gan": "tfmeta.algorithms.reptile_gan:RECIPE",
    "leo": "tfmeta.algorithms.leo:RECIPE",
    "protonet": "tfmeta.algorithms.prototypical:RECIPE",
    "matching": "tfmeta.algorithms.matching:RECIPE",
    "relation": "tfmeta.algorithms.relation:RECIPE",
    "siamese": "tfmeta.algorithms.siamese:RECIPE",
    "mann": "tfmeta.algorithms.mann:RECIPE",
    "metanet": "tfmeta.algorithms.metanet:RECIPE",
    "maml_rl": "tfmeta.algorithms.maml_rl:RECIPE",
    "pretrain": "tfmeta.algorithms.pretrain:RECIPE",
}


# --algo name -> "module:NAME" of the recipe of its learner of regression tasks (input kind
# "regression"), where it has one: the MAML family's inner loops with MAMLRegression's loss
# and protocol.
REGRESSION_RECIPES = {
    "maml": "tfmeta.algorithms.maml_regression:MAML_RECIPE",
    "maml_plusplus": "tfmeta.algorithms.maml_regression:MAML_PLUSPLUS_RECIPE",
    "metasgd": "tfmeta.algorithms.maml_regression:METASGD_RECIPE",
    "anil": "tfmeta.algorithms.maml_regression:ANIL_RECIPE",
}


def recipe_of(name: str, kind: str | None = None) -> Recipe:
    """The recipe of the learner `--algo=name` stands for; on a dataset of input kind
    "regression" that of its learner of regression tasks where it has one
    (`REGRESSION_RECIPES`). A learner of no such kind is still returned: its recipe's
    `check_input_kind` says why it does not fit."""
    if name not in ALGORITHMS:
        raise UserError(f"Unknown algorithm {name!r}; valid algorithms: {sorted(ALGORITHMS)}.")
    location = REGRESSION_RECIPES.get(name) if kind == "regression" else None
    module, _, attribute = (location or ALGORITHMS[name]).partition(":")
    return getattr(importlib.import_module(module), attribute)


def recipe_for(config) -> Recipe:
    """The recipe of `config.algo` for the config's dataset (`recipe_of`)."""
    return recipe_of(config.algo, input_kind(config.dataset, config.get("data")))


def learner_class(name: str, kind: str | None = None) -> type[MetaLearner]:
    """The learner class of `recipe_of(name, kind)`."""
    return recipe_of(name, kind).learner


def any_ways_algorithms(input_kind: str = "images") -> list:
    """The `--algo` names of the classifiers of `input_kind` that serve any number of ways
    whatever their arguments: those that keep `EpisodicClassifier.max_ways` (None)."""
    any_ways = inspect.getattr_static(EpisodicClassifier, "max_ways")
    return sorted(name for name in ALGORITHMS
                  if issubclass(cls := learner_class(name), EpisodicClassifier)
                  and input_kind in recipe_of(name).input_kinds
                  and inspect.getattr_static(cls, "max_ways") is any_ways)


def prototype_head_algorithms() -> list:
    """The `--algo` names whose learners serve any number of classes with a fast head started
    from the support set's prototypes (`--set=learner.head=prototypes`, Proto-MAML): the
    MAML family's members that do not refuse one (`MAML.fast_head_refusal`)."""
    return sorted(name for name in ALGORITHMS
                  if issubclass(cls := learner_class(name), MAML) and cls.fast_head_refusal is None)


def build_learner(config, input_shape) -> MetaLearner:
    """The learner of `config.algo` for the config's dataset (`recipe_for`)."""
    return recipe_for(config).build(config, input_shape)


__all__ = ["ALGORITHMS", "MAML", "REGRESSION_RECIPES", "EpisodicClassifier", "MetaLearner",
           "Recipe", "any_ways_algorithms", "build_learner", "learner_class",
           "prototype_head_algorithms", "recipe_for", "recipe_of"]

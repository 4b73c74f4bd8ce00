"""Runs recorded by earlier versions of tfmeta, read as this version writes them: one step,
`migrate(recorded) -> current`, which `tfmeta.config.load_config` applies to every
`config.json` it reads (as Keras keeps its `legacy/` apart). Nothing else in the package
knows the older forms, and each rule says what changed:

  learner.loss, MAML family       before regression was its own learner (`MAMLRegression`,
                                  which decides its loss): dropped.
  learner.head, ANIL, a layer     before ANIL's layer was `head_layer` (`head` is MAML's
                                  head mode: learned, prototypes, zeros): moved there.
  episode_sampler missing         before variable episodes: "fixed".
  episode_sampler a name,         before the sampler's settings were its section:
    variable_episodes a section   {"name": the name, the variable_episodes fields}.
  episode_grouping missing        before episodes within one group: "any".

And checkpoints (`checkpoint_learner`, which `tfmeta.training.checkpoints.restore_latest`
asks before restoring):

  learner/model/, learner/encoder/  before every learner called its wrapped network
                                  `backbone` (the MAML family and Reptile said `model`; the
                                  metric learners, supervised pre-training and MANN
                                  `encoder`): restored into `backbone`.

(Data fingerprints recorded before "v2:" are not rewritten here: whether the files are
still the same needs the files, `FewShotDataset.same_files`, which the trainer and
`tfmeta.training.run` ask.)
"""

from __future__ import annotations

import copy

import tensorflow as tf

# Top-level fields added since the first config.json, with what a run that did not record
# them did.
ADDED_FIELDS = {"episode_sampler": "fixed", "episode_grouping": "any"}


def _learner_class(algo):
    from tfmeta.algorithms import ALGORITHMS, learner_class

    return learner_class(algo) if algo in ALGORITHMS else None


def migrate(recorded: dict) -> dict:
    """`recorded` (a config.json's contents, as a dict) in this version's form; a new dict,
    equal to `recorded` where it is already current."""
    current = copy.deepcopy(recorded)
    for field, value in ADDED_FIELDS.items():
        current.setdefault(field, value)
    if isinstance(current["episode_sampler"], str):
        current["episode_sampler"] = {"name": current["episode_sampler"],
                                      **(current.pop("variable_episodes", None) or {})}
    learner = current.get("learner")
    cls = _learner_class(current.get("algo"))
    if not isinstance(learner, dict) or cls is None:
        return current
    from tfmeta.algorithms.anil import ANIL
    from tfmeta.algorithms.maml import HEADS, MAML

    if issubclass(cls, MAML):
        learner.pop("loss", None)
    if issubclass(cls, ANIL) and learner.get("head") not in (None, *HEADS):
        learner["head_layer"] = learner.pop("head")
    return current


# What a learner's wrapped network was called in checkpoints before it was `backbone`.
OLD_BACKBONE_NAMES = ("model", "encoder")


def checkpoint_learner(learner, saved_keys):
    """What to restore a checkpoint whose variables are `saved_keys` (`tf.train.list_variables`
    names) into: `learner` itself, or, for a checkpoint of an earlier version that saved the
    learner's backbone under an old name, a stand-in with the learner's children where the
    backbone is reached by that name (the object graph matches it; the variables restored
    are the learner's own)."""
    children = tf.train.TrackableView(learner).children(learner)
    if "backbone" not in children or any(k.startswith("learner/backbone/") for k in saved_keys):
        return learner
    old = next((name for name in OLD_BACKBONE_NAMES if name not in children and any(
        k.startswith(f"learner/{name}/") for k in saved_keys)), None)
    if old is None:
        return learner
    stand_in = tf.Module()  # (tracks what is set on it, as a Keras layer does)
    for name, child in children.items():
        setattr(stand_in, old if name == "backbone" else name, child)
    return stand_in


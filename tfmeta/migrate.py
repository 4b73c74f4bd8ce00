"""Runs recorded by earlier versions of tfmeta, read as this version writes them: one step,
`migrate(recorded) -> current`, which `tfmeta.config.load_config` applies to every
`config.json` it reads (as Keras keeps its `legacy/` apart). Nothing else in the package
knows the older forms, and each rule says what changed:

  learner.loss, MAML family       before regression was its own learner (`MAMLRegression`,
                                  which decides its loss): dropped.
  learner.head, ANIL, a layer     before ANIL's layer was `head_layer` (`head` is MAML's
                                  head mode: learned, prototypes, zeros): moved there.
  episode_sampler missing         before variable episodes: "fixed".
  episode_grouping missing        before episodes within one group: "any".

(Data fingerprints recorded before "v2:" are not rewritten here: whether the files are
still the same needs the files, `FewShotDataset.same_files`, which the trainer and
`tfmeta.training.run` ask.)
"""

from __future__ import annotations

import copy

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

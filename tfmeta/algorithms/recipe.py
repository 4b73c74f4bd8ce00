"""`Recipe`: how a run builds and runs one learner, apart from the learner itself.

A learner (`tfmeta.algorithms.base.MetaLearner`, a Keras model) holds the method: its
meta-loss, steps, episodes, meta-test and export. What only the trainer and the config read
is here, one recipe per learner, in the learner's own module and registered under its
`--algo` name (`tfmeta.algorithms.ALGORITHMS`): what data it takes, which config field sizes
its batches, whether XLA and which CPU threading suit it, and how a config becomes the
learner. Keras splits its `Trainer` from the model and the backend's step runner the same
way. A recipe wraps its learner's class (`recipe.learner`), so one recipe class serves a
family (`MAMLRecipe(MAMLPlusPlus)`).

Hooks, each with a default here:

  input_kinds                              what its examples may be (tfmeta.data.INPUT_KINDS)
  check_input_kind(kind, dataset)          an error naming what fits instead
  batch_size_field                         the config field of its training batch size
  min_ways                                 the fewest classes a task may have
  fixed_arguments                          constructor arguments a config does not set
  xla_auto, xla_auto_reason                whether `jit_compile="auto"` may turn XLA on
  cpu_threads_auto(config, cores, jit_compile)
                                           what `cpu_threads="auto"` takes for it
  arguments_from_data(arguments, dataset)  constructor arguments the data decides
  build(config, input_shape)               the learner a config describes
"""

from __future__ import annotations

from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config

# What `check_input_kind` suggests for examples of a kind a learner does not take.
KIND_HINTS = {
    "regression": "regression tasks need a learner of them: --algo=maml (which learns them "
                  "as MAMLRegression), metasgd, anil or maml_plusplus",
    "environment": "it is a reinforcement-learning task distribution; use --algo=maml_rl",
    "embeddings": "choose the dataset's images (--set=data.embeddings=None) or a learner of "
                  "embeddings such as --algo=leo",
}


class Recipe:
    """How a run builds and runs `learner` (a MetaLearner subclass); see the module
    docstring for the hooks."""

    # What its examples may be (tfmeta.data.INPUT_KINDS).
    input_kinds: tuple = ("images",)
    # The config field that sizes its training batches (split over workers and replicas).
    batch_size_field = "meta_batch_size"
    # The fewest classes a task may have (the config checks `ways` against it).
    min_ways: int = 2
    # Constructor arguments a config does not set (`build` does, or the learner's default).
    fixed_arguments: tuple = ()
    # Whether `jit_compile="auto"` may turn XLA on (Keras then does so with a GPU and no
    # distribution strategy); a learner that XLA compiles badly says no, with its reason.
    xla_auto = True
    xla_auto_reason = ""

    def __init__(self, learner: type):
        self.learner = learner

    @property
    def name(self) -> str:
        return self.learner.__name__

    def __repr__(self):
        return f"{type(self).__name__}({self.name})"

    def check_input_kind(self, kind: str | None, dataset: str) -> None:
        """Raises a UserError if the learner cannot take `dataset`'s examples (`kind`:
        "images", "embeddings", "regression" or "environment"; None: unknown, not checked)."""
        if kind is None or kind in self.input_kinds:
            return
        hint = ("write embeddings of an image dataset with bin/write_embeddings.py, or choose "
                "the dataset's embedding files (data.embeddings)"
                if kind == "images" and "embeddings" in self.input_kinds else
                KIND_HINTS.get(kind, f"choose a dataset of {' or '.join(self.input_kinds)}"))
        raise UserError(f"{self.name} takes {' or '.join(self.input_kinds)}, but "
                        f"--dataset={dataset} with these options gives {kind}; {hint}.")

    def cpu_threads_auto(self, config, cores: int, jit_compile) -> tuple[str, str]:
        """What `config.cpu_threads="auto"` takes for `config` on `cores` cores,
        `jit_compile` being the run's ("auto", True or False): ("ops" or "tasks", why)
        (tfmeta.training.cpu_threads). Each op on every core, unless a learner knows
        better."""
        del config, cores, jit_compile
        return "ops", f"{self.name}'s ops are split over the cores"

    def arguments_from_data(self, arguments, dataset) -> dict:
        """Constructor arguments that the data decides where the config leaves them open
        (e.g. Pretrain's head size on a user's dataset); the trainer records them in
        config.json. `arguments`: the config's `learner` section."""
        del arguments, dataset
        return {}

    def build(self, config, input_shape):
        """The learner `config` describes: `learner(backbone, **config.learner)`, the
        backbone named by `config.model`."""
        return self.learner(backbone_from_config(config.model, input_shape), **config.learner)

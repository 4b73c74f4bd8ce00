"""The checks `train` makes before a step runs, each refusing in one line what would
otherwise fail later or quietly mix two experiments:

- the workdir: a run resumed in it must be the same experiment (`IDENTITY_FIELDS`,
  `learner_identity`, `check_workdir_config`), keeping the test-time options its
  config.json recorded;
- the episodes: variable episodes only for a learner that takes them, naming those that
  do (`check_episode_sampler`, `variable_episode_learners`; bin/evaluate.py asks too);
- the memory: a step whose activations cannot fit in this machine's memory
  (`check_memory`, from `activation_bytes`), before TensorFlow aborts in C++.
"""

from __future__ import annotations

import inspect
import json
import math
import os

from tfmeta.algorithms import (
    ALGORITHMS,
    build_learner,
    learner_class,
    prototype_head_algorithms,
)
from tfmeta.config import apply_overrides, get_config, load_config
from tfmeta.episode_spec import variable_episodes
from tfmeta.errors import UserError
from tfmeta.training.checkpoints import has_checkpoint
from tfmeta.training.run import CONFIG_FILE

# Changing these in a workdir that already holds a run would mix two experiments.
IDENTITY_FIELDS = ("algo", "dataset", "model", "learner", "ways", "shots", "episode_sampler",
                   "episode_grouping", "data_source")
# Learner options of what happens at test time only (fine-tuning, tfmeta.algorithms.finetune,
# whose learning rate bin/evaluate.py --select_finetune_lr records in config.json): kept from
# a run's config.json when it resumes.
TEST_TIME_OPTIONS = ("finetune_steps", "finetune_lr", "finetune_augment", "finetune_optimizer")
# Learner options that do not change what training computes, so a run may resume with
# others: how a meta-step runs (e.g. on a machine with a GPU, where task_parallel="auto"
# vectorizes), and the test-time ones.
NOT_TRAINING_OPTIONS = ("task_parallel", "parallel_tasks", "recompute", *TEST_TIME_OPTIONS)


def learner_identity(learner) -> dict:
    """A config's `learner` section as the experiment it names: without
    `NOT_TRAINING_OPTIONS`. (A run's config.json in an older form is read in this version's:
    `tfmeta.migrate`.)"""
    return {k: v for k, v in dict(learner or {}).items() if k not in NOT_TRAINING_OPTIONS}


def sampler_identity(sampler) -> dict:
    """A config's `episode_sampler` section as the experiment it names: fixed episodes
    whatever the variable sampler's bounds (which they do not read)."""
    sampler = dict(sampler or {})
    return {"name": "fixed"} if sampler.get("name", "fixed") == "fixed" else sampler


def check_workdir_config(config, workdir, dataset=None):
    """Refuses to resume a run that is a different experiment (once it has a checkpoint;
    a config.json without one is from a run that never trained, and is replaced), and
    keeps the test-time options config.json recorded (`TEST_TIME_OPTIONS`: a fine-tuning
    rate bin/evaluate.py --select_finetune_lr chose), which the training command does not
    say."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path) or not has_checkpoint(workdir):
        return
    previous = load_config(path)
    for field in IDENTITY_FIELDS:
        old, new = previous.get(field), config.get(field)
        old = old.to_dict() if hasattr(old, "to_dict") else old
        new = new.to_dict() if hasattr(new, "to_dict") else new
        if field == "learner" and old is not None:
            old, new = learner_identity(old), learner_identity(new)
        if field == "episode_sampler" and old is not None:
            old, new = sampler_identity(old), sampler_identity(new)
        if field == "data_source" and old:
            keys = ("fingerprint", "class_split", "backbone")
            old, new = ({k: old.get(k) for k in keys if old.get(k) is not None},
                        {k: (new or {}).get(k) for k in keys if old.get(k) is not None})
            recorded = old.get("fingerprint", "")
            if recorded and not recorded.startswith("v2:") and dataset is not None and \
                    dataset.same_files(recorded):
                new["fingerprint"] = recorded  # recorded by an earlier version, still the same
        if old is not None and json.loads(json.dumps(old)) != json.loads(json.dumps(new)):
            raise UserError(
                f"{workdir} holds a run with {field}={old!r}, but this run has {field}={new!r}. "
                "Use a new --workdir, or the original settings to resume.")
    kept = {k: previous.learner[k] for k in TEST_TIME_OPTIONS if k in previous.get("learner", {})}
    if kept:
        with config.learner.unlocked():
            config.learner.update(kept)


def check_episode_sampler(learner, config, input_shape) -> None:
    """Refuses, in one line, variable episodes (`episode_sampler.name="variable"`) for a
    learner that cannot take them (its `takes_padded_episodes` False), naming those that
    can."""
    if variable_episodes(config) is None or learner.takes_padded_episodes:
        return
    raise UserError(
        f"--algo={config.algo} with these settings does not take variable episodes "
        f"(episode_sampler.name=variable); learners that do: "
        f"{', '.join(variable_episode_learners(config.dataset, input_shape))}. Use one of "
        "them, or --set=episode_sampler.name=fixed.")


def variable_episode_learners(dataset: str, input_shape) -> list:
    """The registered learners that take variable episodes, as `--algo` choices: those
    whose class says so, and those whose arguments decide it (a property), built from their
    configs for `dataset`, as they are and with the prototype head of
    `tfmeta.algorithms.prototype_head_algorithms` (MAML's)."""

    found, prototype_heads = [], prototype_head_algorithms()
    for algo in sorted(ALGORITHMS):
        declared = inspect.getattr_static(learner_class(algo), "takes_padded_episodes")
        if not isinstance(declared, property):
            if declared:
                found.append(f"--algo={algo}")
            continue
        variants = [[], ["learner.head=prototypes"]] if algo in prototype_heads \
            else [[]]
        for overrides in variants:
            config = apply_overrides(get_config(algo, dataset), overrides)
            if build_learner(config, input_shape).takes_padded_episodes:
                found.append(" ".join([f"--algo={algo}", *(f"--set={o}" for o in overrides)]))
                break
    return found


# Floats of activations a backbone keeps per input value and filter, for the backward pass
# (conv, batch norm and ReLU outputs of the first stage, later stages adding half again).
ACTIVATIONS_PER_VALUE = 6


def episode_examples(config) -> int:
    """Examples of one training episode: N * (K + Q), or a padded variable episode's slots."""
    variable = variable_episodes(config)
    if variable is not None:
        return variable.support_slots + variable.query_slots
    return config.ways * ((config.train_shots or config.shots) + config.queries)


def activation_bytes(config, input_shape) -> int:
    """A rough lower bound of the memory one training step's activations take: the
    meta-batch's examples (or Pretrain's batch), times the first stage's width, times
    `ACTIVATIONS_PER_VALUE`, in float32."""
    examples = config.get("batch_size") or config.meta_batch_size * episode_examples(config)
    values = math.prod(input_shape)
    channels = input_shape[-1] if len(input_shape) == 3 else 1
    width = max(1, (config.model.get("filters") or channels) / channels)
    return int(examples * values * width * ACTIVATIONS_PER_VALUE * 4)


def check_memory(config, input_shape) -> None:
    """Refuses, in one line, a configuration whose step cannot fit in this machine's memory
    (an extra zero in meta_batch_size would otherwise abort the process in C++)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    needed = activation_bytes(config, input_shape)
    if needed > total:
        sizes = (f"batch_size={config.batch_size}" if config.get("batch_size") else
                 f"meta_batch_size={config.meta_batch_size} x {episode_examples(config)} "
                 "padded examples" if variable_episodes(config) is not None else
                 f"meta_batch_size={config.meta_batch_size} x ways={config.ways} x "
                 f"{(config.train_shots or config.shots) + config.queries} examples")
        raise UserError(
            f"{sizes} of shape {tuple(input_shape)} need about {needed / 2 ** 30:.0f} GiB of "
            f"activations per step (estimated), more than this machine's "
            f"{total / 2 ** 30:.0f} GiB of memory; use a smaller batch, fewer ways or "
            "examples, or smaller images.")

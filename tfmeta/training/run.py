"""A run's workdir, and opening it again: `open_run(workdir)` is what evaluation, export and
the embedding writer start from.

Workdir layout:
    config.json          the run's full config, with the data it was trained on (data_source)
    checkpoints/         tf.train checkpoints, ckpt-<step> (tfmeta.training.checkpoints)
    logs/{train,validation,eval}/   TensorBoard
    eval.json            the newest bin/evaluate.py result
    export/              the SavedModel
    .lock                held (an OS file lock) while a trainer runs in the workdir
                         (tfmeta.training.lock)
    workertemp_<task>/   a non-chief worker's own lock, checkpoints and logs under
                         --strategy=multi_worker, deleted when it finishes
"""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow as tf

from tfmeta.algorithms import recipe_for
from tfmeta.algorithms.task_loop import TaskLoopLearner
from tfmeta.config import apply_overrides, jit_compile_flag, load_config, validate_config
from tfmeta.data import load_dataset
from tfmeta.episode_spec import DataSpec
from tfmeta.models import copy_backbone_weights, is_frozen
from tfmeta.training import cpu_threads
from tfmeta.training.checkpoints import restore_latest
from tfmeta.training.features import frozen_features, learner_config, train_feature_mean
from tfmeta.training.optimizer import make_optimizer

CONFIG_FILE = "config.json"
EVAL_FILE = "eval.json"
LOGS = "logs"
EXPORT = "export"


# ------------------------------------------------------------------------- learner
def build_compiled_learner(config, input_shape, strategy=None, init_from: str | None = None):
    """Builds and compiles the learner (and its optimizer's slots) inside the strategy; with
    `init_from` (a run's workdir, the trainer passes `config.model.init_from` to a fresh
    run), its backbone starts from that run's backbone weights."""
    strategy = strategy or tf.distribute.get_strategy()
    if is_frozen(config.model):
        init_from = None  # applied to the frozen backbone (tfmeta.training.features)
    source = init_source(init_from)
    with strategy.scope():
        recipe = recipe_for(config)
        learner = recipe.build(learner_config(config), input_shape)
        if source is not None:
            copy_backbone_weights(source, learner.feature_model(), init_from)
        requested = jit_compile_flag(config.jit_compile)
        declined = requested == "auto" and not recipe.xla_auto
        learner.compile(optimizer=make_optimizer(config.optimizer, config.num_steps),
                        jit_compile=False if declined else requested)
        learner.optimizer.build(learner.trainable_variables)
    why = (f" for {recipe.name}: {recipe.xla_auto_reason}" if declined else
           " (auto: on with a GPU and no distribution strategy)" if requested == "auto" else "")
    logging.info("jit_compile=%s: XLA %s%s.", config.jit_compile,
                 "on" if learner.jit_compile else "off", why)
    if isinstance(learner, TaskLoopLearner):
        logging.info("task_parallel=%s: %s.", learner.task_parallel, learner.task_loop_form())
    return learner


# ------------------------------------------------------------------------------ data
def data_source(dataset) -> dict:
    """What config.json records of the data a run trained on: its folder, the fingerprint
    of its files, and the classes of each split where the loader chose them."""
    return {"data_dir": dataset.data_dir, "fingerprint": dataset.fingerprint(),
            "class_split": dataset.chosen_split}


def recorded_class_split(config) -> dict | None:
    """The split config.json records (see `data_source`), as a plain dict, or None."""
    source = config.get("data_source") or {}
    split = source.get("class_split") if hasattr(source, "get") else None
    return split.to_dict() if hasattr(split, "to_dict") else split


def load_run_dataset(config, data_dir: str | None = None):
    """The dataset a run was trained on: from `data_dir` if given (with a warning if its
    files differ from the recorded ones), else from the folder config.json records.

    Raises FileNotFoundError when the recorded data is not there or has changed, so a
    run is never silently scored on other data (e.g. the bundled sets).
    """
    recorded = config.data_source.to_dict() if config.get("data_source") else {}
    recorded_dir, recorded_print = recorded.get("data_dir"), recorded.get("fingerprint")
    explicit = data_dir is not None
    if not explicit and recorded_dir is not None:
        if not all("://" in d or os.path.isdir(d)  # (records: A,B, maybe gs:// URLs)
                   for d in recorded_dir.split(",")):
            raise FileNotFoundError(
                f"This run was trained on the {config.dataset} data in {recorded_dir}, which is "
                "not there any more; pass --data_dir=<a folder with the same files>.")
        data_dir = recorded_dir
    options = dict(config.data)
    if recorded_class_split(config):
        options["class_split"] = recorded_class_split(config)  # the classes it trained on
    dataset = load_dataset(config.dataset, data_dir, **options)
    if recorded_print and not dataset.same_files(recorded_print):
        where = dataset.data_dir or "the default location"
        message = (f"The {config.dataset} files in {where} differ from the ones this run was "
                   f"trained on (recorded in config.json: {recorded_dir or 'default'}, "
                   f"fingerprint {recorded_print}; found {dataset.fingerprint()}).")
        if not explicit:
            raise FileNotFoundError(message + " Pass --data_dir=<the training data> to use it.")
        logging.warning("%s Using them because --data_dir says so.", message)
    return dataset


# ------------------------------------------------------------------------ opening a run
@dataclasses.dataclass
class Run:
    """A trained run, opened: its config, dataset, learner (restored) and step."""

    workdir: str
    config: object
    dataset: object
    learner: object
    step: int

    def path(self, *parts) -> str:
        return os.path.join(self.workdir, *parts)

    @property
    def spec(self) -> DataSpec:
        """The run's episodes and evaluation protocol, as the learner's data hooks take them."""
        return DataSpec.from_config(self.config)


def init_source(init_from: str | None):
    """The backbone of the run `init_from` (a workdir) names, to start from; or None."""
    return open_run(init_from).learner.feature_model() if init_from else None


def learner_dataset(config, dataset):
    """`dataset` as the learner of `config` sees it: itself, or with a frozen backbone
    (`model.trainable=none`) its features, computed once (`tfmeta.training.features`)."""
    if not is_frozen(config.model):
        return dataset
    return frozen_features(config, dataset, init_source(config.model.get("init_from")))


def open_run(workdir: str, data_dir: str | None = None, strategy=None, overrides=()) -> Run:
    """Loads a run's config and data, builds its learner and restores the newest checkpoint.

    `overrides`: `key=value` strings, as `--set` takes them, applied to the config before
    anything is built and validated with it (e.g. `learner.finetune_steps=50`, a test-time
    option of the learner); config.json is left as it is.
    """
    config = load_config(os.path.join(workdir, CONFIG_FILE))
    if overrides:
        validate_config(apply_overrides(config, overrides))
    cpu_threads.configure(config)  # first, where this process has run no TensorFlow op yet
    dataset = learner_dataset(config, load_run_dataset(config, data_dir))
    learner = build_compiled_learner(config, dataset.input_shape, strategy)
    step = restore_latest(learner, workdir, require=True)
    if learner.needs_feature_mean:  # a head that centres, or a calibrated threshold
        learner.feature_mean = train_feature_mean(learner, dataset)
    return Run(workdir, config, dataset, learner, step)

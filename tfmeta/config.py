"""Experiment configs: loading `configs/<algo>.py`, `--set` overrides, one validation, and
saving them with a run.

The schema is closed. The top-level fields are those `configs/base.py` and the algorithm's
config declare; an override of any other field is an error listing the valid ones. The
three argument sections take exactly what their target accepts:

    learner  the algorithm's constructor arguments (those with defaults)
    model    the backbone function's arguments, plus `name` ("none": no backbone) and
             `init_from` (a run whose backbone weights to start from)
    data     the dataset loader's options

`validate_config` checks all of it, and every numeric setting against its allowed range,
before anything is built.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import sys

import ml_collections
from absl import logging

from tfmeta.data.folder import CLASS_DEPTH
from tfmeta.data.images import IMAGE_PIXELS
from tfmeta.data.shape import EPISODE_GROUPINGS, VariableEpisodes, sampler_settings
from tfmeta.episode_spec import eval_spec, sampler_options  # noqa: F401 (their old home)
from tfmeta.errors import UserError
from tfmeta.files import atomic_write
from tfmeta.migrate import migrate
from tfmeta.models import COMMON_FIELDS, NO_BACKBONE, external
from tfmeta.ranges import (
    CPU_THREADS,
    EVAL_EPISODES,
    FRACTION,
    IMAGE_SIZE,
    POSITIVE,
    STRATEGY,
    Choice,
    Range,
    check_all,
)

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
SECTIONS = ("learner", "model", "data")
# Arguments a section never sets: the builder passes them.
SUPPLIED = {"model": ("input_shape", "num_classes"), "data": ("data_dir", "download_missing")}

OPTIONAL_POSITIVE_INT = Range(1, integer=True, optional=True)
# Upper bounds: far above any published setting, low enough that a typo (an extra few
# zeros) is refused here rather than stalling or exhausting memory later.
EPISODE_SIZE = Range(1, 1000, integer=True)
OPTIONAL_EPISODE_SIZE = Range(1, 1000, integer=True, optional=True)
BATCH = Range(1, 4096, integer=True)
STEPS = Range(1, 10 ** 9, integer=True)
# Allowed ranges of the numeric fields every config has (and `batch_size`, Pretrain's).
FIELD_RANGES = {
    "seed": Range(0, 2 ** 31 - 1, integer=True), "ways": EPISODE_SIZE, "shots": EPISODE_SIZE,
    "train_shots": OPTIONAL_EPISODE_SIZE, "queries": EPISODE_SIZE,
    "meta_batch_size": BATCH, "eval_ways": OPTIONAL_EPISODE_SIZE,
    "eval_shots": OPTIONAL_EPISODE_SIZE, "eval_queries": OPTIONAL_EPISODE_SIZE,
    "eval_episodes": EVAL_EPISODES, "eval_meta_batch_size": BATCH,
    "val_episodes": Range(1, 10 ** 5, integer=True), "num_steps": STEPS,
    "checkpoint_every": STEPS, "log_every": STEPS, "keep_checkpoints": Range(1, 1000, integer=True),
    "batch_size": Range(1, 65536, integer=True),
    "cluster_join_timeout": Range(1, 86400, integer=True), "cpu_threads": CPU_THREADS,
}
# Loader options that are numbers, where a loader takes them (`data.*`; `channels`, a
# choice, is the own-data loaders' to check).
DATA_RANGES = {
    "image_size": IMAGE_SIZE, "max_per_class": OPTIONAL_POSITIVE_INT,
    "split_seed": Range(0, 2 ** 31 - 1, integer=True), "class_depth": CLASS_DEPTH,
    "max_image_pixels": IMAGE_PIXELS,
}
OPTIMIZER_RANGES = {
    "learning_rate": POSITIVE, "clipnorm": Range(0, low_open=True, optional=True),
    "decay_steps": OPTIONAL_POSITIVE_INT,
    "decay_rate": Range(0, 1, low_open=True, optional=True),
}
AUGMENT_RANGES = {"shift": FRACTION, "rotation": Range(0, 180), "scale": FRACTION}
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}


def configs_package(configs_dir: str | None = None) -> str:
    """The package of the algorithm configs: `tfmeta.configs` (the repository's `configs/`,
    which an install ships inside the package, see setup.py), or for a source checkout run
    without installing, the repository's `configs`; `configs_dir` names another folder."""
    if configs_dir is None:
        try:
            if importlib.util.find_spec("tfmeta.configs") is not None:
                return "tfmeta.configs"
        except ModuleNotFoundError:
            pass
        configs_dir = REPO_CONFIGS
    parent = os.path.dirname(os.path.abspath(configs_dir))
    if parent not in sys.path:
        sys.path.insert(0, parent)
    return os.path.basename(os.path.abspath(configs_dir))


def get_config(algo: str, dataset: str, setting: str | None = None,
               configs_dir: str | None = None) -> ml_collections.ConfigDict:
    """Imports the configs' `<algo>` module (`configs_package`) and calls its
    `get_config(dataset[, setting])`.

    The result is locked: overrides may change fields, not add them (see `apply_overrides`).
    """
    from tfmeta.data import DATASETS, TFDS_PREFIX

    module = config_module(algo, configs_dir)
    if dataset.startswith(TFDS_PREFIX):
        from tfmeta.data.tfds_catalog import dataset_name

        dataset_name(dataset)
    elif dataset not in DATASETS:
        raise UserError(f"Unknown --dataset {dataset!r}; valid datasets: {sorted(DATASETS)}, "
                        f"or {TFDS_PREFIX}NAME for a TFDS dataset (e.g. tfds:cifar100).")
    config = module.get_config(dataset, setting) if setting else module.get_config(dataset)
    config.lock()
    return config


def tiny_overrides(algo: str, configs_dir: str | None = None) -> list[str]:
    """The `--set` overrides that shrink `algo`'s config to a learner that builds and
    exports in seconds (a few filters, one test-time step): its config module's `TINY`.

    Tests that build every learner take them from here (tests/test_serving_fuzz.py), so a
    new learner declares its own in `configs/<algo>.py` and no test lists it.
    """
    module = config_module(algo, configs_dir)
    if not hasattr(module, "TINY"):
        raise AttributeError(
            f"{module.__name__} (configs/{algo}.py) has no TINY; add the overrides that make "
            'its learner tiny, e.g. TINY = ("model.filters=4",).')
    return list(module.TINY)


def config_module(algo: str, configs_dir: str | None = None):
    """The configs' `<algo>` module (`configs_package`)."""
    from tfmeta.algorithms import ALGORITHMS

    if algo not in ALGORITHMS:
        raise UserError(f"Unknown --algo {algo!r}; valid algorithms: {sorted(ALGORITHMS)}.")
    package = configs_package(configs_dir)
    try:
        return importlib.import_module(f"{package}.{algo}")
    except ModuleNotFoundError as error:
        if error.name != f"{package}.{algo}":
            raise
        raise FileNotFoundError(f"No config for {algo!r}: {package}.{algo} (configs/{algo}.py) "
                                "is missing; reinstall tfmeta.") from None


# ------------------------------------------------------------------ section schemas
def _keyword_arguments(function, stop_at=None) -> dict:
    """Name -> default of the arguments of `function` that have defaults; for a class, of
    its `__init__` and, while those pass `**kwargs` on, of its bases' (up to `stop_at`)."""
    found = {}
    targets = ([c.__init__ for c in function.__mro__ if c is not object]
               if inspect.isclass(function) else [function])
    for target in targets:
        if stop_at is not None and getattr(target, "__qualname__", "").startswith(stop_at):
            break
        parameters = inspect.signature(target).parameters.values()
        for p in parameters:
            if p.default is not inspect.Parameter.empty and p.kind in (
                    p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                found.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return found


def section_schema(config, section: str) -> dict:
    """The keys `config.<section>` may hold (name -> the target's default)."""
    if section == "learner":
        from tfmeta.algorithms import recipe_of

        chosen = recipe_of(config.algo)
        return {k: v for k, v in _keyword_arguments(chosen.learner, stop_at="MetaLearner.").items()
                if k not in chosen.fixed_arguments}
    if section == "model":
        from tfmeta.models import backbone_function

        name = config.model.get("name", NO_BACKBONE)
        schema = {} if name == NO_BACKBONE else _keyword_arguments(backbone_function(name))
        schema = {k: v for k, v in schema.items() if k not in SUPPLIED["model"]}
        # init_from: a workdir whose backbone weights the learner's backbone starts from;
        # trainable: all, none or last:K (tfmeta.models.blocks).
        return {"name": name, **COMMON_FIELDS, **schema}
    if section == "data":
        from tfmeta.data import loader_function

        schema = _keyword_arguments(loader_function(config.dataset))
        return {k: v for k, v in schema.items() if k not in SUPPLIED["data"]}
    raise UserError(f"Unknown config section {section!r}; sections: {list(SECTIONS)}.")


# ------------------------------------------------------------------------ overrides
def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as downsample=strided


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """Applies `key=value` strings (dotted keys for nested fields) to `config`.

    Values are Python literals, parsed without evaluating code; a field keeps its type
    (ints widen to floats; a text field takes the text as written). An unknown field is
    an error that lists the valid ones; `learner.*`, `model.*` and `data.*` accept any
    argument of their target (see `section_schema`).
    """
    for item in overrides or ():
        if "=" not in item:
            raise UserError(f"An override is key=value, e.g. --set=ways=20; got {item!r}.")
        key, text = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = config
        for part in parents:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise UserError(f"Unknown config section {part!r} in {key!r}; valid fields: "
                                f"{sorted(node.keys())}.")
            node = node[part]
        value = _parse_value(text)
        if leaf not in node:
            if len(parents) == 1 and parents[0] in SECTIONS:
                schema = section_schema(config, parents[0])
                if leaf not in schema:
                    raise UserError(f"Unknown config field {key!r}; valid fields of "
                                    f"{parents[0]}: {sorted(schema)}.")
                with node.unlocked():
                    node[leaf] = value
                continue
            raise UserError(f"Unknown config field {key!r}; valid fields here: "
                            f"{sorted(node.keys())}.")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            example = f"{key}.name={text}" if "name" in node[leaf] else f"{key}.<field>={text}"
            raise UserError(f"{key} is a section of fields {sorted(node[leaf].keys())}; set "
                            f"one of them, e.g. --set={example}.")
        if isinstance(node[leaf], float) and isinstance(value, int) and not isinstance(value,
                                                                                       bool):
            value = float(value)
        if isinstance(node[leaf], str) and not isinstance(value, (str, type(None))):
            value = text.strip()  # a text field takes the text: jit_compile=True -> "True"
        try:
            node[leaf] = value
        except TypeError as error:
            raise UserError(f"Bad value for {key}: {text!r} ({error}).") from None
        if parents == ["model"] and leaf == "name":
            _drop_other_backbone_fields(config)
            _raw_images_for_external_backbone(config)
    return config


def _drop_other_backbone_fields(config) -> None:
    """After `--set=model.name=...`, the config's fields for the backbone it named before
    that the new one does not take (Conv4's `downsample` for `resnet12`) are dropped."""
    schema = section_schema(config, "model")
    stale = [k for k in config.model if k not in schema]
    if stale:
        logging.info("model.name=%s: dropping the previous backbone's fields %s.",
                     config.model.name, stale)
        with config.model.unlocked():
            for k in stale:
                del config.model[k]


def _raw_images_for_external_backbone(config) -> None:
    """After `--set=model.name=` names a backbone from outside (which normalizes images in
    [0, 1] itself, `tfmeta.models.external`), the loader's own normalization is turned off
    where it has one (`data.normalize=False`)."""
    if external.split_name(config.model.name)[0] is None:
        return
    if "normalize" in section_schema(config, "data") and config.data.get("normalize", True):
        logging.info("model.name=%s normalizes the images itself: data.normalize=False.",
                     config.model.name)
        with config.data.unlocked():
            config.data["normalize"] = False


# ------------------------------------------------------------------------ validation
def validate_config(config) -> None:
    """Raises a ValueError naming the field and its allowed values unless `config` is
    runnable: known sections and arguments, known names, numbers in range."""
    from tfmeta.algorithms import recipe_of
    from tfmeta.data import input_kind
    from tfmeta.models import blocks, check_backbone_name

    name = config.model.get("name", NO_BACKBONE)
    try:
        check_backbone_name(name)
    except ValueError as error:
        raise UserError(f"model.name: {error}") from None
    data_options = section_schema(config, "data")
    kind = input_kind(config.dataset, {k: v for k, v in config.data.items() if k in data_options})
    chosen = recipe_of(config.algo, kind)
    chosen.check_input_kind(kind, config.dataset)
    for section in SECTIONS:
        schema = section_schema(config, section)
        unknown = sorted(set(config[section]) - set(schema))
        if unknown:
            raise UserError(f"Unknown config field{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(f'{section}.{k}' for k in unknown)}; valid fields of "
                            f"{section}: {sorted(schema)}.")
    check_all(FIELD_RANGES, config)
    check_all(DATA_RANGES, config.data, "data.")
    if kind in ("images", "embeddings"):
        for field in ("ways", "eval_ways"):
            if config.get(field) is not None and config[field] < chosen.min_ways:
                raise UserError(
                    f"{field}={config[field]}: a {config[field]}-way episode has nothing to tell "
                    f"apart (its loss is 0 and its accuracy 1 whatever the model); "
                    f"{chosen.name} needs {field} >= {chosen.min_ways}.")
    blocks.parse_trainable(config.model.get("trainable"))
    if external.split_name(name)[0] is not None and "normalize" in data_options and \
            config.data.get("normalize", data_options["normalize"]):
        raise UserError(f"model.name={name} normalizes images in [0, 1] itself, so the "
                        "loader must not: set data.normalize=False.")
    check_all(OPTIMIZER_RANGES, config.optimizer, "optimizer.")
    check_all(AUGMENT_RANGES, config.augment, "augment.")
    chosen.learner.check_arguments(config.learner, "learner.")
    VariableEpisodes.from_config(sampler_settings(config.episode_sampler)[1])
    Choice(EPISODE_GROUPINGS).check("episode_grouping", config.episode_grouping)
    STRATEGY.check("strategy", config.strategy)
    jit_compile_flag(config.jit_compile)


def jit_compile_flag(value):
    """`config.jit_compile` ("auto", "true" or "false", any case; or a bool) for compile()."""
    key = str(value).strip().lower()
    if key not in JIT_COMPILE:
        raise UserError(f"jit_compile must be auto, true or false; got {value!r}.")
    return JIT_COMPILE[key]


# ------------------------------------------------------------------------ run files
def save_config(config, path: str) -> None:
    """Writes `config` as JSON to `path` atomically (a killed write leaves the old file)."""
    with atomic_write(path) as f:
        f.write(config.to_json(indent=2, sort_keys=True))


def load_config(path: str) -> ml_collections.ConfigDict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No run config at {path}; is this a workdir written by "
                                "bin/train.py?")
    try:
        with open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not readable JSON ({error}); it is the run's config, "
                        "written by bin/train.py: restore it from a backup, or rerun the "
                        "run's bin/train.py command, which writes it again.") from None
    if not isinstance(data, dict) or "algo" not in data or "dataset" not in data:
        raise UserError(f"{path} is not a tfmeta run config (no 'algo' and 'dataset'); "
                        "restore it, or rerun the run's bin/train.py command.")
    return ml_collections.ConfigDict(migrate(data))  # (a run an earlier version recorded)

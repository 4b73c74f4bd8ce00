"""Loading configs from `configs/`, applying command-line overrides, saving them with a run."""

from __future__ import annotations

import ast
import importlib
import json
import os
import sys

import ml_collections

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def get_config(algo: str, dataset: str, setting: str | None = None,
               configs_dir: str = REPO_CONFIGS) -> ml_collections.ConfigDict:
    """Imports `configs/<algo>.py` and calls its `get_config(dataset[, setting])`."""
    from tfmeta.algorithms import ALGORITHMS
    from tfmeta.data import DATASETS

    if algo not in ALGORITHMS:
        raise ValueError(f"Unknown --algo {algo!r}; valid algorithms: {sorted(ALGORITHMS)}.")
    if dataset not in DATASETS:
        raise ValueError(f"Unknown --dataset {dataset!r}; valid datasets: {sorted(DATASETS)}.")
    if not os.path.isfile(os.path.join(configs_dir, f"{algo}.py")):
        raise FileNotFoundError(f"No config for {algo!r}: {configs_dir}/{algo}.py is missing.")
    parent = os.path.dirname(os.path.abspath(configs_dir))
    if parent not in sys.path:
        sys.path.insert(0, parent)
    module = importlib.import_module(f"{os.path.basename(configs_dir)}.{algo}")
    return module.get_config(dataset, setting) if setting else module.get_config(dataset)


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as first_order=max_pool


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """Applies `key=value` strings (dotted keys for nested fields) to `config`.

    Values are Python literals; a field keeps its type (ints widen to floats).
    Unknown fields are an error that lists the valid ones.
    """
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"An override is key=value, e.g. ways=20; got {item!r}.")
        key, text = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = config
        for part in parents:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ValueError(f"Unknown config section {part!r} in {key!r}; valid fields: "
                                 f"{sorted(node.keys())}.")
            node = node[part]
        value = _parse_value(text)
        if leaf not in node:
            # Algorithm sections (learner, model, data) accept new keyword arguments;
            # everything else is fixed, so a typo does not pass silently.
            if parents and parents[-1] in ("learner", "model", "data"):
                node[leaf] = value
                continue
            raise ValueError(f"Unknown config field {key!r}; valid fields here: "
                             f"{sorted(node.keys())}.")
        if isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
        if isinstance(node[leaf], str) and not isinstance(value, str):
            value = text.strip()  # a text field takes the text: jit_compile=True -> "True"
        try:
            node[leaf] = value
        except TypeError as error:
            raise ValueError(f"Bad value for {key}: {text!r} ({error}).") from None
    return config


def save_config(config, path: str) -> None:
    with open(path, "w") as f:
        f.write(config.to_json(indent=2, sort_keys=True))


def load_config(path: str) -> ml_collections.ConfigDict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No run config at {path}; is this a workdir written by "
                                "bin/train.py?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))

"""Benchmarks behind `bin/benchmark.py`. Each case runs in its own process (clean peak memory).

A module here exposes `CASES: dict[name, callable(steps: int) -> dict]`; each callable
returns measurements such as `median_ms_per_step`, `first_step_s`, `episodes_per_s`.
Register the module in BENCHMARK_MODULES.
"""

from __future__ import annotations

import importlib

BENCHMARK_MODULES = [
    "tfmeta.benchmarking.maml",
    "tfmeta.benchmarking.maml_family",
    "tfmeta.benchmarking.model_based",
    "tfmeta.benchmarking.leo",
    "tfmeta.benchmarking.reptile",
    "tfmeta.benchmarking.metric",
    "tfmeta.benchmarking.images",
    "tfmeta.benchmarking.distributed",
    "tfmeta.benchmarking.records",
    "tfmeta.benchmarking.pretrained",
    "tfmeta.benchmarking.deploy",
]


def all_cases() -> dict:
    cases = {}
    for name in BENCHMARK_MODULES:
        cases.update(importlib.import_module(name).CASES)
    return cases

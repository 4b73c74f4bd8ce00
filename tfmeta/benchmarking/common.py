"""Timing helpers: medians of wall-clock times, first-step latency, sampler rate, peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time

import tensorflow as tf

from tfmeta.episode_spec import DataSpec


def peak_memory_mb() -> float:
    """Peak resident memory of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def time_train_steps(learner, dataset, steps: int) -> dict:
    """Times `learner`'s compiled train function on batches from `dataset`.

    Returns first_step_s (trace + first step) and median_ms_per_step over `steps` more.
    Batches are prefetched before timing, so the sampler is not in the measurement.
    """
    batches = [batch for batch in dataset.take(steps + 1)]
    learner.make_train_function()
    train_function = learner.train_function
    start = time.perf_counter()
    logs = train_function(iter([batches[0]]))
    _block(logs)
    first = time.perf_counter() - start
    times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        _block(train_function(iter([batch])))
        times.append(time.perf_counter() - start)
    return {"first_step_s": first, "median_ms_per_step": 1000 * statistics.median(times),
            "steps_timed": len(times)}


def build_config_case(algo: str, dataset_name: str = "omniglot", setting: str = "5w1s",
                      overrides=(), set_threads: bool = True):
    """(config, dataset, compiled learner) as `bin/train.py --algo --dataset --setting --set`
    would build them: the config's data options, backbone, optimizer and schedule; and,
    with `set_threads`, TensorFlow's CPU threads as `config.cpu_threads` asks (the first
    case a process builds sets them; see tfmeta.training.cpu_threads)."""
    import keras

    from tfmeta.config import apply_overrides, get_config, validate_config
    from tfmeta.data import load_dataset
    from tfmeta.training import cpu_threads
    from tfmeta.training.run import build_compiled_learner

    config = apply_overrides(get_config(algo, dataset_name, setting), list(overrides))
    validate_config(config)
    if set_threads:
        cpu_threads.configure(config)
    dataset = load_dataset(dataset_name, **config.data)
    keras.utils.set_random_seed(0)
    learner = build_compiled_learner(config, dataset.input_shape)
    return config, dataset, learner


def time_config_training(algo: str, steps: int, dataset_name: str = "omniglot",
                         setting: str = "5w1s", overrides=()):
    """Times the meta-steps of the learner `configs/<algo>.py` describes, on its own
    training episodes (`learner.training_episodes`: its shots, queries, augmentation).

    Returns (result dict from `time_train_steps` plus `meta_batch_size`, learner, dataset).
    """
    config, dataset, learner = build_config_case(algo, dataset_name, setting, overrides)
    episodes, _ = learner.training_episodes(dataset, DataSpec.from_config(config))
    result = time_train_steps(learner, episodes, steps)
    result.update(meta_batch_size=config.meta_batch_size, train_ways=config.ways,
                  train_queries=config.queries)
    return result, learner, dataset


def alternate_steps(sides: dict, batches: list) -> dict:
    """Runs each side's step on every batch, the sides in turn within a round, so that a
    machine whose speed drifts (a shared VM) slows every side alike.

    `sides`: name -> (step(batch), convert(batch) -> that side's form of it). Round 0 warms
    up (traces, compiles, allocates) and is not timed. Returns name -> seconds per round.
    """
    times = {name: [] for name in sides}
    for round_, batch in enumerate(batches):
        for name, (step, convert) in sides.items():
            converted = convert(batch)
            start = time.perf_counter()
            step(converted)
            if round_:
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict, side: str, reference: str) -> float:
    """The median over rounds of `side`'s time over `reference`'s in the same round."""
    return statistics.median(a / b for a, b in zip(times[side], times[reference]))


def time_function(fn, args, repeats: int) -> dict:
    """First call (trace) and the median of `repeats` further calls of a tf.function."""
    start = time.perf_counter()
    _block(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _block(fn(*args))
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "median_ms": 1000 * statistics.median(times)}


def sampler_rate(dataset, batches: int, episodes_per_batch: int) -> float:
    """Episodes per second drawn from an episode dataset (after a warm-up batch)."""
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        _block(next(iterator))
    return batches * episodes_per_batch / (time.perf_counter() - start)


def _block(result):
    for value in tf.nest.flatten(result):
        if hasattr(value, "numpy"):
            value.numpy()

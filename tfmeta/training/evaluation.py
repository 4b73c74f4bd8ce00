"""Meta-test evaluation: accuracy over many episodes with a 95% confidence interval."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import tensorflow as tf

from tfmeta.algorithms.base import accuracy
from tfmeta.data import episode_dataset, load_dataset

Z_95 = 1.96


def mean_and_ci95(values) -> tuple:
    """Mean and the half-width of its normal 95% interval, 1.96 * std / sqrt(n)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        raise ValueError(f"A confidence interval needs at least 2 episodes; got {values.size}.")
    return float(values.mean()), float(Z_95 * values.std(ddof=1) / math.sqrt(values.size))


def episode_accuracies(learner, classes, ways, shots, queries, num_episodes=600,
                       meta_batch_size=20, seed=1234, split="test") -> np.ndarray:
    """Per-episode query accuracy of `learner` on `num_episodes` fresh episodes."""
    meta_batch_size = max(1, min(meta_batch_size, num_episodes))
    batches = math.ceil(num_episodes / meta_batch_size)
    episodes = episode_dataset(classes, ways, shots, queries, meta_batch_size, seed=seed,
                               num_episodes=batches * meta_batch_size, split=split)

    @tf.function
    def batch_accuracy(batch):
        return accuracy(batch["query_labels"], learner.query_logits(batch, training=False))

    values = np.concatenate([batch_accuracy(batch).numpy() for batch in episodes])
    return values[:num_episodes]


def evaluate(learner, classes, ways, shots, queries, num_episodes=600, meta_batch_size=20,
             seed=1234, split="test") -> dict:
    """Returns {"accuracy", "ci95", "episodes", "ways", "shots", "queries"}."""
    values = episode_accuracies(learner, classes, ways, shots, queries, num_episodes,
                                meta_batch_size, seed, split)
    mean, ci95 = mean_and_ci95(values)
    return {"accuracy": mean, "ci95": ci95, "episodes": int(values.size), "ways": ways,
            "shots": shots, "queries": queries}


def evaluate_workdir(workdir: str, data_dir: str | None = None, split: str = "test",
                     num_episodes: int | None = None, ways: int | None = None,
                     shots: int | None = None, seed: int = 1234) -> dict:
    """Evaluates the newest checkpoint of a run and writes `<workdir>/eval.json`."""
    from tfmeta.algorithms import algorithm_module
    from tfmeta.config import load_config
    from tfmeta.training.trainer import (
        CONFIG_FILE,
        build_compiled_learner,
        eval_spec,
        restore_latest,
    )

    config = load_config(os.path.join(workdir, CONFIG_FILE))
    dataset = load_dataset(config.dataset, data_dir, **config.data)
    learner = build_compiled_learner(config, dataset.input_shape)
    step = restore_latest(learner, workdir, require=True)
    default_ways, default_shots, queries = eval_spec(config)
    # An algorithm with its own protocol (LEO's queries, Reptile-GAN's generation metric)
    # defines `evaluate_run(learner, dataset, config, split, num_episodes, seed, ways=None,
    # shots=None, log_dir=None, step=0) -> dict` with at least accuracy, ci95, ways, shots.
    custom = getattr(algorithm_module(config.algo), "evaluate_run", None)
    if custom is not None:
        result = custom(learner, dataset, config, split, num_episodes or config.eval_episodes,
                        seed, ways=ways, shots=shots,
                        log_dir=os.path.join(workdir, "logs", "eval"), step=step)
    else:
        result = evaluate(learner, dataset.split(split), ways or default_ways,
                          shots or default_shots, queries, num_episodes or config.eval_episodes,
                          config.eval_meta_batch_size, seed, split)
    result.update(algo=config.algo, dataset=config.dataset, split=split, step=step)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result

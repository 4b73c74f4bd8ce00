"""Meta-test statistics: accuracy over many episodes with its 95% confidence interval.

Library code with no files involved; `tfmeta.training.evaluation` opens a run's
workdir, calls its learner's `meta_test` hook (which uses these) and writes
`eval.json`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfmeta.data import episode_dataset
from tfmeta.tensors import accuracy

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
    if int(num_episodes) != num_episodes or num_episodes < 2:
        raise ValueError(f"num_episodes must be an integer >= 2 (a confidence interval needs "
                         f"two); got {num_episodes!r}.")
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

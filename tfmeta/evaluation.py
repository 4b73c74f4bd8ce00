"""Meta-test statistics: accuracy over many episodes with its 95% confidence interval, and
the ways and shots the episodes had.

Library code with no files involved; `tfmeta.training.evaluation` opens a run's
workdir, calls its learner's `meta_test` hook (which uses these) and writes
`eval.json`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfmeta.data import episode_dataset
from tfmeta.errors import UserError
from tfmeta.ranges import EVAL_EPISODES
from tfmeta.tensors import accuracy

Z_95 = 1.96


def mean_and_ci95(values) -> tuple:
    """Mean and the half-width of its normal 95% interval, 1.96 * std / sqrt(n)."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        raise UserError(f"A confidence interval needs at least 2 episodes; got {values.size}.")
    return float(values.mean()), float(Z_95 * values.std(ddof=1) / math.sqrt(values.size))


def episode_sizes(support_labels, query_labels) -> dict:
    """What episodes held: {"ways" [E], "shots" [sum of ways], "queries" [sum of ways]}.

    Args:
      support_labels: `[E, S]` int, 0..N-1 for real examples and -1 for padding (variable
        episodes); an episode's ways N is its largest label + 1.
      query_labels: `[E, Q]` int, likewise.

    Returns ways per episode, and support (shots) and query examples per class, over every
    class of every episode.
    """
    ways, shots, queries = [], [], []
    for support, query in zip(np.asarray(support_labels), np.asarray(query_labels)):
        n = int(support.max()) + 1
        ways.append(n)
        shots.append(np.bincount(support[support >= 0], minlength=n))
        queries.append(np.bincount(query[query >= 0], minlength=n))
    return {"ways": np.array(ways), "shots": np.concatenate(shots),
            "queries": np.concatenate(queries)}


def summary(values) -> dict:
    """{"min", "mean", "max"} of `values`."""
    values = np.asarray(values)
    return {"min": int(values.min()), "mean": float(values.mean()), "max": int(values.max())}


def scored_episodes(learner, classes, ways, shots, queries, num_episodes=600,
                    meta_batch_size=20, seed=1234, split="test", sampler="fixed",
                    variable=None, grouping="any") -> tuple:
    """(per-episode query accuracy `[num_episodes]`, `episode_sizes` of those episodes) of
    `learner` on fresh episodes (`episode_dataset`'s arguments)."""
    EVAL_EPISODES.check("num_episodes", num_episodes)
    meta_batch_size = max(1, min(meta_batch_size, num_episodes))
    batches = math.ceil(num_episodes / meta_batch_size)
    episodes = episode_dataset(classes, ways, shots, queries, meta_batch_size, seed=seed,
                               num_episodes=batches * meta_batch_size, split=split,
                               sampler=sampler, variable=variable, grouping=grouping)

    @tf.function
    def batch_accuracy(batch):
        return accuracy(batch["query_labels"], learner.query_logits(batch, training=False))

    values, support_labels, query_labels = [], [], []
    for batch in episodes:
        values.append(batch_accuracy(batch).numpy())
        support_labels.append(batch["support_labels"].numpy())
        query_labels.append(batch["query_labels"].numpy())
    sizes = episode_sizes(np.concatenate(support_labels)[:num_episodes],
                          np.concatenate(query_labels)[:num_episodes])
    return np.concatenate(values)[:num_episodes], sizes


def episode_accuracies(learner, classes, ways, shots, queries, num_episodes=600,
                       meta_batch_size=20, seed=1234, split="test", sampler="fixed",
                       variable=None, grouping="any") -> np.ndarray:
    """Per-episode query accuracy of `learner` on `num_episodes` fresh episodes."""
    return scored_episodes(learner, classes, ways, shots, queries, num_episodes,
                           meta_batch_size, seed, split, sampler, variable, grouping)[0]


def evaluate(learner, classes, ways, shots, queries, num_episodes=600, meta_batch_size=20,
             seed=1234, split="test", sampler="fixed", variable=None,
             grouping="any") -> dict:
    """Returns {"accuracy", "ci95", "episodes", "ways", "shots", "queries", "sampler",
    "grouping", "drawn"}: `drawn` is {"ways", "shots", "queries": {"min", "mean", "max"}} of
    the episodes evaluated (shots and queries per class), and with variable episodes
    (`sampler` "variable", parameters `variable`) `ways`, `shots` and `queries` are None;
    `grouping` "within" draws each episode's classes within one group."""
    values, sizes = scored_episodes(learner, classes, ways, shots, queries, num_episodes,
                                    meta_batch_size, seed, split, sampler, variable, grouping)
    mean, ci95 = mean_and_ci95(values)
    fixed = sampler == "fixed"
    return {"accuracy": mean, "ci95": ci95, "episodes": int(values.size),
            "ways": ways if fixed else None, "shots": shots if fixed else None,
            "queries": queries if fixed else None, "sampler": sampler, "grouping": grouping,
            "drawn": {name: summary(v) for name, v in sizes.items()}}

"""Meta-test statistics: accuracy over many episodes with its 95% confidence interval, and
the ways and shots the episodes had.

Library code with no files involved; `tfmeta.training.evaluation` opens a run's
workdir, calls its learner's `meta_test` hook (which uses these) and writes
`eval.json`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tfmeta import calibration
from tfmeta.data import EpisodeShape, episode_dataset
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


@dataclasses.dataclass
class Protocol:
    """What meta-test episodes are beyond their ways, shots and queries (`bin/evaluate.py`).

    query_balance: None (every class `queries` queries) or a Dirichlet concentration alpha:
      each episode's N * queries queries split over its classes as Veilleux et al. draw
      them (`tfmeta.calibration.dirichlet_query_counts`; a class may get none). The episodes
      are sampled with as many queries per class as a class can give, and the queries beyond
      each class's draw become padding (label -1).
    open_set: each episode drawn with 2N classes, the support set of the last N dropped
      (padding), so their queries belong to no support class (`unknown`); accuracy is over
      the first N's queries, and `open_set_scores` measures the distance.
    temperature: the learner's fitted temperature; the ECE is reported at 1 and at it.
    threshold: the learner's calibrated open-set threshold (None: AUROC only).
    """

    query_balance: float | None = None
    open_set: bool = False
    temperature: float = 1.0
    threshold: float | None = None


@dataclasses.dataclass
class Scores:
    """Per-episode accuracies `[E]`, `episode_sizes`, and per real query: confidence at
    temperature 1 and at the learner's, correct, distance (None where not measured) and
    known (False: open-set queries of no support class)."""

    accuracies: np.ndarray
    sizes: dict
    confidence: np.ndarray
    confidence_calibrated: np.ndarray
    correct: np.ndarray
    distance: np.ndarray | None
    known: np.ndarray


def uneven_queries(labels: np.ndarray, ways: int, total: int, alpha: float, cap: int,
                   rng) -> np.ndarray:
    """Query labels `[E, M]` with the queries beyond each class's Dirichlet draw set to -1
    (padding): each episode keeps `dirichlet_query_counts` of its classes' queries."""
    labels = labels.copy()
    for episode in labels:
        counts = calibration.dirichlet_query_counts(rng, ways, total, alpha, cap)
        rank = np.zeros_like(episode)
        for n in range(ways):
            members = episode == n
            rank[members] = np.arange(members.sum())
        keep = (episode >= 0) & (rank < counts[np.maximum(episode, 0)])
        episode[~keep] = -1
    return labels


def open_set_support(labels: np.ndarray, known_ways: int) -> np.ndarray:
    """Support labels `[E, S]` with the classes from `known_ways` on dropped (-1)."""
    return np.where(labels < known_ways, labels, -1)


def episode_batches(classes, shape: EpisodeShape, num_episodes: int, meta_batch_size: int,
                    seed: int, split: str) -> tf.data.Dataset:
    """Meta-batches of fresh episodes of `shape`: at least `num_episodes`, in whole
    meta-batches of at most `meta_batch_size` (what an evaluation scores)."""
    EVAL_EPISODES.check("num_episodes", num_episodes)
    meta_batch_size = max(1, min(meta_batch_size, num_episodes))
    batches = math.ceil(num_episodes / meta_batch_size)
    return episode_dataset(classes, shape, meta_batch_size, seed=seed,
                           num_episodes=batches * meta_batch_size, split=split)


def scored_episodes(learner, classes, shape: EpisodeShape, num_episodes=600,
                    meta_batch_size=20, seed=1234, split="test",
                    protocol: Protocol | None = None, outputs_fn=None) -> Scores:
    """`Scores` of `learner` on fresh episodes of `shape` (`episode_dataset`'s arguments;
    `protocol`'s uneven or open-set episodes drawn from it); `outputs_fn(batch) -> {"logits",
    maybe "distance"}` (default: the learner's `query_logits`)."""
    protocol = protocol or Protocol()
    ways, shots, queries = shape.ways, shape.shots, shape.queries
    sample_ways, sample_queries = ways, queries
    if protocol.open_set:
        sample_ways = 2 * ways
    if protocol.query_balance is not None:
        cap = int(np.min(classes.class_counts)) - shots
        sample_queries = min(cap, ways * queries)
    drawn = dataclasses.replace(shape, ways=sample_ways, queries=sample_queries)
    episodes = episode_batches(classes, drawn, num_episodes, meta_batch_size, seed, split)
    outputs_fn = outputs_fn or (lambda batch: {"logits": learner.query_logits(batch)})
    temperature = protocol.temperature

    @tf.function
    def score(batch):
        outputs = outputs_fn(batch)
        logits = tf.cast(outputs["logits"], tf.float32)
        labels = batch["query_labels"]
        known = tf.where(labels < ways, labels, -1) if protocol.open_set else labels
        scored = {"accuracy": accuracy(known, logits),
                  "confidence": tf.reduce_max(tf.nn.softmax(logits), -1),
                  "calibrated": tf.reduce_max(tf.nn.softmax(logits / temperature), -1),
                  "correct": tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)}
        if "distance" in outputs:
            scored["distance"] = outputs["distance"]
        return scored

    rng = np.random.default_rng(seed)
    collected, support_labels, query_labels = [], [], []
    for batch in episodes:
        batch = dict(batch)
        if protocol.query_balance is not None:
            batch["query_labels"] = tf.constant(uneven_queries(
                batch["query_labels"].numpy(), ways, ways * queries, protocol.query_balance,
                sample_queries, rng))
        if protocol.open_set:
            batch["support_labels"] = tf.constant(open_set_support(
                batch["support_labels"].numpy(), ways))
        collected.append({k: v.numpy() for k, v in score(batch).items()})
        support_labels.append(batch["support_labels"].numpy())
        query_labels.append(batch["query_labels"].numpy())
    support_labels = np.concatenate(support_labels)[:num_episodes]
    query_labels = np.concatenate(query_labels)[:num_episodes]
    known_labels = np.where(query_labels < ways, query_labels, -1) if protocol.open_set \
        else query_labels
    real = query_labels >= 0

    def per_query(name):
        return np.concatenate([c[name] for c in collected])[:num_episodes][real]

    return Scores(np.concatenate([c["accuracy"] for c in collected])[:num_episodes],
                  episode_sizes(support_labels, known_labels), per_query("confidence"),
                  per_query("calibrated"), per_query("correct"),
                  per_query("distance") if "distance" in collected[0] else None,
                  (known_labels >= 0)[real])


def episode_accuracies(learner, classes, shape: EpisodeShape, num_episodes=600,
                       meta_batch_size=20, seed=1234, split="test") -> np.ndarray:
    """Per-episode query accuracy of `learner` on `num_episodes` fresh episodes of `shape`."""
    return scored_episodes(learner, classes, shape, num_episodes, meta_batch_size, seed,
                           split).accuracies


def evaluate(learner, classes, shape: EpisodeShape, num_episodes=600, meta_batch_size=20,
             seed=1234, split="test", protocol: Protocol | None = None,
             outputs_fn=None) -> dict:
    """Returns {"accuracy", "ci95", "episodes", "ways", "shots", "queries", "sampler",
    "grouping", "drawn", "ece", ...} over `num_episodes` episodes of `shape`: `drawn` is
    {"ways", "shots", "queries": {"min", "mean", "max"}} of the episodes evaluated (shots
    and queries per class), and with variable episodes `ways`, `shots` and `queries` are
    None; `grouping` "within" draws each episode's classes within one group.
    `ece` is the expected calibration error of the softmax of the logits, and with a
    `protocol.temperature` other than 1 `ece_calibrated` that at the temperature;
    `protocol.query_balance` adds `query_balance`, `protocol.open_set` adds `open_set`
    (`tfmeta.calibration.open_set_scores`)."""
    protocol = protocol or Protocol()
    scores = scored_episodes(learner, classes, shape, num_episodes, meta_batch_size, seed,
                             split, protocol, outputs_fn)
    mean, ci95 = mean_and_ci95(scores.accuracies)
    fixed = not shape.padded
    known = scores.known
    result = {"accuracy": mean, "ci95": ci95, "episodes": int(scores.accuracies.size),
              "ways": shape.ways if fixed else None, "shots": shape.shots if fixed else None,
              "queries": shape.queries if fixed else None, "sampler": shape.sampler,
              "grouping": shape.grouping,
              "drawn": {name: summary(v) for name, v in scores.sizes.items()},
              "ece": calibration.calibration_error(scores.confidence[known],
                                                   scores.correct[known])}
    if protocol.temperature != 1.0:
        result.update(temperature=protocol.temperature,
                      ece_calibrated=calibration.calibration_error(
                          scores.confidence_calibrated[known], scores.correct[known]))
    if protocol.query_balance is not None:
        result["query_balance"] = f"dirichlet:{protocol.query_balance:g}"
    if protocol.open_set:
        if scores.distance is None:
            raise UserError("--open_set needs a learner that measures how far a query lies "
                            "from the support classes (an embedding learner).")
        result["open_set"] = calibration.open_set_scores(
            scores.correct[known], scores.distance[known], scores.distance[~known],
            protocol.threshold)
    return result

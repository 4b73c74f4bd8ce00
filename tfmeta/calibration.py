"""Confidence that means what it says, and "none of these": the statistics, on arrays.

Temperature scaling (Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural
Networks", ICML 2017, https://arxiv.org/abs/1706.04599): one scalar T > 0 fitted on
validation queries by minimizing the negative log-likelihood of `softmax(logits / T)`; the
argmax, hence the accuracy, is unchanged. The NLL is convex in b = 1/T (a log-sum-exp of a
linear function of b, minus a linear one), so its derivative

    d NLL / d b = mean over queries of (E_softmax(b z)[z] - z_label)

increases with b, and `fit_temperature` finds its zero by bisection on log b: no learning
rate to tune, the same answer every time.

Expected calibration error (Naeini, Cooper and Hauskrecht, AAAI 2015; the form of Guo et al.):
queries binned by their top probability into `ECE_BINS` equal-width bins,
`sum_b (n_b / n) |accuracy_b - confidence_b|`.

"None of these" (open-set recognition): each query has a distance to the nearest support
class (`tfmeta.heads.open_set_distance`); a threshold calibrated on validation episodes, where
every query belongs to a support class, keeps the share `keep` of them (the `keep`
quantile of their distances), and a query farther than it is `unknown`. `auroc` measures how
well the distance separates queries of support classes from queries of other classes, over
every threshold at once (the Mann-Whitney statistic, ties counting one half).

`tfmeta.training.evaluation` calls these on what a run's learner scored; `tfmeta.serving`
applies the fitted temperature and threshold in the export.
"""

from __future__ import annotations

import math

import numpy as np

from tfmeta.errors import UserError

ECE_BINS = 15
# Where the bisection on log(1/T) looks: T from 1e-3 to 1e3.
LOG_INVERSE_RANGE = (-math.log(1e3), math.log(1e3))
BISECTION_STEPS = 60
# The share of validation queries of support classes a calibrated threshold keeps.
DEFAULT_KEEP = 0.95


def _real_rows(logits, labels):
    """(float64 logits `[n, N]`, int labels `[n]`) of the real queries (label >= 0); absent
    classes (logits at -1e9) are kept, as their probability is 0 at any T <= 1e3."""
    logits = np.asarray(logits, np.float64).reshape(-1, np.shape(logits)[-1])
    labels = np.asarray(labels).reshape(-1)
    real = labels >= 0
    return logits[real], labels[real]


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """`softmax(logits / temperature)` over the last axis, in float64."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled = scaled - scaled.max(-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(-1, keepdims=True)


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean `-log softmax(logits / T)[label]` over the real queries (label >= 0)."""
    logits, labels = _real_rows(logits, labels)
    probabilities = softmax(logits, temperature)
    return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels],
                                            1e-300))))


def _nll_slope(logits, labels, inverse: float) -> float:
    """d NLL / d b at b = 1/T."""
    probabilities = softmax(logits * inverse)
    expected = np.sum(probabilities * np.where(probabilities > 0, logits, 0.0), axis=-1)
    return float(np.mean(expected - logits[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels) -> float:
    """The T > 0 minimizing the NLL of `softmax(logits / T)` on `labels` (see the module
    docstring); logits `[..., N]`, labels `[...]` (-1: padding, left out). Bounded to
    [1e-3, 1e3]: a validation set the learner classifies perfectly would otherwise ask for
    T -> 0."""
    logits, labels = _real_rows(logits, labels)
    if len(labels) == 0:
        raise UserError("Fitting a temperature needs validation queries; the episodes had "
                        "none.")
    low, high = LOG_INVERSE_RANGE
    if _nll_slope(logits, labels, math.exp(low)) >= 0:
        return 1.0 / math.exp(low)
    if _nll_slope(logits, labels, math.exp(high)) <= 0:
        return 1.0 / math.exp(high)
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if _nll_slope(logits, labels, math.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return 1.0 / math.exp(0.5 * (low + high))


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> float:
    """ECE of `probabilities` `[n, N]` against `labels` `[n]` (-1: padding, left out)."""
    probabilities, labels = _real_rows(probabilities, labels)
    return calibration_error(probabilities.max(-1), probabilities.argmax(-1) == labels, bins)


def calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """ECE of top probabilities `confidence` `[n]` whose predictions were `correct` `[n]`,
    with `bins` equal-width bins (a confidence of exactly 1 falls in the last bin)."""
    confidence = np.asarray(confidence, np.float64).reshape(-1)
    correct = np.asarray(correct, bool).reshape(-1)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def auroc(known_scores, unknown_scores) -> float:
    """The probability that a query of an unknown class scores higher (farther) than one of a
    support class, ties counting one half: the area under the ROC curve of the score as a
    detector of unknown queries."""
    known = np.asarray(known_scores, np.float64).reshape(-1)
    unknown = np.asarray(unknown_scores, np.float64).reshape(-1)
    if known.size == 0 or unknown.size == 0:
        raise UserError("AUROC needs queries of both support classes and other classes; got "
                        f"{known.size} and {unknown.size}.")
    _, inverse, counts = np.unique(np.concatenate([known, unknown]), return_inverse=True,
                                   return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]        # 1-based, ties at mid-rank
    wins = ranks[known.size:].sum() - unknown.size * (unknown.size + 1) / 2
    return float(wins / (known.size * unknown.size))


def threshold_at_keep(distances, keep: float = DEFAULT_KEEP) -> float:
    """The distance below or at which the share `keep` of `distances` (queries of support
    classes) lies: the smallest observed distance with at least that share at or below it."""
    distances = np.sort(np.asarray(distances, np.float64).reshape(-1))
    if distances.size == 0:
        raise UserError("Calibrating an open-set threshold needs validation queries; the "
                        "episodes had none.")
    if not 0.0 < keep <= 1.0:
        raise UserError(f"--open_set_keep must be in (0, 1], the share of queries of known "
                        f"classes to keep; got {keep}.")
    return float(distances[max(0, math.ceil(keep * distances.size) - 1)])


def open_set_scores(known_correct, known_distances, unknown_distances,
                    threshold: float | None) -> dict:
    """What `bin/evaluate.py --open_set` reports: AUROC of the distance, and at `threshold`
    (None: no calibrated threshold, only the AUROC) the share of known queries kept, the
    accuracy on known queries counting a rejection as wrong, and the share of unknown
    queries rejected."""
    known_distances = np.asarray(known_distances, np.float64)
    unknown_distances = np.asarray(unknown_distances, np.float64)
    result = {"auroc": auroc(known_distances, unknown_distances),
              "known_queries": int(known_distances.size),
              "unknown_queries": int(unknown_distances.size), "threshold": threshold}
    if threshold is not None:
        kept = known_distances <= threshold
        result.update(known_kept=float(kept.mean()),
                      known_accuracy=float(np.mean(np.asarray(known_correct) & kept)),
                      unknown_rejected=float(np.mean(unknown_distances > threshold)))
    return result


def dirichlet_query_counts(rng: np.random.Generator, ways: int, total: int, alpha: float,
                           cap: int, tries: int = 1000) -> np.ndarray:
    """Queries per class `[ways]` of one uneven episode, as Veilleux, Boudiaf, Piantanida and
    Ben Ayed draw them ("Realistic Evaluation of Transductive Few-Shot Learning", NeurIPS
    2021, https://arxiv.org/abs/2204.11181; their `get_dirichlet_query_dist`): class
    proportions from a symmetric Dirichlet(alpha), times `total`, rounded to integers that
    sum to `total` (a class may get none). A draw with a class above `cap` (the queries a
    class can give) is drawn again, as their CUB setting does."""
    if total > ways * cap:
        raise UserError(f"{total} queries cannot be split over {ways} classes of at most "
                        f"{cap} queries each; ask for fewer queries.")
    for _ in range(tries):
        counts = round_to_total(rng.dirichlet(np.full(ways, float(alpha))) * total, total)
        if counts.max() <= cap:
            return counts
    raise UserError(f"Dirichlet({alpha}) draws of {total} queries over {ways} classes kept "
                    f"giving a class more than the {cap} queries it has; use a larger alpha "
                    "or fewer queries per class (--queries).")


def round_to_total(values: np.ndarray, total: int) -> np.ndarray:
    """Nonnegative `values` summing to `total` rounded to integers with the same sum: each
    rounded to the nearest, then, while the sum is off, the value whose fraction is closest
    to one half is rounded the other way (Veilleux et al.'s `convert_prob_to_samples`)."""
    values = np.asarray(values, np.float64)
    counts = np.round(values)
    fractions = np.abs(values - np.floor(values) - 0.5)
    for index in np.argsort(fractions, kind="stable"):
        gap = int(counts.sum()) - total
        if gap == 0:
            break
        if gap > 0 and counts[index] > np.floor(values[index]):
            counts[index] -= 1
        elif gap < 0 and counts[index] < np.ceil(values[index]):
            counts[index] += 1
    return counts.astype(np.int64)

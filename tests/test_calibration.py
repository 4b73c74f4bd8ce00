"""The statistics of calibrated confidence and "none of these" (`tfmeta.calibration`) and of
uneven query sets (`tfmeta.evaluation.uneven_queries`), against numbers worked by hand."""

import math

import numpy as np
import pytest

from tfmeta import calibration
from tfmeta.errors import UserError
from tfmeta.evaluation import open_set_support, uneven_queries


def test_the_temperature_is_the_zero_of_the_likelihoods_slope():
    """Three queries with logits (0, 1), labels 1, 1, 0. With b = 1/T the slope of the mean
    NLL is mean(E_p[z] - z_label) = sigma(b) - 2/3, zero at sigma(b) = 2/3: b = ln 2,
    T = 1 / ln 2 = 1.4427."""
    logits = np.array([[0.0, 1.0]] * 3)
    temperature = calibration.fit_temperature(logits, np.array([1, 1, 0]))
    assert temperature == pytest.approx(1 / math.log(2), rel=1e-6)


def test_the_temperature_minimizes_the_nll_on_a_grid():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 5))
    labels = np.where(rng.uniform(size=200) < 0.6, logits.argmax(-1), rng.integers(0, 5, 200))
    fitted = calibration.fit_temperature(logits, labels)
    grid = np.exp(np.linspace(-3, 3, 2001))
    best = grid[np.argmin([calibration.negative_log_likelihood(logits, labels, t)
                           for t in grid])]
    assert fitted == pytest.approx(best, rel=5e-3)
    assert fitted > 1  # over-confident logits (40% of labels random) are softened


def test_padding_and_absent_classes_do_not_move_the_temperature():
    logits = np.array([[0.0, 1.0, -1e9]] * 3 + [[5.0, 0.0, -1e9]])
    labels = np.array([1, 1, 0, -1])                       # the last query is padding
    assert calibration.fit_temperature(logits, labels) == pytest.approx(1 / math.log(2),
                                                                        rel=1e-6)


def test_a_perfectly_separated_validation_set_stops_at_the_bound():
    assert calibration.fit_temperature(np.array([[0.0, 4.0], [4.0, 0.0]]),
                                       np.array([1, 0])) == pytest.approx(1e-3)


def test_expected_calibration_error_by_hand():
    """Confidences 0.9, 0.9 (one right) and 0.6, 0.6 (both right), 15 bins: bin of 0.9 has
    accuracy 0.5, gap 0.4, weight 1/2; bin of 0.6 accuracy 1, gap 0.4, weight 1/2: 0.4."""
    assert calibration.calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1]) == \
        pytest.approx(0.4)
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    assert calibration.expected_calibration_error(probabilities, [0, 1, 1, 1]) == \
        pytest.approx(0.4)
    # A confidence of exactly 1 is in the last bin, not out of range.
    assert calibration.calibration_error([1.0], [1]) == pytest.approx(0.0)


def test_auroc_by_hand_with_a_tie():
    """Known (0.1, 0.4), unknown (0.3, 0.5, 0.4): pairs where the unknown scores higher:
    0.3 beats 0.1 (1), 0.5 beats both (2), 0.4 beats 0.1 and ties 0.4 (1.5): 4.5 / 6."""
    assert calibration.auroc([0.1, 0.4], [0.3, 0.5, 0.4]) == pytest.approx(0.75)
    assert calibration.auroc([0.0, 0.1], [0.5, 0.6]) == 1.0
    assert calibration.auroc([0.5, 0.6], [0.0, 0.1]) == 0.0
    with pytest.raises(UserError, match="both"):
        calibration.auroc([0.1], [])


def test_the_threshold_keeps_the_asked_share():
    distances = np.arange(1, 21, dtype=float)              # 20 known queries
    assert calibration.threshold_at_keep(distances, 0.95) == 19.0   # 19 of 20 kept
    assert calibration.threshold_at_keep(distances, 1.0) == 20.0
    assert calibration.threshold_at_keep(distances, 0.5) == 10.0
    with pytest.raises(UserError, match="open_set_keep"):
        calibration.threshold_at_keep(distances, 1.5)


def test_open_set_scores_at_a_threshold():
    scores = calibration.open_set_scores([True, True, False, True], [0.1, 0.2, 0.3, 0.9],
                                         [0.8, 1.0], threshold=0.5)
    assert scores["known_kept"] == 0.75                # 0.9 is rejected
    assert scores["known_accuracy"] == 0.5             # right and kept: the first two
    assert scores["unknown_rejected"] == 1.0
    assert scores["auroc"] == pytest.approx(7 / 8)     # 0.9 beats 0.8 only


def test_rounding_to_a_total_as_veilleux_et_al():
    """(1.5, 1.5, 2.0) to 5: rounding half to even gives (2, 2, 2) = 6; the value whose
    fraction is closest to one half (the first) goes down: (1, 2, 2)."""
    assert calibration.round_to_total(np.array([1.5, 1.5, 2.0]), 5).tolist() == [1, 2, 2]
    # (0.4, 0.4, 4.2) to 5: (0, 0, 4) = 4; fractions 0.1, 0.1 and 0.3 from one half: the
    # first of the two closest goes up (their loop keeps the first on a tie): (1, 0, 4).
    assert calibration.round_to_total(np.array([0.4, 0.4, 4.2]), 5).tolist() == [1, 0, 4]


def test_dirichlet_query_counts():
    rng = np.random.default_rng(0)
    draws = np.array([calibration.dirichlet_query_counts(rng, 5, 25, 2.0, cap=19)
                      for _ in range(2000)])
    assert (draws.sum(1) == 25).all() and draws.max() <= 19 and draws.min() >= 0
    # Dirichlet(2): each share has mean 1/5 and variance (1/5)(4/5)/(5*2+1) = 0.0145.
    shares = draws / 25
    assert shares.mean(0) == pytest.approx([0.2] * 5, abs=0.01)
    assert shares.var(0) == pytest.approx([0.16 / 11] * 5, rel=0.15)
    balanced = calibration.dirichlet_query_counts(rng, 5, 25, 1e6, cap=19)
    assert balanced.tolist() == [5] * 5
    with pytest.raises(UserError, match="cannot be split"):
        calibration.dirichlet_query_counts(rng, 5, 100, 2.0, cap=19)


def test_uneven_queries_pad_the_queries_beyond_each_draw():
    labels = np.array([[0, 0, 0, 1, 1, 1, 2, 2, 2]])       # 3 queries a class
    kept = uneven_queries(labels, ways=3, total=6, alpha=2.0, cap=3,
                          rng=np.random.default_rng(3))
    counts = [(kept[0] == n).sum() for n in range(3)]
    assert sum(counts) == 6 and max(counts) <= 3
    # Padding replaces exactly the dropped queries, each class keeping its first ones.
    for n in range(3):
        positions = np.flatnonzero(labels[0] == n)
        assert (kept[0][positions[:counts[n]]] == n).all()
        assert (kept[0][positions[counts[n]:]] == -1).all()
    assert open_set_support(np.array([[0, 1, 2, 3]]), 2).tolist() == [[0, 1, -1, -1]]

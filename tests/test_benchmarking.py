"""The paired timing that bin/compare_torch.py and the paired XLA case report."""

import pytest

from tfmeta.benchmarking import common


def test_sides_alternate_within_a_round_and_the_warm_up_round_is_not_timed(monkeypatch):
    calls, clock = [], iter(range(0, 1000))
    # Each perf_counter() call advances one second; a step of side "b" costs 2 more.
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))

    def side(name, extra):
        def step(batch):
            calls.append((name, batch))
            for _ in range(extra):
                next(clock)
        return step, lambda batch: batch * 10

    times = common.alternate_steps({"a": side("a", 0), "b": side("b", 2)}, [0, 1, 2])
    assert calls == [("a", 0), ("b", 0), ("a", 10), ("b", 10), ("a", 20), ("b", 20)]
    assert times == {"a": [1, 1], "b": [3, 3]}
    assert common.paired_ratio(times, "b", "a") == pytest.approx(3.0)
    assert common.paired_ratio({"x": [2.0, 9.0, 1.0], "y": [1.0, 3.0, 1.0]}, "x", "y") == 2.0

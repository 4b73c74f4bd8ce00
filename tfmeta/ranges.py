"""Allowed ranges of numeric settings, checked once where a setting enters (a config, a
flag, a constructor), with an error that names the setting, its value and the range.

    Range(low=0, low_open=True).check("optimizer.learning_rate", -1e-3)
    ValueError: optimizer.learning_rate must be a number > 0; got -0.001.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from tfmeta.errors import UserError


def _number(value) -> str:
    """A bound as written: whole numbers in full (1000000000, not 1e+09)."""
    if value is None:
        return ""
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Range:
    """`low <= x <= high` (`<` where open), optionally an integer, optionally None; `why`,
    the reason for the range, is said after it ("an integer >= 2 (a confidence interval
    needs two)")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False
    why: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            text = (f"{kind} in {'(' if self.low_open else '['}{low}, {high}"
                    f"{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {low}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {high}"
        else:
            text = kind
        return (text + (" or None" if self.optional else "")
                + (f" ({self.why})" if self.why else ""))

    def contains(self, value) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if not math.isfinite(value) or (self.integer and int(value) != value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None
                    and (value > self.high or (self.high_open and value == self.high)))

    def check(self, name: str, value) -> None:
        if not self.contains(value):
            raise UserError(f"{name} must be {self.describe()}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a fixed set of values (an enumeration), checked as a `Range` is."""

    values: tuple

    def describe(self) -> str:
        return f"one of {list(self.values)}"

    def contains(self, value) -> bool:
        return value in self.values

    def check(self, name: str, value) -> None:
        if not self.contains(value):
            raise UserError(f"{name} must be {self.describe()}; got {value!r}.")


def check_all(ranges: dict, values: dict, prefix: str = "") -> None:
    """Checks every `values[name]` that `ranges` names (missing names are not checked)."""
    for name, allowed in ranges.items():
        if name in values:
            allowed.check(prefix + name, values[name])


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
FRACTION = Range(0, 1, high_open=True)             # [0, 1), e.g. a dropout rate
UNIT_INTERVAL = Range(0, 1)                        # [0, 1]
IMAGE_SIZE = Range(1, 2048, integer=True)         # a side of images, in pixels
# Episodes a meta-test scores: `config.eval_episodes`, bin/evaluate.py's --episodes and
# tfmeta.evaluation's `num_episodes` all check this one range.
EVAL_EPISODES = Range(2, 10 ** 6, integer=True, why="a confidence interval needs two")
# tf.distribute strategies a run may ask for (tfmeta.training.strategy builds them); here,
# below every layer, so that validating a config does not import the trainer.
STRATEGY = Choice(("default", "one_device", "mirrored", "multi_worker", "tpu"))
# How TensorFlow spends a CPU's cores (`config.cpu_threads`, tfmeta.training.cpu_threads).
CPU_THREADS = Choice(("auto", "ops", "tasks"))

"""What an episode is: `EpisodeShape` (N-way K-shot, or Meta-Dataset's variable ways and
shots with `VariableEpisodes`' parameters; drawn from any classes or within one group), the
one description every sampler, pipeline and learner data hook takes."""

from __future__ import annotations

import dataclasses
import math

from tfmeta.errors import UserError
from tfmeta.ranges import Range, check_all

# An episode's tensors (`tfmeta.data.episodes`).
EPISODE_KEYS = ("support_images", "support_labels", "query_images", "query_labels")
# The kinds of episode: N-way K-shot, or Meta-Dataset's variable ways and shots
# (`tfmeta.data.variable_sampling`), padded to static shapes.
EPISODE_SAMPLERS = ("fixed", "variable")
# Which classes an episode draws from: any of the split's, or those of one group
# (`ClassStore.class_groups`).
EPISODE_GROUPINGS = ("any", "within")

# Meta-Dataset's class weights: a class's share of the support set is scaled by a factor
# drawn log-uniformly in [1/2, 2].
LOG_HALF, LOG_TWO = math.log(0.5), math.log(2.0)

# Far above the published settings, low enough that a typo (an extra zero or two) is refused
# here rather than exhausting memory in the padded episodes.
FIELD_RANGES = {
    "min_ways": Range(2, 1000, integer=True),
    "max_ways": Range(2, 1000, integer=True),
    "max_queries": Range(1, 1000, integer=True),
    "max_support": Range(2, 10000, integer=True),
    "max_support_per_class": Range(1, 10000, integer=True),
    "min_log_weight": Range(-10, 10),
    "max_log_weight": Range(-10, 10),
}


def check_variable_fields(values, prefix: str = "") -> None:
    """Raises a ValueError naming the first field of `values` (a mapping of `VariableEpisodes`'
    fields) outside its range, or the pair that contradict each other; `prefix` is prepended
    to the names (a config's section)."""
    unknown = sorted(set(values) - set(FIELD_RANGES))
    if unknown:
        raise UserError(f"Unknown variable-episode field{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(prefix + k for k in unknown)}; valid fields: "
                        f"{sorted(FIELD_RANGES)}.")
    check_all(FIELD_RANGES, values, prefix)
    field = {k: prefix + k for k in FIELD_RANGES}
    if values["max_ways"] < values["min_ways"]:
        raise UserError(f"{field['max_ways']}={values['max_ways']} is less than "
                        f"{field['min_ways']}={values['min_ways']}; set max_ways >= min_ways.")
    if values["max_support"] < values["max_ways"]:
        raise UserError(
            f"{field['max_support']}={values['max_support']} is less than "
            f"{field['max_ways']}={values['max_ways']}, but every class of an episode needs a "
            f"support example; set max_support >= {values['max_ways']} or fewer max_ways.")
    if values["max_log_weight"] < values["min_log_weight"]:
        raise UserError(f"{field['max_log_weight']}={values['max_log_weight']} is less than "
                        f"{field['min_log_weight']}={values['min_log_weight']}; set "
                        "min_log_weight <= max_log_weight.")


@dataclasses.dataclass(frozen=True)
class VariableEpisodes:
    """The variable-episode sampler's parameters (Meta-Dataset's defaults).

    Attributes:
      min_ways, max_ways: N is uniform in [min_ways, min(max_ways, C)] (reference:
        `min_ways`, `max_ways_upper_bound`).
      max_queries: the most query examples per class (`max_num_query`).
      max_support: the most support examples in an episode (`max_support_set_size`); also
        the padded support length.
      max_support_per_class: the most a class adds to the drawn support-set size, which is
        not a limit on its support examples (`max_support_size_contrib_per_class`).
      min_log_weight, max_log_weight: each class's share of the support set is its example
        count times exp(uniform(min_log_weight, max_log_weight)): class imbalance.
    """

    min_ways: int = 5
    max_ways: int = 50
    max_queries: int = 10
    max_support: int = 500
    max_support_per_class: int = 100
    min_log_weight: float = LOG_HALF
    max_log_weight: float = LOG_TWO

    def __post_init__(self):
        check_variable_fields(dataclasses.asdict(self))

    @classmethod
    def from_config(cls, values, prefix: str = "episode_sampler.") -> VariableEpisodes:
        """From a config section (a mapping of some of the fields; the others keep their
        defaults); errors name the fields as `prefix + field`."""
        values = {**dataclasses.asdict(cls()), **dict(values)}
        check_variable_fields(values, prefix)
        return cls(**values)

    @property
    def support_slots(self) -> int:
        """The padded support length: `max_support`."""
        return self.max_support

    @property
    def query_slots(self) -> int:
        """The padded query length: `max_ways * max_queries`."""
        return self.max_ways * self.max_queries


def sampler_settings(section) -> tuple[str, dict]:
    """(name, the variable sampler's bounds) of a config's `episode_sampler` section; a
    UserError unless it is a section (a mapping, as a hand-edited config.json may not hold)
    whose name is one of EPISODE_SAMPLERS."""
    if not hasattr(section, "items") or isinstance(section, str):
        raise UserError(f"episode_sampler must be a section (name: one of "
                        f"{list(EPISODE_SAMPLERS)}, and the variable sampler's bounds); got "
                        f"{section!r}. In a run's config.json, write it as bin/train.py "
                        'records it: "episode_sampler": {"name": "fixed"}.')
    settings = dict(section)
    name = settings.pop("name", None)
    if name not in EPISODE_SAMPLERS:
        raise UserError(f"episode_sampler.name must be one of {list(EPISODE_SAMPLERS)}; got "
                        f"{name!r}.")
    return name, settings


def check_grouping(grouping: str, sampler: str = "fixed") -> None:
    """Raises a ValueError unless `grouping` is one of EPISODE_GROUPINGS that `sampler`'s
    episodes can be drawn with."""
    if grouping not in EPISODE_GROUPINGS:
        raise UserError(f"grouping (episode_grouping) must be one of "
                        f"{list(EPISODE_GROUPINGS)}; got {grouping!r}.")
    if grouping == "within" and sampler == "variable":
        raise UserError(
            "episode_grouping=within draws N-way K-shot episodes within one group, but "
            "episode_sampler.name=variable draws its ways from every class; use "
            "episode_grouping=any with variable episodes, or fixed ones (bin/evaluate.py "
            "--within_group with --ways and --shots).")


@dataclasses.dataclass(frozen=True)
class EpisodeShape:
    """The episodes to sample.

    Attributes:
      ways, shots, queries: N classes, K support examples and `queries` queries of each
        (fixed episodes; a variable episode draws its own).
      sampler: "fixed" (N-way K-shot) or "variable" (Meta-Dataset's, padded to static shapes).
      variable: the variable sampler's parameters (`VariableEpisodes`; None: its published
        defaults); only with `sampler="variable"`.
      grouping: "any" (each episode's classes drawn from the whole split) or "within" (from
        one group of `ClassStore.class_groups`, drawn uniformly among the groups with at least
        `ways` classes; fixed episodes only).
    """

    ways: int
    shots: int
    queries: int
    sampler: str = "fixed"
    variable: VariableEpisodes | None = None
    grouping: str = "any"

    def __post_init__(self):
        for name in ("ways", "shots", "queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise UserError(f"{name} must be a positive integer; got {value!r}.")
        if self.sampler not in EPISODE_SAMPLERS:
            raise UserError(f"sampler (episode_sampler.name) must be one of "
                            f"{list(EPISODE_SAMPLERS)}; "
                            f"got {self.sampler!r}.")
        check_grouping(self.grouping, self.sampler)
        if self.sampler == "variable" and self.variable is None:
            object.__setattr__(self, "variable", VariableEpisodes())  # (frozen)
        if self.sampler == "fixed" and self.variable is not None:
            raise UserError("variable episode parameters were given for fixed episodes; pass "
                            "sampler='variable' with them, or leave them out.")

    @property
    def padded(self) -> bool:
        """Whether episodes of this shape are padded (variable ways and shots: labels -1 and
        zero images past the real examples)."""
        return self.sampler == "variable"

    def fixed(self, ways: int | None = None, shots: int | None = None) -> EpisodeShape:
        """Fixed episodes of this setting (and grouping), with `ways`/`shots` where given."""
        return EpisodeShape(ways or self.ways, shots or self.shots, self.queries,
                            grouping=self.grouping)

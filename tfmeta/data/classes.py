"""The class store: a split's examples grouped by class, the bottom layer of `tfmeta.data`.

Episodes are sampled over one small interface, `ClassStore`, which two stores implement:
`ClassImages` holds the examples in memory (arrays gathered in the graph), and
`tfmeta.data.record_store.RecordClasses` holds them as per-class record files, streamed.
Everything above (the checks and compositions of `tfmeta.data.sampling`, the pipelines of
`tfmeta.data.episodes` and `tfmeta.data.record_stream`) reads a store through it only.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import numpy as np

from tfmeta.errors import UserError

# The fewest classes an episode tells apart (`Recipe.min_ways`; ways >= 2): what a
# split needs whatever `ways` asks, and what to do about one with fewer (a user's own data).
MIN_CLASSES = 2
MORE_CLASSES = ("give the split more classes: more classes in the data, or a data.class_split "
                "or data.split_fractions that puts 2 or more in it")


class ClassStore(abc.ABC):
    """The classes of one split, as the samplers read them.

    Attributes every store has:
      class_counts: int array `[C]`, examples of each class (they may differ).
      class_names: `C` names, for messages and reports.
      class_groups: `C` group names, one per class (Omniglot's alphabet of each character),
        or None when the classes have no groups; what `grouping="within"` episodes draw in.
      drop_small_classes: what episodes do with a class that has fewer examples than an
        episode takes of each: leave it out with a warning naming it (a user's own data,
        where some classes are small), or refuse (False: a benchmark's classes are fixed).
      transform: None, or a TF function from stored examples to model inputs.
    """

    class_counts: np.ndarray
    class_names: tuple
    class_groups: tuple | None
    drop_small_classes: bool
    transform: Callable | None

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    @abc.abstractmethod
    def example_shape(self) -> tuple:
        """The shape of one model input (after `transform`)."""

    @abc.abstractmethod
    def select(self, class_indices) -> ClassStore:
        """The store of the given classes, in that order (a store of the same kind)."""

    @abc.abstractmethod
    def stored_examples(self, index: int) -> np.ndarray:
        """Class `index`'s examples as stored."""

    @abc.abstractmethod
    def class_examples(self, index: int) -> np.ndarray:
        """Class `index`'s examples as model inputs."""

    @abc.abstractmethod
    def all_inputs(self) -> np.ndarray:
        """Every example as model inputs `[total, *example_shape]`, class after class (a
        UserError where the store is not held in memory)."""


@dataclasses.dataclass(frozen=True)
class ClassImages(ClassStore):
    """Examples grouped by class, stored flat for in-graph gathering.

    Attributes:
      images: array `[total, *stored_shape]`, class after class: the model inputs, or (with
        `transform`) a compact stored form such as uint8 pixels.
      class_offsets: int array `[C]`, index in `images` of each class's first example.
      class_counts: int array `[C]`, number of examples of each class (may differ).
      class_names: `C` names, for messages and reports.
      transform: optional TF function, stored examples `[n, *stored_shape]` -> model inputs
        `[n, *example_shape]`; the episode sampler applies it after gathering (so a large
        image dataset stays uint8 in memory) and `inputs`/`class_examples` apply it here.
      drop_small_classes: what episodes do with a class that has fewer examples than an
        episode takes of each: leave it out with a warning naming it (a user's own data,
        where some classes are small), or refuse (False: a benchmark's classes are fixed).
      class_groups: `C` group names, one per class (Omniglot's alphabet of each character), or
        None when the classes have no groups; what `grouping="within"` episodes draw in.
    """

    images: np.ndarray
    class_offsets: np.ndarray
    class_counts: np.ndarray
    class_names: tuple
    transform: Callable | None = None
    drop_small_classes: bool = False
    class_groups: tuple | None = None

    def __post_init__(self):
        if self.class_groups is not None:
            groups = tuple(str(g) for g in self.class_groups)
            if len(groups) != len(self.class_counts):
                raise UserError(f"class_groups has {len(groups)} group names for "
                                f"{len(self.class_counts)} classes; give one per class, or "
                                "None for classes without groups.")
            object.__setattr__(self, "class_groups", groups)  # (frozen) as a tuple of str

    @classmethod
    def from_lists(cls, per_class: list, class_names=None, transform=None,
                   drop_small_classes: bool = False, class_groups=None) -> ClassImages:
        """Builds from a list with one `[count_c, *example_shape]` array per class."""
        if not per_class:
            raise UserError("ClassImages needs at least one class; got an empty list.")
        counts = np.array([len(x) for x in per_class], np.int64)
        empty = [i for i, c in enumerate(counts) if c == 0]
        if empty:
            names = class_names or [str(i) for i in range(len(per_class))]
            raise UserError(
                f"Class {names[empty[0]]!r} has no examples ({len(empty)} empty classes); "
                "remove empty class folders or fix the data."
            )
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        names = tuple(class_names) if class_names is not None else tuple(
            str(i) for i in range(len(per_class)))
        return cls(np.concatenate(per_class, axis=0), offsets, counts, names, transform,
                   drop_small_classes, class_groups)

    @classmethod
    def from_dense(cls, images: np.ndarray, class_names=None, transform=None,
                   class_groups=None) -> ClassImages:
        """Builds from a dense `[C, M, *example_shape]` array (M examples per class)."""
        return cls.from_lists(list(images), class_names, transform, class_groups=class_groups)

    @property
    def example_shape(self) -> tuple:
        """The shape of one model input (after `transform`)."""
        if self.transform is None:
            return tuple(self.images.shape[1:])
        return tuple(self.inputs(self.images[:1]).shape[1:])

    def inputs(self, stored: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Model inputs of stored examples (`transform` applied, in batches)."""
        if self.transform is None:
            return stored
        return np.concatenate([np.asarray(self.transform(stored[i:i + batch_size]))
                               for i in range(0, max(len(stored), 1), batch_size)])

    def select(self, class_indices) -> ClassImages:
        """The sub-collection of the given classes, in that order (stored as they are)."""
        return ClassImages.from_lists(
            [self.stored_examples(i) for i in class_indices],
            [self.class_names[i] for i in class_indices], self.transform,
            self.drop_small_classes, None if self.class_groups is None else
            [self.class_groups[i] for i in class_indices])

    def stored_examples(self, index: int) -> np.ndarray:
        """Class `index`'s examples as stored."""
        start = self.class_offsets[index]
        return self.images[start:start + self.class_counts[index]]

    def class_examples(self, index: int) -> np.ndarray:
        """Class `index`'s examples as model inputs."""
        return self.inputs(self.stored_examples(index))

    def all_inputs(self) -> np.ndarray:
        """Every example as model inputs `[total, *example_shape]`, class after class."""
        return self.inputs(self.images)

"""Sinusoid regression tasks (Finn, Abbeel and Levine, ICML 2017, section 5.1).

A task is `y = amplitude * sin(x - phase)` with amplitude uniform in [0.1, 5.0], phase
uniform in [0, pi], and its K support and Q query points x uniform in [-5, 5]. There are
no files: tasks are drawn in the graph, episode `e` a pure function of (seed, e) like the
classifiers' episodes (`tfmeta.data.episodes.episode_numbers`), so a resumed run sees what
an uninterrupted one sees. Episodes are keyed like the classifiers':

    support_images  [K, 1]   x          support_labels  [K, 1]   y
    query_images    [Q, 1]   x          query_labels    [Q, 1]   y

`load()` returns a `SinusoidTasks`: what the trainer, evaluation and export use of a
`FewShotDataset` (name, description, input_shape, raw_shape, preprocess, value_range,
data_dir, fingerprint) and the episode stream, but no class splits.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfmeta.data.base import RegressionTasks
from tfmeta.data.sampling import episode_numbers, unsharded
from tfmeta.errors import UserError
from tfmeta.ranges import Range

# Seeds of the streams a run samples (the classifiers use seed and seed + 1 likewise).
SPLIT_SEED_OFFSETS = {"train": 0, "val": 1, "test": 2}


class SinusoidTasks(RegressionTasks):
    """The distribution of sinusoid regression tasks.

    Args:
      amplitude_min, amplitude_max: amplitude range (the paper's [0.1, 5.0]).
      phase_min, phase_max: phase range (the paper's [0, pi]).
      x_min, x_max: where the points x are drawn (the paper's [-5, 5]).
    """

    name = "sinusoid"
    raw_shape = (1,)
    input_shape = (1,)
    value_range = None  # served x may lie anywhere (extrapolation); only finiteness is checked

    def __init__(self, amplitude_min=0.1, amplitude_max=5.0, phase_min=0.0, phase_max=math.pi,
                 x_min=-5.0, x_max=5.0):
        for low_name, low, high_name, high in (("amplitude_min", amplitude_min, "amplitude_max",
                                                amplitude_max),
                                               ("phase_min", phase_min, "phase_max", phase_max),
                                               ("x_min", x_min, "x_max", x_max)):
            Range().check(low_name, low)
            Range(low=low, low_open=True).check(high_name, high)
        self.amplitude_range = (float(amplitude_min), float(amplitude_max))
        self.phase_range = (float(phase_min), float(phase_max))
        self.x_range = (float(x_min), float(x_max))
        self.description = (f"sinusoid tasks: amplitude in [{amplitude_min:g}, "
                            f"{amplitude_max:g}], phase in [{phase_min:g}, {phase_max:g}], "
                            f"x in [{x_min:g}, {x_max:g}]")

    @staticmethod
    def preprocess(x):
        """x is the model input as it is."""
        return tf.convert_to_tensor(x, tf.float32)

    def split(self, name: str):
        raise UserError(f"sinusoid has no class splits (asked for {name!r}): its tasks are "
                        "drawn by SinusoidTasks.episodes(); use a learner of regression "
                        "tasks: --algo=maml (MAMLRegression).")

    # ---------------------------------------------------------------- tasks
    def sample_task(self, seed):
        """(amplitude, phase), scalars, a pure function of a `[2]` int seed."""
        draws = tf.random.stateless_uniform([2], seed)
        (a_low, a_high), (p_low, p_high) = self.amplitude_range, self.phase_range
        return a_low + (a_high - a_low) * draws[0], p_low + (p_high - p_low) * draws[1]

    @staticmethod
    def function(amplitude, phase, x):
        """The task's curve: `amplitude * sin(x - phase)`."""
        return amplitude * tf.sin(x - phase)

    def sample_episode(self, seed, shots: int, queries: int, with_parameters=False):
        """One episode (see the module docstring) from a `[2]` int seed."""
        task_seed, point_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        amplitude, phase = self.sample_task(task_seed)
        low, high = self.x_range
        x = tf.random.stateless_uniform([shots + queries, 1], point_seed, low, high)
        y = self.function(amplitude, phase, x)
        episode = {"support_images": x[:shots], "support_labels": y[:shots],
                   "query_images": x[shots:], "query_labels": y[shots:]}
        if with_parameters:
            episode.update(amplitude=amplitude, phase=phase)
        return episode

    def episodes(self, shots: int, queries: int, meta_batch_size: int | None = None,
                 seed: int = 0, num_episodes: int | None = None, start_step: int = 0,
                 worker: int = 0, workers: int = 1, with_parameters: bool = False):
        """A `tf.data.Dataset` of episodes (meta-batches of them with `meta_batch_size`).

        Episode `e` is a pure function of (`seed`, `e`) and meta-batch `s` holds episodes
        `s * B .. s * B + B - 1`, as `tfmeta.data.episodes.episode_dataset`'s.
        `with_parameters` adds each task's `amplitude` and `phase` (for plots).
        """
        for name, value in (("shots", shots), ("queries", queries)):
            if int(value) != value or value < 1:
                raise UserError(f"sinusoid episodes need {name} >= 1 points; got {value!r}.")
        base_seed = tf.constant([seed, 0], tf.int64)
        ds = episode_numbers(meta_batch_size, start_step, num_episodes, worker, workers).map(
            lambda e: self.sample_episode(tf.random.experimental.stateless_fold_in(base_seed, e),
                                          shots, queries, with_parameters),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if meta_batch_size:
            ds = ds.batch(meta_batch_size // workers, drop_remainder=True)
        return unsharded(ds)


def load(data_dir=None, amplitude_min: float = 0.1, amplitude_max: float = 5.0,
         phase_min: float = 0.0, phase_max: float = math.pi, x_min: float = -5.0,
         x_max: float = 5.0) -> SinusoidTasks:
    """The sinusoid task distribution (no files: generated in the graph)."""
    if data_dir is not None:
        raise UserError(f"sinusoid tasks are generated, not read; got --data_dir={data_dir!r}. "
                        "Leave --data_dir unset.")
    return SinusoidTasks(amplitude_min, amplitude_max, phase_min, phase_max, x_min, x_max)

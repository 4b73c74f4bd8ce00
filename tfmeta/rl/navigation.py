"""2D navigation (Finn, Abbeel and Levine 2017, section 5.3), written in TensorFlow so that
rollouts run inside the graph.

A point agent starts at the origin of the plane; a task is a goal position drawn uniformly
from the square [-0.5, 0.5]^2. Each of `horizon` = 100 steps the policy emits an action
`a [2]`, the agent moves by the velocity `max_speed * clip(a, -1, 1)` (at most 0.1 per
coordinate and step) and receives the reward minus its distance to the goal after the move.
An episode ends early once the agent is within 0.01 of the goal in both coordinates.

    position_0 = (0, 0)
    position_t+1 = position_t + 0.1 * clip(action_t, -1, 1)
    reward_t = -||position_t+1 - goal||

Followed: the authors' reference code, `cbfinn/maml_rl`:
`maml_examples/point_env_randgoal.py` (`PointEnvRandGoal`: start at (0, 0), goals
`uniform(-0.5, 0.5, size=2)`, action space Box(-0.1, 0.1), reward `-sqrt(dx**2 + dy**2)`
after the move, done when `abs(dx) < 0.01 and abs(dy) < 0.01`) and
`maml_examples/maml_trpo_point.py` (horizon `max_path_length = 100`, and the environment
wrapped in rllab's `normalize`, which clips the policy's action to [-1, 1] and rescales it
to the action space's bounds: hence `0.1 * clip(action, -1, 1)`).

`NavigationTasks` is what `tfmeta.data.load_dataset("navigation_2d")` returns: the task
distribution, with the fields the trainer, evaluation and export read of a `FewShotDataset`.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfmeta.data.base import TaskSource
from tfmeta.errors import UserError
from tfmeta.ranges import POSITIVE, POSITIVE_INT, check_all

# Seed salts of the goal streams of each split: the splits draw disjoint streams of goals
# from the same distribution ("new goals" at meta-test time).
SPLIT_SALTS = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Navigation2D:
    """The point-agent environment (see the module docstring); all methods are TF ops on
    batches with any leading shape `[...]`.

    Args:
      horizon: steps per episode.
      max_speed: the largest move per coordinate and step.
      goal_bound: goals are uniform in [-goal_bound, goal_bound]^2.
      success_radius: the episode ends once |position - goal| < this in both coordinates.
    """

    horizon: int = 100
    max_speed: float = 0.1
    goal_bound: float = 0.5
    success_radius: float = 0.01

    observation_dim = 2
    action_dim = 2

    argument_ranges = {"horizon": POSITIVE_INT, "max_speed": POSITIVE, "goal_bound": POSITIVE,
                       "success_radius": POSITIVE}

    def __post_init__(self):
        check_all(self.argument_ranges, dataclasses.asdict(self), "data.")

    def initial_positions(self, shape) -> tf.Tensor:
        """The start of every episode: the origin, `[*shape, 2]` (`shape` a list or a 1-D
        tensor)."""
        return tf.zeros(tf.concat([shape, [self.observation_dim]], 0), tf.float32)

    def velocity(self, actions):
        """The move an action `[..., 2]` makes: `max_speed * clip(actions, -1, 1)`."""
        return self.max_speed * tf.clip_by_value(actions, -1.0, 1.0)

    def step(self, positions, actions, goals):
        """One step of every agent: positions, actions and goals `[..., 2]` ->
        (next positions `[..., 2]`, rewards `[...]`, done `[...]` float 0/1)."""
        next_positions = positions + self.velocity(actions)
        offset = next_positions - goals
        rewards = -tf.norm(offset, axis=-1)
        done = tf.cast(tf.reduce_all(tf.abs(offset) < self.success_radius, axis=-1), tf.float32)
        return next_positions, rewards, done

    def sample_goals(self, count: int, seed) -> tf.Tensor:
        """`count` goals `[count, 2]` uniform in the square, a pure function of `seed [2]`."""
        return tf.random.stateless_uniform([count, 2], seed, minval=-self.goal_bound,
                                           maxval=self.goal_bound)


def goal_seed(seed: int, split: str, index) -> tf.Tensor:
    """The `[2]` seed of goal batch `index` of `split`'s stream under the run's `seed`."""
    if split not in SPLIT_SALTS:
        raise UserError(f"navigation_2d has splits {sorted(SPLIT_SALTS)}; got {split!r}.")
    return tf.stack([tf.cast(seed, tf.int64) * 8 + SPLIT_SALTS[split], tf.cast(index, tf.int64)])


def _identity(observations):
    return observations


@dataclasses.dataclass
class NavigationTasks(TaskSource):
    """The task distribution of 2D navigation, with what the trainer, evaluation and export
    use of a `FewShotDataset` (no files: `data_dir` is None, the fingerprint empty).

    `goals(split, count, seed, index)` is goal batch `index` of a split's stream.
    """

    environment: Navigation2D
    name: str = "navigation_2d"
    raw_shape: tuple = (2,)

    @property
    def description(self) -> str:
        env = self.environment
        return (f"2D navigation: goals uniform in [-{env.goal_bound:g}, {env.goal_bound:g}]^2, "
                f"horizon {env.horizon}, speed <= {env.max_speed:g} per step")

    @property
    def input_shape(self) -> tuple:
        """What the policy sees: the agent's position `(2,)`."""
        return (self.environment.observation_dim,)

    @property
    def preprocess(self):
        """Observations are the policy's inputs as they are."""
        return _identity

    def goals(self, split: str, count: int, seed: int, index) -> tf.Tensor:
        return self.environment.sample_goals(count, goal_seed(seed, split, index))


def load(data_dir=None, horizon: int = 100, max_speed: float = 0.1, goal_bound: float = 0.5,
         success_radius: float = 0.01) -> NavigationTasks:
    """The 2D navigation tasks (nothing is read: `data_dir` must be None)."""
    if data_dir is not None:
        raise UserError(f"navigation_2d is simulated and reads no files; got "
                        f"--data_dir={data_dir!r}. Leave --data_dir unset.")
    return NavigationTasks(Navigation2D(horizon, max_speed, goal_bound, success_radius))

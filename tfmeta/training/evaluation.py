"""Evaluating a trained run: its learner's meta-test protocol on a split, written to
`<workdir>/eval.json` (the statistics are `tfmeta.evaluation`'s)."""

from __future__ import annotations

import json

from tfmeta.files import atomic_write
from tfmeta.ranges import EVAL_EPISODES, Range
from tfmeta.training.run import EVAL_FILE, LOGS, open_run
from tfmeta.training.trainer import check_episode_sampler

WAYS_OR_SHOTS = Range(1, integer=True, optional=True)


def evaluate_workdir(workdir: str, data_dir: str | None = None, split: str = "test",
                     num_episodes: int | None = None, ways: int | None = None,
                     shots: int | None = None, seed: int = 1234) -> dict:
    """Evaluates the newest checkpoint of a run and writes `<workdir>/eval.json`.

    `data_dir` defaults to the data the run was trained on (config.json records it). The
    episodes are the run's (fixed, or variable with `episode_sampler=variable`); `ways` or
    `shots` ask for fixed episodes of that setting instead.
    """
    if num_episodes is not None:  # None: the config's eval_episodes
        EVAL_EPISODES.check("episodes", num_episodes)
    WAYS_OR_SHOTS.check("ways", ways)
    WAYS_OR_SHOTS.check("shots", shots)
    run = open_run(workdir, data_dir)
    if not (ways or shots):  # which ask for fixed episodes, which every learner takes
        check_episode_sampler(run.learner, run.config, run.dataset.input_shape)
    result = run.learner.meta_test(run.dataset, run.spec, split, num_episodes, seed,
                                   ways=ways, shots=shots,
                                   log_dir=run.path(LOGS, "eval"), step=run.step)
    result.update(algo=run.config.algo, dataset=run.config.dataset, split=split, step=run.step,
                  data_dir=run.dataset.data_dir)
    try:
        with atomic_write(run.path(EVAL_FILE)) as f:
            json.dump(result, f, indent=2)
    except OSError as error:
        raise OSError(f"Evaluated, but could not write {run.path(EVAL_FILE)} "
                      f"({error.strerror or error}); free disk space and evaluate again.") \
            from None
    return result

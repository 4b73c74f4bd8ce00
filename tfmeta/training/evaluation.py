"""Evaluating a trained run: its learner's meta-test protocol on a split, written to
`<workdir>/eval.json` (the statistics are `tfmeta.evaluation`'s).

Fine-tuning at test time (`tfmeta.algorithms.finetune`, P>M>F) is a test-time option of a
run: `finetune_steps` and `finetune_lr` override the run's for one evaluation, and
`select_finetune_lr` chooses the learning rate from the paper's grid on a few validation
episodes, records it in the run's config.json (and its export), then evaluates with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from tfmeta.algorithms import ALGORITHMS, learner_class
from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.finetune import LEARNING_RATE_GRID, FineTuningClassifier
from tfmeta.config import apply_overrides, load_config, save_config
from tfmeta.errors import UserError
from tfmeta.files import atomic_write
from tfmeta.ranges import EVAL_EPISODES, NON_NEGATIVE, NON_NEGATIVE_INT, Range
from tfmeta.training.export import backbone_metadata, export_learner
from tfmeta.training.lock import WorkdirLock
from tfmeta.training.run import CONFIG_FILE, EVAL_FILE, EXPORT, LOGS, open_run
from tfmeta.training.trainer import check_episode_sampler

WAYS = Range(2, integer=True, optional=True,
             why="with one way every query is right whatever the learner")
SHOTS = Range(1, integer=True, optional=True)
# Validation episodes per candidate learning rate of `select_finetune_lr` (the paper's code
# scores 5 per domain; more give a steadier choice for little cost at these sizes).
SELECT_EPISODES = 50


def evaluate_workdir(workdir: str, data_dir: str | None = None, split: str = "test",
                     num_episodes: int | None = None, ways: int | None = None,
                     shots: int | None = None, seed: int = 1234,
                     within_group: bool = False, finetune_steps: int | None = None,
                     finetune_lr: float | None = None, select_finetune_lr: bool = False,
                     select_episodes: int = SELECT_EPISODES) -> dict:
    """Evaluates the newest checkpoint of a run and writes `<workdir>/eval.json`.

    `data_dir` defaults to the data the run was trained on (config.json records it). The
    episodes are the run's (fixed, or variable with `episode_sampler=variable`); `ways` or
    `shots` ask for fixed episodes of that setting instead. `within_group` draws each
    episode's classes within one group (Omniglot's alphabets; `within_group_spec`).

    `finetune_steps` / `finetune_lr` (None: the run's) set the learner's fine-tuning for this
    evaluation. `select_finetune_lr` first scores each rate of `LEARNING_RATE_GRID` on
    `select_episodes` episodes of the val split, keeps the best (the smaller on a tie, so 0,
    no fine-tuning, where it does not help), records it in config.json (with
    `finetune_steps` where given) and rewrites `<workdir>/export` if there is one (under the
    workdir's lock), then evaluates `split` with it. eval.json then has `finetune_steps`,
    `finetune_lr` and `finetune_selection` (every candidate's validation accuracy).
    """
    if num_episodes is not None:  # None: the config's eval_episodes
        EVAL_EPISODES.check("episodes", num_episodes)
    WAYS.check("--ways", ways)
    SHOTS.check("--shots", shots)
    overrides = finetune_overrides(workdir, finetune_steps, finetune_lr, select_finetune_lr,
                                   select_episodes)
    run = open_run(workdir, data_dir, overrides=overrides)
    if not (ways or shots):  # which ask for fixed episodes, which every learner takes
        check_episode_sampler(run.learner, run.config, run.dataset.input_shape)
    spec = within_group_spec(run.learner, run.spec) if within_group else run.spec
    selection = None
    if select_finetune_lr:
        selection = select_learning_rate(run, spec, select_episodes, seed, ways, shots)
        record_finetuning(run, overrides)
    result = run.learner.meta_test(run.dataset, spec, split, num_episodes, seed,
                                   ways=ways, shots=shots,
                                   log_dir=run.path(LOGS, "eval"), step=run.step)
    result.update(algo=run.config.algo, dataset=run.config.dataset, split=split, step=run.step,
                  data_dir=run.dataset.data_dir)
    if isinstance(run.learner, FineTuningClassifier):
        result.update(finetune_steps=run.learner.finetune_steps,
                      finetune_lr=run.learner.finetune_lr)
    if selection is not None:
        result.update(finetune_selection=selection)
    try:
        with atomic_write(run.path(EVAL_FILE)) as f:
            json.dump(result, f, indent=2)
    except OSError as error:
        raise OSError(f"Evaluated, but could not write {run.path(EVAL_FILE)} "
                      f"({error.strerror or error}); free disk space and evaluate again.") \
            from None
    return result


def within_group_spec(learner, spec):
    """`spec` with its meta-test episodes (`spec.test`) drawn within one group of classes
    (`grouping="within"`), which the learners whose meta-test is
    `EpisodicClassifier.meta_test` pass to the sampler; a ValueError for the others."""
    name = type(learner).__name__
    if type(learner).meta_test is not EpisodicClassifier.meta_test:
        raise UserError(f"--within_group: {name} has a meta-test of its own "
                        f"({name}.meta_test) that does not draw episodes within groups; "
                        "evaluate it without --within_group.")
    return dataclasses.replace(spec, test=dataclasses.replace(spec.test, grouping="within"))


# --------------------------------------------------------------- fine-tuning
def finetune_overrides(workdir, finetune_steps, finetune_lr, select, select_episodes) -> list:
    """The `learner.*` overrides of the fine-tuning flags, after refusing, in one line, those
    this run cannot take: any of them for a learner that does not fine-tune, a rate both
    given and selected, or a selection with no fine-tuning steps."""
    if finetune_steps is None and finetune_lr is None and not select:
        return []
    if finetune_steps is not None:
        NON_NEGATIVE_INT.check("finetune_steps", finetune_steps)
    if finetune_lr is not None:
        NON_NEGATIVE.check("finetune_lr", finetune_lr)
    flag = ("--finetune_steps" if finetune_steps is not None else
            "--finetune_lr" if finetune_lr is not None else "--select_finetune_lr")
    config = load_config(os.path.join(workdir, CONFIG_FILE))
    if config.algo not in ALGORITHMS or \
            not issubclass(learner_class(config.algo), FineTuningClassifier):
        able = sorted(a for a in ALGORITHMS if issubclass(learner_class(a), FineTuningClassifier))
        raise UserError(f"{flag}: this run's --algo={config.algo} does not fine-tune a backbone "
                        f"at test time; the learners that do: {', '.join(able)}.")
    if select:
        EVAL_EPISODES.check("select_episodes", select_episodes)
        if finetune_lr is not None:
            raise UserError(f"--finetune_lr={finetune_lr} and --select_finetune_lr both set "
                            "the fine-tuning learning rate; pass one of them.")
        steps = finetune_steps if finetune_steps is not None else \
            config.learner.get("finetune_steps", 0)
        if not steps:
            why = ("--finetune_steps=0" if finetune_steps is not None else
                   "this run has learner.finetune_steps=0 and no --finetune_steps")
            raise UserError(f"--select_finetune_lr chooses the learning rate of fine-tuning, "
                            f"but {why}; pass --finetune_steps=N (the paper fine-tunes 40 to "
                            "100 steps per episode).")
    return ([f"learner.finetune_steps={finetune_steps}"] if finetune_steps is not None else []) \
        + ([f"learner.finetune_lr={finetune_lr}"] if finetune_lr is not None else [])


def select_learning_rate(run, spec, episodes: int, seed: int, ways=None, shots=None) -> dict:
    """Scores every rate of `LEARNING_RATE_GRID` (P>M>F's per-domain search) on `episodes`
    episodes of the val split, the meta-test's setting, and leaves the learner with the best
    (the first of the grid's order on a tie: 0, no fine-tuning, before any other). Returns
    what eval.json records of it."""
    learner = run.learner
    trained_on = bool(run.config.get("data", {}).get("train_on_val"))
    if trained_on:
        logging.warning("This run trained on its val classes too (data.train_on_val): the "
                        "learning rate is chosen on classes the backbone has seen.")
    candidates = []
    for rate in LEARNING_RATE_GRID:
        learner.finetune_lr = rate  # read when meta_test traces the learner's test_logits
        scored = learner.meta_test(run.dataset, spec, "val", episodes, seed, ways=ways,
                                   shots=shots)
        candidates.append({"finetune_lr": rate, "accuracy": scored["accuracy"],
                           "ci95": scored["ci95"]})
        logging.info("finetune_lr=%g: val accuracy %.4f", rate, scored["accuracy"])
    best = max(candidates, key=lambda c: c["accuracy"])  # the first of the best
    learner.finetune_lr = best["finetune_lr"]
    return {"split": "val", "episodes": episodes, "seed": seed,
            "finetune_steps": learner.finetune_steps, "candidates": candidates,
            "chosen": best["finetune_lr"], "val_classes_trained_on": trained_on}


def record_finetuning(run, overrides) -> None:
    """Writes the learner's fine-tuning into the run's config.json (`learner.finetune_lr`,
    and `finetune_steps` where `overrides` set it) and rewrites `<workdir>/export` if the run
    has one, so bin/predict.py serves what config.json says; under the workdir's lock, so
    never while a trainer runs there."""
    path = run.path(CONFIG_FILE)
    recorded = [f"learner.finetune_lr={run.learner.finetune_lr}"]
    if any(o.startswith("learner.finetune_steps=") for o in overrides):
        recorded.append(f"learner.finetune_steps={run.learner.finetune_steps}")
    with WorkdirLock(run.workdir):
        save_config(apply_overrides(load_config(path), recorded), path)
        logging.info("Recorded %s in %s.", ", ".join(recorded), path)
        if os.path.isdir(run.path(EXPORT)):  # the learner as config.json now builds it
            logging.info("Exported to %s", export_learner(
                run.learner, run.dataset, run.path(EXPORT), backbone_metadata(run.config)))

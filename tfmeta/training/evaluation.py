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
import math
import os

import numpy as np
import tensorflow as tf

from tfmeta import calibration, evaluation, heads
from tfmeta.algorithms import ALGORITHMS, learner_class
from tfmeta.algorithms.episodic import EpisodicClassifier
from tfmeta.algorithms.finetune import (
    LEARNING_RATE_GRID,
    TEST_HEADS,
    FineTuningClassifier,
)
from tfmeta.config import apply_overrides, load_config, save_config
from tfmeta.errors import UserError
from tfmeta.files import atomic_write
from tfmeta.ranges import EVAL_EPISODES, NON_NEGATIVE, NON_NEGATIVE_INT, Range
from tfmeta.training.export import backbone_metadata, export_learner, serving_settings
from tfmeta.training.features import train_feature_mean
from tfmeta.training.lock import WorkdirLock
from tfmeta.training.preflight import check_episode_sampler
from tfmeta.training.run import CONFIG_FILE, EVAL_FILE, EXPORT, LOGS, open_run

WAYS = Range(2, integer=True, optional=True,
             why="with one way every query is right whatever the learner")
SHOTS = Range(1, integer=True, optional=True)
# Validation episodes per candidate learning rate of `select_finetune_lr` (the paper's code
# scores 5 per domain; more give a steadier choice for little cost at these sizes).
SELECT_EPISODES = 50
# Validation episodes `calibrate` fits the temperature and the open-set threshold on.
CALIBRATION_EPISODES = 200


def evaluate_workdir(workdir: str, data_dir: str | None = None, split: str = "test",
                     num_episodes: int | None = None, ways: int | None = None,
                     shots: int | None = None, seed: int = 1234,
                     within_group: bool = False, finetune_steps: int | None = None,
                     finetune_lr: float | None = None, select_finetune_lr: bool = False,
                     select_episodes: int = SELECT_EPISODES, head: str | None = None,
                     query_balance: str | None = None, open_set: bool = False,
                     calibrate: bool = False, calibration_episodes: int = CALIBRATION_EPISODES,
                     open_set_keep: float = calibration.DEFAULT_KEEP,
                     queries: int | None = None) -> dict:
    """Evaluates the newest checkpoint of a run and writes `<workdir>/eval.json`.

    `data_dir` defaults to the data the run was trained on (config.json records it). The
    episodes are the run's (fixed, or variable with `episode_sampler.name=variable`); `ways` or
    `shots` ask for fixed episodes of that setting instead, `queries` for that many queries
    per class (the config's `eval_queries`). `within_group` draws each
    episode's classes within one group (Omniglot's alphabets; `within_group_spec`).

    `finetune_steps` / `finetune_lr` (None: the run's) set the learner's fine-tuning for this
    evaluation. `select_finetune_lr` first scores each rate of `LEARNING_RATE_GRID` on
    `select_episodes` episodes of the val split, keeps the best (the smaller on a tie, so 0,
    no fine-tuning, where it does not help), records it in config.json (with
    `finetune_steps` where given) and rewrites `<workdir>/export` if there is one (under the
    workdir's lock), then evaluates `split` with it. eval.json then has `finetune_steps`,
    `finetune_lr` and `finetune_selection` (every candidate's validation accuracy).

    `head` (`tfmeta.heads`; "own": the learner's rule) classifies with that head for this
    evaluation. `query_balance` "dirichlet:A" draws uneven query sets (`evaluation.Protocol`),
    `open_set` adds queries of classes outside the support set and measures the open-set
    distance. `calibrate` first fits the temperature and (for an embedding learner) the
    open-set threshold that keeps `open_set_keep` of the val queries, on
    `calibration_episodes` val episodes, and records them (with `head`) in config.json and
    the export, as `select_finetune_lr` does. eval.json records the head, whether it read
    the query set (`transductive`) and the ECE before and after the temperature.
    """
    if num_episodes is not None:  # None: the config's eval_episodes
        EVAL_EPISODES.check("episodes", num_episodes)
    WAYS.check("--ways", ways)
    SHOTS.check("--shots", shots)
    SHOTS.check("--queries", queries)
    alpha = parse_query_balance(query_balance)
    overrides = finetune_overrides(workdir, finetune_steps, finetune_lr, select_finetune_lr,
                                   select_episodes) + head_overrides(workdir, head) + \
        ([f"eval_queries={queries}"] if queries else [])
    run = open_run(workdir, data_dir, overrides=overrides)
    if not (ways or shots):  # which ask for fixed episodes, which every learner takes
        check_episode_sampler(run.learner, run.config, run.dataset.input_shape)
    check_protocol(run.learner, alpha, open_set,
                   variable=not (ways or shots) and run.spec.test.variable is not None)
    spec = within_group_spec(run.learner, run.spec) if within_group else run.spec
    selection = calibrated = None
    if select_finetune_lr:
        selection = select_learning_rate(run, spec, select_episodes, seed, ways, shots)
        record_finetuning(run, overrides)
    if (open_set or calibrate) and isinstance(run.learner, FineTuningClassifier) \
            and run.learner.feature_mean is None:
        run.learner.feature_mean = train_feature_mean(run.learner, run.dataset)
    if calibrate:
        if not isinstance(run.learner, EpisodicClassifier):
            raise UserError(f"--calibrate fits the temperature of a classifier's "
                            f"probabilities; {type(run.learner).__name__} is no classifier.")
        calibrated = calibrate_run(run, spec, calibration_episodes, seed, open_set_keep,
                                   ways, shots, head)
    protocol = None
    if alpha is not None or open_set:
        protocol = evaluation.Protocol(alpha, open_set, run.learner.temperature,
                                       run.learner.open_set_threshold)
    result = run.learner.meta_test(run.dataset, spec, split, num_episodes, seed,
                                   ways=ways, shots=shots,
                                   log_dir=run.path(LOGS, "eval"), step=run.step,
                                   **({"protocol": protocol} if protocol else {}))
    result.update(algo=run.config.algo, dataset=run.config.dataset, split=split, step=run.step,
                  data_dir=run.dataset.data_dir)
    settings = serving_settings(run.learner)  # head, transductive (classifiers only)
    result.update({k: settings[k] for k in ("head", "transductive") if k in settings})
    if isinstance(run.learner, FineTuningClassifier):
        result.update(finetune_steps=run.learner.finetune_steps,
                      finetune_lr=run.learner.finetune_lr)
    if selection is not None:
        result.update(finetune_selection=selection)
    if calibrated is not None:
        result.update(calibration=calibrated)
    try:
        with atomic_write(run.path(EVAL_FILE)) as f:
            json.dump(result, f, indent=2)
    except OSError as error:
        raise OSError(f"Evaluated, but could not write {run.path(EVAL_FILE)} "
                      f"({error.strerror or error}); free disk space and evaluate again.") \
            from None
    return result


# ------------------------------------------------- heads, uneven queries, open set
def head_learners() -> list:
    """The `--algo` names whose learners take `--head` (embedding learners and Pretrain)."""
    return sorted(a for a in ALGORITHMS if issubclass(learner_class(a), FineTuningClassifier))


def head_overrides(workdir: str, head: str | None) -> list:
    """`learner.test_head=<head>`, after refusing in one line a head that is not one or a
    learner that classifies by no features."""
    if head is None:
        return []
    if head not in TEST_HEADS:
        raise UserError(f"Unknown --head={head!r}; the heads: own (the learner's rule), "
                        f"{heads.describe_heads()}.")
    config = load_config(os.path.join(workdir, CONFIG_FILE))
    if config.algo not in head_learners():
        raise UserError(f"--head: this run's --algo={config.algo} does not classify support "
                        f"and query features with a head; the learners that do: "
                        f"{', '.join(head_learners())}.")
    return [f"learner.test_head={head}"]


def parse_query_balance(text: str | None) -> float | None:
    """"balanced" or None -> None; "dirichlet:A" -> A (> 0); else a one-line ValueError."""
    if text is None or text == "balanced":
        return None
    name, _, value = text.partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = None
    if name != "dirichlet" or alpha is None or not alpha > 0 or not math.isfinite(alpha):
        raise UserError(f"--query_balance must be balanced or dirichlet:A with A > 0 (Veilleux "
                        f"et al. use dirichlet:2); got {text!r}.")
    return alpha


def check_protocol(learner, alpha, open_set: bool, variable: bool) -> None:
    """Refuses in one line what a learner's meta-test cannot do: uneven or open-set episodes
    without padded episodes or the learner's own meta-test, the open set without a
    distance, either on variable episodes."""
    name = type(learner).__name__
    asked = ("--query_balance" if alpha is not None else "--open_set" if open_set else None)
    if asked is None:
        return
    if not learner.takes_padded_episodes or type(learner).meta_test is not \
            EpisodicClassifier.meta_test:
        able = [a for a in head_learners() if learner_class(a).takes_padded_episodes]
        raise UserError(f"{asked}: {name} does not take episodes with padded queries or "
                        f"support classes; the learners that do: {', '.join(able)}.")
    if open_set and not isinstance(learner, FineTuningClassifier):
        raise UserError(f"--open_set: {name} measures no distance from the support classes; "
                        f"use one of {', '.join(head_learners())}.")
    if variable:
        raise UserError(f"{asked} draws from fixed N-way K-shot episodes, but this run's are "
                        "variable; pass --ways and --shots.")



def calibrate_run(run, spec, episodes: int, seed: int, keep: float, ways=None, shots=None,
                  head: str | None = None) -> dict:
    """Fits the temperature (`tfmeta.calibration.fit_temperature`) and, for a learner that
    measures the open-set distance, the threshold keeping `keep` of the val queries, on
    `episodes` val episodes of the meta-test's setting; sets them on the learner, records
    them (and `head`) in config.json and rewrites the export if the run has one. Returns
    what eval.json records of it."""
    learner = run.learner
    if run.config.get("data", {}).get("train_on_val"):
        logging.warning("This run trained on its val classes too (data.train_on_val): the "
                        "temperature and the open-set threshold are fitted on classes the "
                        "backbone has seen, so they will be too confident and too tight.")
    setting = spec.test.fixed(ways, shots) if ways or shots else spec.test
    logits, labels, distances = collect_outputs(learner, run.dataset.split("val"), setting,
                                                episodes, spec.eval_meta_batch_size, seed)
    learner.temperature = calibration.fit_temperature(logits, labels)
    recorded = [f"learner.temperature={learner.temperature!r}"]
    threshold = None
    if distances is not None:
        threshold = calibration.threshold_at_keep(distances, keep)
        learner.open_set_threshold = threshold
        recorded.append(f"learner.open_set_threshold={threshold!r}")
    if head is not None:
        recorded.append(f"learner.test_head={head}")
    record_in_run(run, recorded)
    return {"split": "val", "episodes": episodes, "seed": seed, "head": serving_settings(learner)["head"],
            "temperature": learner.temperature,
            "nll_before": calibration.negative_log_likelihood(logits, labels),
            "nll_after": calibration.negative_log_likelihood(logits, labels,
                                                             learner.temperature),
            "open_set_threshold": threshold, "open_set_keep": keep if threshold else None}


def collect_outputs(learner, classes, setting, episodes: int, meta_batch_size: int,
                    seed: int) -> tuple:
    """(logits `[n, N]`, labels `[n]`, open-set distances of the real queries `[r]` or None)
    of `learner`'s `test_outputs` on `episodes` episodes of `setting` (an `EpisodeShape`)."""
    EVAL_EPISODES.check("calibration_episodes", episodes)
    stream = evaluation.episode_batches(classes, setting, episodes, meta_batch_size, seed + 2,
                                        "val")
    outputs_fn = tf.function(learner.test_outputs)
    logits, labels, distances = [], [], []
    width = 0
    for episodes_batch in stream:
        outputs = outputs_fn(episodes_batch)
        batch_logits = outputs["logits"].numpy().astype(np.float64)
        batch_labels = episodes_batch["query_labels"].numpy()
        width = max(width, batch_logits.shape[-1])
        logits.append(batch_logits.reshape(-1, batch_logits.shape[-1]))
        labels.append(batch_labels.reshape(-1))
        if "distance" in outputs:
            distances.append(outputs["distance"].numpy().reshape(-1)[batch_labels.reshape(-1)
                                                                      >= 0])
    logits = np.concatenate([np.pad(x, [(0, 0), (0, width - x.shape[1])],
                                    constant_values=-1e9) for x in logits])
    return logits, np.concatenate(labels), np.concatenate(distances) if distances else None


def record_in_run(run, recorded: list) -> None:
    """Writes `recorded` (`key=value`) into the run's config.json and rewrites
    `<workdir>/export` if the run has one, under the workdir's lock."""
    path = run.path(CONFIG_FILE)
    with WorkdirLock(run.workdir):
        save_config(apply_overrides(load_config(path), recorded), path)
        logging.info("Recorded %s in %s.", ", ".join(recorded), path)
        if os.path.isdir(run.path(EXPORT)):  # the learner as config.json now builds it
            logging.info("Exported to %s", export_learner(
                run.learner, run.dataset, run.path(EXPORT), backbone_metadata(run.config)))


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
    has one, so bin/predict.py serves what config.json says (`record_in_run`)."""
    recorded = [f"learner.finetune_lr={run.learner.finetune_lr}"]
    if any(o.startswith("learner.finetune_steps=") for o in overrides):
        recorded.append(f"learner.finetune_steps={run.learner.finetune_steps}")
    record_in_run(run, recorded)

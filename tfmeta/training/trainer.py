"""`train(config, workdir)`: the whole meta-training run behind `bin/train.py`.

Keras does the loop: the learner's `train_step` is the meta-step and `learner.fit`
runs it under the strategy with Keras's own TensorBoard callback and progress bar.
Rerunning resumes from `<workdir>/checkpoints`, and resuming equals never stopping:
the episode stream is a pure function of (seed, step), so a run stopped at step s and
resumed sees the meta-batches an uninterrupted run sees from step s on.

What the trainer asks of a learner is its hooks (`training_episodes`, then Keras's
`compile`/`fit`); see `tfmeta.algorithms.base`. The workdir layout is in
`tfmeta.training.run`.
"""

from __future__ import annotations

import json
import logging
import math
import os

import keras

from tfmeta.config import save_config, validate_config
from tfmeta.data import load_dataset
from tfmeta.training.callbacks import CheckpointAndNaNGuard, StepsPerSecond
from tfmeta.training.export import export_workdir
from tfmeta.training.run import (
    CHECKPOINTS,
    CONFIG_FILE,
    LOGS,
    WorkdirLock,
    build_compiled_learner,
    checkpoint_manager,
    data_source,
    has_checkpoint,
    remove_partial_checkpoints,
    restore_latest,
)
from tfmeta.training.strategy import make_strategy

# Changing these in a workdir that already holds a run would mix two experiments.
IDENTITY_FIELDS = ("algo", "dataset", "model", "learner", "ways", "shots", "data_source")


def _check_workdir_config(config, workdir):
    """Refuses to resume a run that is a different experiment (once it has a checkpoint;
    a config.json without one is from a run that never trained, and is replaced)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path) or not has_checkpoint(workdir):
        return
    from tfmeta.config import load_config

    previous = load_config(path)
    for field in IDENTITY_FIELDS:
        old, new = previous.get(field), config.get(field)
        old = old.to_dict() if hasattr(old, "to_dict") else old
        new = new.to_dict() if hasattr(new, "to_dict") else new
        if field == "data_source" and old:
            old, new = old.get("fingerprint"), (new or {}).get("fingerprint")
        if old is not None and json.loads(json.dumps(old)) != json.loads(json.dumps(new)):
            raise ValueError(
                f"{workdir} holds a run with {field}={old!r}, but this run has {field}={new!r}. "
                "Use a new --workdir, or the original settings to resume.")


def train(config, workdir: str, data_dir: str | None = None, strategy=None,
          verbose="auto", download: bool = False, export: bool = False):
    """Meta-trains `config` in `workdir`, resuming from its last checkpoint, and with
    `export` writes the SavedModel of the newest checkpoint to `<workdir>/export`.

    Returns the trained learner. Raises ValueError for a config outside its ranges (before
    anything is built), `WorkdirLocked` if another trainer holds the workdir, and
    FloatingPointError on a non-finite loss, after which the newest checkpoint is the
    last good one.
    """
    validate_config(config)
    with WorkdirLock(workdir):
        learner = _train(config, workdir, data_dir, strategy, verbose, download)
        if export:
            logging.info("Exported to %s", export_workdir(workdir, data_dir))
        return learner


def _train(config, workdir, data_dir, strategy, verbose, download):
    removed = remove_partial_checkpoints(workdir)
    if removed:
        logging.info("Removed %d partial checkpoint(s) left by a killed save: %s",
                     len(removed), removed)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    dataset = load_dataset(config.dataset, data_dir, download=download, **config.data)
    logging.info("%s", dataset.description)
    config.data_source.update(data_source(dataset))
    _check_workdir_config(config, workdir)
    strategy = strategy or make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.meta_batch_size % replicas:
        raise ValueError(f"meta_batch_size={config.meta_batch_size} does not split over "
                         f"{replicas} replicas; use a multiple of {replicas}.")

    fresh = not has_checkpoint(workdir)
    learner = build_compiled_learner(config, dataset.input_shape, strategy,
                                     init_from=config.model.get("init_from") if fresh else None)
    manager = checkpoint_manager(learner, os.path.join(workdir, CHECKPOINTS),
                                 config.keep_checkpoints)
    step = restore_latest(learner, workdir)
    save_config(config, os.path.join(workdir, CONFIG_FILE))
    if step >= config.num_steps:
        logging.info("%s already trained for %d >= %d steps.", workdir, step, config.num_steps)
        return learner
    if step:
        logging.info("Resuming %s from step %d.", workdir, step)
        if not config.optimizer.schedule:
            # The checkpoint restored the old learning rate; the config's is the one asked
            # for. (A schedule is a function of the restored step count.)
            learner.optimizer.learning_rate = config.optimizer.learning_rate
    train_episodes, val_episodes = learner.training_episodes(dataset, config, replicas,
                                                             start_step=step)

    steps_per_epoch = min(config.log_every, config.num_steps)
    guard = CheckpointAndNaNGuard(manager, config.checkpoint_every, config.num_steps)
    callbacks = [
        guard,
        StepsPerSecond(),
        keras.callbacks.TensorBoard(os.path.join(workdir, LOGS), update_freq="epoch"),
    ]
    try:
        learner.fit(train_episodes, epochs=math.ceil(config.num_steps / steps_per_epoch),
                    initial_epoch=step // steps_per_epoch, steps_per_epoch=steps_per_epoch,
                    validation_data=val_episodes, callbacks=callbacks, verbose=verbose,
                    shuffle=False)
    except KeyboardInterrupt:
        guard.save()  # a checkpoint at exit, so rerunning resumes here
        raise
    if guard.nan_step is not None:
        last = guard.last_saved_step or _checkpoint_step(manager)
        where = (f"The last good checkpoint (step {last}) is in {workdir}/{CHECKPOINTS}; "
                 "rerunning resumes from it." if last is not None else
                 "No checkpoint was written before it, so rerunning starts from scratch.")
        raise FloatingPointError(
            f"The meta-loss became NaN or infinite at step {guard.nan_step}; training stopped. "
            f"{where} Lower optimizer.learning_rate or the inner learning rate, or set "
            "optimizer.clipnorm.")
    return learner


def _checkpoint_step(manager):
    path = manager.latest_checkpoint
    return int(path.rsplit("-", 1)[-1]) if path else None

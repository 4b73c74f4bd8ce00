"""`train(config, workdir)`: the whole meta-training run behind `bin/train.py`.

Keras does the loop: the learner's `train_step` is the meta-step and `learner.fit`
runs it under the strategy with Keras's own TensorBoard callback and progress bar.
Rerunning resumes from `<workdir>/checkpoints`, and resuming equals never stopping:
the episode stream is a pure function of (seed, step), so a run stopped at step s and
resumed sees the meta-batches an uninterrupted run sees from step s on.

What the trainer asks of a learner is its hooks (`training_episodes`, then Keras's
`compile`/`fit`); see `tfmeta.algorithms.base`. The workdir layout is in
`tfmeta.training.run`; the checks made before the first step (the workdir's experiment,
the episodes the learner takes, memory) in `tfmeta.training.preflight`; what a cluster of
workers adds (barriers, the same restored step) in `tfmeta.training.cluster`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import threading

import keras
import tensorflow as tf

from tfmeta.algorithms import recipe_for
from tfmeta.config import save_config, validate_config
from tfmeta.data import load_dataset
from tfmeta.episode_spec import DataSpec
from tfmeta.errors import Terminated
from tfmeta.models import resolved_fields
from tfmeta.training import cpu_threads
from tfmeta.training.callbacks import CheckpointAndNaNGuard, StepsPerSecond
from tfmeta.training.checkpoints import (
    CHECKPOINTS,
    checkpoint_manager,
    has_checkpoint,
    remove_partial_checkpoints,
    repair_state,
    restore_latest,
)
from tfmeta.training.cluster import check_same_step, is_multi_worker, leave_cluster_together
from tfmeta.training.export import export_workdir
from tfmeta.training.lock import WorkdirLock
from tfmeta.training.preflight import check_episode_sampler, check_memory, check_workdir_config
from tfmeta.training.run import (
    CONFIG_FILE,
    LOGS,
    build_compiled_learner,
    data_source,
    learner_dataset,
)
from tfmeta.training.strategy import (
    DEFAULT_JOIN_TIMEOUT_S,
    check_replica_split,
    distribute_episodes,
    make_strategy,
    worker_role,
)


def train(config, workdir: str, data_dir: str | None = None, strategy=None,
          verbose="auto", download: bool = False, export: bool = False):
    """Meta-trains `config` in `workdir`, resuming from its last checkpoint, and with
    `export` writes the SavedModel of the newest checkpoint to `<workdir>/export`.

    Under `strategy="multi_worker"` every worker of the cluster (`TF_CONFIG`) runs this
    with the same config and workdir; only the chief writes the run's files and holds the
    workdir's lock; another worker writes into `<workdir>/workertemp_<task>` (its lock,
    checkpoints and logs, as TF's multi-worker guide asks) and deletes it at the end.
    Resuming needs every worker to read the chief's checkpoints: a shared workdir.

    Returns the trained learner. Raises ValueError for a config outside its ranges (before
    anything is built) or a missing or malformed TF_CONFIG, `WorkdirLocked` if another
    trainer holds the workdir, and FloatingPointError on a non-finite loss, after which
    the newest checkpoint is the last good one.
    """
    validate_config(config)
    role = worker_role("multi_worker" if is_multi_worker(strategy) else config.strategy)
    # Before anything else runs TensorFlow ops: the thread pools and the multi-worker
    # strategy's collective ops are fixed once this process's runtime starts.
    cpu_threads.configure(config)
    strategy = strategy or make_strategy(
        config.strategy, config.get("cluster_join_timeout") or DEFAULT_JOIN_TIMEOUT_S)
    scratch = workdir if role.is_chief else os.path.join(workdir, f"workertemp_{role.task}")
    with WorkdirLock(scratch):
        try:
            learner = _train(config, workdir, scratch, role, data_dir, strategy, verbose,
                             download)
        finally:
            if not role.is_chief:
                shutil.rmtree(os.path.join(scratch, CHECKPOINTS), ignore_errors=True)
                shutil.rmtree(os.path.join(scratch, LOGS), ignore_errors=True)
        if export and role.is_chief:
            logging.info("Exported to %s", export_workdir(workdir, data_dir))
    if not role.is_chief:
        shutil.rmtree(scratch, ignore_errors=True)
    if role.count > 1:
        leave_cluster_together()
    return learner



def _train(config, workdir, scratch, role, data_dir, strategy, verbose, download):
    if role.is_chief:
        removed = remove_partial_checkpoints(workdir)
        if removed:
            logging.info("Removed %d partial checkpoint(s) left by a killed save: %s",
                         len(removed), removed)
        # Before any CheckpointManager reads it: the files on disk are what counts.
        repair_state(os.path.join(workdir, CHECKPOINTS))
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    dataset = load_dataset(config.dataset, data_dir, download=download, **config.data)
    logging.info("%s", dataset.description)
    config.data_source.update(data_source(dataset))
    with config.model.unlocked():  # an external backbone's input size and normalization
        config.model.update(resolved_fields(config.model, dataset.input_shape))
    dataset = learner_dataset(config, dataset)  # a frozen backbone's features, once
    recipe = recipe_for(config)
    config.learner.update(recipe.arguments_from_data(config.learner, dataset))
    check_workdir_config(config, workdir, dataset)
    field = recipe.batch_size_field
    check_replica_split(config[field], strategy.num_replicas_in_sync, field)

    fresh = not has_checkpoint(workdir)
    learner = build_compiled_learner(config, dataset.input_shape, strategy,
                                     init_from=config.model.get("init_from") if fresh else None)
    check_episode_sampler(learner, config, dataset.input_shape)  # (what it cannot do, first)
    check_memory(config, dataset.input_shape)
    # Every worker saves (TF's multi-worker guide); only the chief's checkpoints are kept.
    manager = checkpoint_manager(learner, os.path.join(scratch, CHECKPOINTS),
                                 config.keep_checkpoints)
    step = restore_latest(learner, workdir)
    if role.count > 1:
        check_same_step(strategy, step, workdir)
    if role.is_chief:
        save_config(config, os.path.join(workdir, CONFIG_FILE))
    if not learner.trainable_variables:
        logging.info("%s has no weights to train (the backbone is frozen: model.trainable=none"
                     "); it classifies with the frozen features as they are. Saved as step %d "
                     "for evaluation and export.", type(learner).__name__, step)
        if role.is_chief and not has_checkpoint(workdir):
            manager.save(checkpoint_number=step)
        return learner
    if step >= config.num_steps:
        logging.info("%s already trained for %d >= %d steps.", workdir, step, config.num_steps)
        return learner
    if step:
        logging.info("Resuming %s from step %d.", workdir, step)
        if not config.optimizer.schedule:
            # The checkpoint restored the old learning rate; the config's is the one asked
            # for. (A schedule is a function of the restored step count.)
            learner.optimizer.learning_rate = config.optimizer.learning_rate
    train_episodes, val_episodes = _episodes(learner, dataset, config, strategy, step)

    steps_per_epoch = min(config.log_every, config.num_steps)
    guard = CheckpointAndNaNGuard(manager, config.checkpoint_every, config.num_steps)
    callbacks = [
        guard,
        StepsPerSecond(),
        keras.callbacks.TensorBoard(os.path.join(scratch, LOGS), update_freq="epoch"),
    ]
    try:
        with fit_scope(learner, strategy), sigterm_as_interrupt():
            learner.fit(train_episodes, epochs=math.ceil(config.num_steps / steps_per_epoch),
                        initial_epoch=step // steps_per_epoch, steps_per_epoch=steps_per_epoch,
                        validation_data=val_episodes, callbacks=callbacks, verbose=verbose,
                        shuffle=False)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Terminated)
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



@contextlib.contextmanager
def sigterm_as_interrupt():
    """While training, SIGTERM (what `docker stop`, Kubernetes, Slurm and `timeout` send)
    raises `Terminated`, a KeyboardInterrupt, so the trainer saves the current step as on
    Ctrl-C before it exits. Outside the main thread (where Python delivers signals) and
    outside training, SIGTERM keeps its default."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        del signum, frame
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:  # None: a handler installed from C (TensorFlow's preemption notifier)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _episodes(learner, dataset, config, strategy, step):
    """(train, validation) meta-batches for `fit`. On one machine, the learner's datasets as
    they are (Keras splits each meta-batch over the local replicas); over a cluster, each
    worker samples only its share of every meta-batch (`training_episodes(worker=...)`),
    split again over its own replicas."""
    replicas = strategy.num_replicas_in_sync
    spec = DataSpec.from_config(config)
    if not is_multi_worker(strategy):
        return learner.training_episodes(dataset, spec, replicas, start_step=step)
    validation = learner.training_episodes(dataset, spec, replicas, step)[1]
    validation_size = tf.nest.flatten(validation.element_spec)[0].shape[0]

    def train_share(worker, workers):
        return learner.training_episodes(dataset, spec, replicas, step, worker, workers)[0]

    def validation_share(worker, workers):  # episodes each worker scores: its slice
        return validation.rebatch(validation_size // workers).shard(workers, worker)

    field = recipe_for(config).batch_size_field
    return (distribute_episodes(strategy, train_share, config[field], field),
            distribute_episodes(strategy, validation_share, validation_size,
                                "eval_meta_batch_size"))


@contextlib.contextmanager
def fit_scope(learner, strategy):
    """Where `fit` runs. Keras 3's TF trainer has two steps that fail under a
    MultiWorkerMirroredStrategy of several workers, both worked around here:

    - to build an unbuilt model it reduces the first meta-batch across workers
      (`_maybe_symbolic_build`), which fails for a dict of per-replica tensors; the learner
      is built already (`build_compiled_learner`), so `fit` runs in the strategy's scope
      with the strategy taken from the scope, which skips that build;
    - it averages each replica's logs with `strategy.reduce(MEAN, logs, axis=0)`, which
      fails for scalars; so the learner's steps return each log as a vector of one value,
      which that reduce turns into the mean over all replicas of all workers.
    """
    if not is_multi_worker(strategy):
        yield
        return
    recorded = learner._distribute_strategy
    learner._distribute_strategy = None
    learner.train_step = _vector_logs(learner.train_step)
    learner.test_step = _vector_logs(learner.test_step)
    try:
        with strategy.scope():
            yield
    finally:
        learner._distribute_strategy = recorded
        del learner.train_step, learner.test_step  # the class's methods again


def _vector_logs(step):
    def step_with_vector_logs(data):
        return {name: tf.reshape(value, [1]) if value.shape.rank == 0 else value
                for name, value in step(data).items()}

    return step_with_vector_logs



def _checkpoint_step(manager):
    path = manager.latest_checkpoint
    return int(path.rsplit("-", 1)[-1]) if path else None

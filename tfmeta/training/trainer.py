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

import contextlib
import inspect
import json
import logging
import math
import os
import shutil
import signal
import threading

import keras
import tensorflow as tf

from tfmeta.algorithms import (
    ALGORITHMS,
    build_learner,
    learner_class,
    prototype_head_algorithms,
)
from tfmeta.config import apply_overrides, get_config, save_config, validate_config
from tfmeta.data import load_dataset
from tfmeta.episode_spec import DataSpec
from tfmeta.errors import Terminated, UserError
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
from tfmeta.training.export import export_workdir
from tfmeta.training.lock import WorkdirLock
from tfmeta.training.run import (
    CONFIG_FILE,
    LOGS,
    build_compiled_learner,
    data_source,
    learner_dataset,
)
from tfmeta.training.strategy import (
    DEFAULT_JOIN_TIMEOUT_S,
    SHUTDOWN_BARRIER_MS,
    check_replica_split,
    distribute_episodes,
    make_strategy,
    worker_role,
)

# Changing these in a workdir that already holds a run would mix two experiments.
IDENTITY_FIELDS = ("algo", "dataset", "model", "learner", "ways", "shots", "episode_sampler",
                   "variable_episodes", "episode_grouping", "data_source")
# Learner options of what happens at test time only (fine-tuning, tfmeta.algorithms.finetune,
# whose learning rate bin/evaluate.py --select_finetune_lr records in config.json): kept from
# a run's config.json when it resumes.
TEST_TIME_OPTIONS = ("finetune_steps", "finetune_lr", "finetune_augment", "finetune_optimizer")
# Learner options that do not change what training computes, so a run may resume with
# others: how a meta-step runs (e.g. on a machine with a GPU, where task_parallel="auto"
# vectorizes), and the test-time ones.
NOT_TRAINING_OPTIONS = ("task_parallel", "parallel_tasks", "recompute", *TEST_TIME_OPTIONS)


def learner_identity(learner) -> dict:
    """A config's `learner` section as the experiment it names: without
    `NOT_TRAINING_OPTIONS`. (A run's config.json in an older form is read in this version's:
    `tfmeta.migrate`.)"""
    return {k: v for k, v in dict(learner or {}).items() if k not in NOT_TRAINING_OPTIONS}


def _check_workdir_config(config, workdir, dataset=None):
    """Refuses to resume a run that is a different experiment (once it has a checkpoint;
    a config.json without one is from a run that never trained, and is replaced), and
    keeps the test-time options config.json recorded (`TEST_TIME_OPTIONS`: a fine-tuning
    rate bin/evaluate.py --select_finetune_lr chose), which the training command does not
    say."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path) or not has_checkpoint(workdir):
        return
    from tfmeta.config import load_config

    previous = load_config(path)
    for field in IDENTITY_FIELDS:
        old, new = previous.get(field), config.get(field)
        old = old.to_dict() if hasattr(old, "to_dict") else old
        new = new.to_dict() if hasattr(new, "to_dict") else new
        if field == "learner" and old is not None:
            old, new = learner_identity(old), learner_identity(new)
        if field == "data_source" and old:
            keys = ("fingerprint", "class_split", "backbone")
            old, new = ({k: old.get(k) for k in keys if old.get(k) is not None},
                        {k: (new or {}).get(k) for k in keys if old.get(k) is not None})
            recorded = old.get("fingerprint", "")
            if recorded and not recorded.startswith("v2:") and dataset is not None and \
                    hasattr(dataset, "same_files") and dataset.same_files(recorded):
                new["fingerprint"] = recorded  # recorded by an earlier version, still the same
        if old is not None and json.loads(json.dumps(old)) != json.loads(json.dumps(new)):
            raise UserError(
                f"{workdir} holds a run with {field}={old!r}, but this run has {field}={new!r}. "
                "Use a new --workdir, or the original settings to resume.")
    kept = {k: previous.learner[k] for k in TEST_TIME_OPTIONS if k in previous.get("learner", {})}
    if kept:
        with config.learner.unlocked():
            config.learner.update(kept)


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
    role = worker_role("multi_worker" if _is_multi_worker(strategy) else config.strategy)
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


def leave_cluster_together() -> None:
    """Returns once every worker has finished training (and the chief its export), so
    none exits while another still needs the cluster.

    Two barriers, because the last one of any protocol races with the exit: the chief
    hosts the coordination service, and once its own wait returns it may exit before the
    service's reply reaches another worker, which then sees `UnavailableError` although
    every worker had arrived. The first barrier is strict: passing it proves that every
    worker finished. A failure at the second comes after that proof, so it is logged and
    the run counts as complete.
    """
    wait_for_all_workers("tfmeta_train_end")
    try:
        wait_for_all_workers("tfmeta_exit")
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        logging.info("Every worker finished training; another left the cluster before "
                     "the exit barrier answered (%s).", type(error).__name__)


def wait_for_all_workers(name: str) -> None:
    """Returns once every worker has called this with `name` (or raises after the
    coordination service's shutdown timeout)."""
    from tensorflow.python.eager import context  # no public API for a barrier

    context.context().wait_at_barrier(name, SHUTDOWN_BARRIER_MS)


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
    config.learner.update(learner_class(config.algo).arguments_from_data(config.learner,
                                                                         dataset))
    _check_workdir_config(config, workdir, dataset)
    field = learner_class(config.algo).batch_size_field
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
        _check_same_step(strategy, step, workdir)
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


def check_episode_sampler(learner, config, input_shape) -> None:
    """Refuses, in one line, variable episodes (`episode_sampler="variable"`) for a learner
    that cannot take them (its `variable_episodes` False), naming those that can."""
    if (config.get("episode_sampler") or "fixed") != "variable" or \
            getattr(learner, "variable_episodes", False):
        return
    raise UserError(
        f"--algo={config.algo} with these settings does not take variable episodes "
        f"(episode_sampler=variable); learners that do: "
        f"{', '.join(variable_episode_learners(config.dataset, input_shape))}. Use one of "
        "them, or --set=episode_sampler=fixed.")


def variable_episode_learners(dataset: str, input_shape) -> list:
    """The registered learners that take variable episodes, as `--algo` choices: those
    whose class says so, and those whose arguments decide it (a property), built from their
    configs for `dataset`, as they are and with the prototype head of
    `tfmeta.algorithms.prototype_head_algorithms` (MAML's)."""

    found, prototype_heads = [], prototype_head_algorithms()
    for algo in sorted(ALGORITHMS):
        declared = inspect.getattr_static(learner_class(algo), "variable_episodes", False)
        if not isinstance(declared, property):
            if declared:
                found.append(f"--algo={algo}")
            continue
        variants = [[], ["learner.head=prototypes"]] if algo in prototype_heads \
            else [[]]
        for overrides in variants:
            config = apply_overrides(get_config(algo, dataset), overrides)
            if build_learner(config, input_shape).variable_episodes:
                found.append(" ".join([f"--algo={algo}", *(f"--set={o}" for o in overrides)]))
                break
    return found


# Floats of activations a backbone keeps per input value and filter, for the backward pass
# (conv, batch norm and ReLU outputs of the first stage, later stages adding half again).
ACTIVATIONS_PER_VALUE = 6


def episode_examples(config) -> int:
    """Examples of one training episode: N * (K + Q), or a padded variable episode's slots."""
    if config.get("episode_sampler") == "variable":
        variable = config.variable_episodes
        return variable.max_support + variable.max_ways * variable.max_queries
    return config.ways * ((config.train_shots or config.shots) + config.queries)


def activation_bytes(config, input_shape) -> int:
    """A rough lower bound of the memory one training step's activations take: the
    meta-batch's examples (or Pretrain's batch), times the first stage's width, times
    `ACTIVATIONS_PER_VALUE`, in float32."""
    examples = config.get("batch_size") or config.meta_batch_size * episode_examples(config)
    values = math.prod(input_shape)
    channels = input_shape[-1] if len(input_shape) == 3 else 1
    width = max(1, (config.model.get("filters") or channels) / channels)
    return int(examples * values * width * ACTIVATIONS_PER_VALUE * 4)


def check_memory(config, input_shape) -> None:
    """Refuses, in one line, a configuration whose step cannot fit in this machine's memory
    (an extra zero in meta_batch_size would otherwise abort the process in C++)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    needed = activation_bytes(config, input_shape)
    if needed > total:
        sizes = (f"batch_size={config.batch_size}" if config.get("batch_size") else
                 f"meta_batch_size={config.meta_batch_size} x {episode_examples(config)} "
                 "padded examples" if config.get("episode_sampler") == "variable" else
                 f"meta_batch_size={config.meta_batch_size} x ways={config.ways} x "
                 f"{(config.train_shots or config.shots) + config.queries} examples")
        raise UserError(
            f"{sizes} of shape {tuple(input_shape)} need about {needed / 2 ** 30:.0f} GiB of "
            f"activations per step (estimated), more than this machine's "
            f"{total / 2 ** 30:.0f} GiB of memory; use a smaller batch, fewer ways or "
            "examples, or smaller images.")


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
    if not _is_multi_worker(strategy):
        return learner.training_episodes(dataset, spec, replicas, start_step=step)
    validation = learner.training_episodes(dataset, spec, replicas, step)[1]
    validation_size = tf.nest.flatten(validation.element_spec)[0].shape[0]

    def train_share(worker, workers):
        return learner.training_episodes(dataset, spec, replicas, step, worker, workers)[0]

    def validation_share(worker, workers):  # episodes each worker scores: its slice
        return validation.rebatch(validation_size // workers).shard(workers, worker)

    field = learner.batch_size_field
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
    if not _is_multi_worker(strategy):
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


def _is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _check_same_step(strategy, step, workdir):
    """Raises a ValueError unless every worker restored the same step (they all read the
    chief's checkpoints, so the workdir must be storage every worker sees)."""
    steps = strategy.gather(strategy.run(lambda: tf.constant([step], tf.int64)), axis=0)
    steps = sorted(set(int(s) for s in steps.numpy()))
    if len(steps) > 1:
        raise UserError(
            f"The workers restored different steps {steps} from {workdir}/{CHECKPOINTS}; "
            "every worker must see the chief's checkpoints: put --workdir on storage all "
            "machines share (NFS, GCS), or start every worker from an empty workdir.")


def _checkpoint_step(manager):
    path = manager.latest_checkpoint
    return int(path.rsplit("-", 1)[-1]) if path else None

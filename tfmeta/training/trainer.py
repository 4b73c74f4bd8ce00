"""`train(config, workdir)`: the whole meta-training run behind `bin/train.py`.

Keras does the loop: the learner's `train_step` is the meta-step and
`learner.fit` runs it under the strategy with Keras's own TensorBoard callback
and progress bar. Training resumes from `<workdir>/checkpoints` when rerun.

Workdir layout:
    config.json          the run's full config (evaluate and export read it)
    checkpoints/         tf.train checkpoints, ckpt-<step>
    logs/{train,validation}/   TensorBoard
    export/              the SavedModel (written by export_workdir)
"""

from __future__ import annotations

import json
import logging
import math
import os

import keras
import tensorflow as tf

from tfmeta.algorithms import algorithm_module, build_learner
from tfmeta.config import load_config, save_config
from tfmeta.data import episode_dataset, load_dataset
from tfmeta.data.augment import from_config as augment_from_config
from tfmeta.training.callbacks import CheckpointAndNaNGuard, StepsPerSecond
from tfmeta.training.strategy import make_strategy

CONFIG_FILE = "config.json"
# Changing these in a workdir that already holds a run would mix two experiments.
IDENTITY_FIELDS = ("algo", "dataset", "model", "learner", "ways", "shots")


def eval_spec(config):
    """(ways, shots, queries) of meta-test episodes; eval_* fields default to training's."""
    return (config.eval_ways or config.ways, config.eval_shots or config.shots,
            config.eval_queries or config.queries)


def training_data(dataset, config, replicas=1):
    """(train, validation) meta-batches of N-way K-shot episodes.

    An algorithm whose tasks are not N-way episodes (Reptile-GAN) defines its own
    `training_data(dataset, config, replicas)` in its module; the trainer uses that.
    """
    train = episode_dataset(dataset.split("train"), config.ways, config.shots, config.queries,
                            config.meta_batch_size, seed=config.seed, split="train",
                            augment=augment_from_config(config.get("augment")))
    ways, shots, queries = eval_spec(config)
    val_batch = max(replicas, min(config.eval_meta_batch_size, config.val_episodes))
    val_batch -= val_batch % replicas
    val = episode_dataset(dataset.split("val"), ways, shots, queries, val_batch,
                          seed=config.seed + 1, num_episodes=config.val_episodes, split="val")
    return train, val


# Fields of `config.optimizer` that describe the learning-rate schedule, not the optimizer.
SCHEDULE_FIELDS = ("schedule", "decay_steps", "decay_rate")
SCHEDULES = ("step", "cosine")


def learning_rate_schedule(optimizer_config, num_steps=None):
    """The learning rate `config.optimizer` asks for: a float or a Keras schedule.

    `schedule=None`: constant `learning_rate`. `"step"`: multiplied by `decay_rate`
    every `decay_steps` meta-steps (Prototypical Networks halve it every 2000
    episodes: decay_steps=2000, decay_rate=0.5). `"cosine"`: cosine decay to 0 over
    `decay_steps` (default `num_steps`). Schedules read `optimizer.iterations`, so a
    resumed run continues where it stopped.
    """
    rate = optimizer_config.learning_rate
    name = optimizer_config.get("schedule")
    decay_steps = optimizer_config.get("decay_steps")
    if not name:
        return rate
    if name not in SCHEDULES:
        raise ValueError(f"optimizer.schedule must be one of {SCHEDULES} or None; got {name!r}.")
    if name == "step":
        decay_rate = optimizer_config.get("decay_rate")
        if not decay_steps or decay_steps < 1 or decay_rate is None or not 0 < decay_rate <= 1:
            raise ValueError(
                "optimizer.schedule='step' needs optimizer.decay_steps >= 1 and "
                f"optimizer.decay_rate in (0, 1]; got decay_steps={decay_steps}, "
                f"decay_rate={decay_rate}. Example: --set=optimizer.decay_steps=2000 "
                "--set=optimizer.decay_rate=0.5")
        return keras.optimizers.schedules.ExponentialDecay(rate, decay_steps, decay_rate,
                                                           staircase=True)
    decay_steps = decay_steps or num_steps
    if not decay_steps or decay_steps < 1:
        raise ValueError("optimizer.schedule='cosine' needs optimizer.decay_steps >= 1 or "
                         f"num_steps; got decay_steps={decay_steps}, num_steps={num_steps}.")
    return keras.optimizers.schedules.CosineDecay(rate, decay_steps)


def make_optimizer(optimizer_config, num_steps=None) -> keras.optimizers.Optimizer:
    kwargs = {k: v for k, v in optimizer_config.items()
              if k not in ("name", *SCHEDULE_FIELDS) and v is not None}
    kwargs["learning_rate"] = learning_rate_schedule(optimizer_config, num_steps)
    try:
        optimizer = keras.optimizers.get(optimizer_config.name)
    except ValueError as error:
        raise ValueError(f"Unknown optimizer {optimizer_config.name!r} ({error}); use a Keras "
                         "optimizer name such as 'adam', 'sgd' or 'adamw'.") from None
    return optimizer.__class__(**kwargs)


def jit_compile_flag(value):
    """`config.jit_compile` ("auto", "true" or "false", any case; or a bool) for compile()."""
    flags = {"auto": "auto", "true": True, "false": False}
    key = str(value).strip().lower()
    if key not in flags:
        raise ValueError(f"jit_compile must be auto, true or false; got {value!r}.")
    return flags[key]


def build_compiled_learner(config, input_shape, strategy=None):
    """Builds and compiles the learner (and its optimizer's slots) inside the strategy."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        learner = build_learner(config, input_shape)
        learner.compile(optimizer=make_optimizer(config.optimizer, config.get("num_steps")),
                        jit_compile=jit_compile_flag(config.get("jit_compile", "auto")))
        learner.optimizer.build(learner.trainable_variables)
    return learner


def checkpoint_manager(learner, workdir, max_to_keep=3):
    checkpoint = tf.train.Checkpoint(learner=learner, optimizer=learner.optimizer)
    return tf.train.CheckpointManager(checkpoint, os.path.join(workdir, "checkpoints"),
                                      max_to_keep=max_to_keep, checkpoint_name="ckpt")


def restore_latest(learner, workdir, require=False) -> int:
    """Restores the newest checkpoint of `workdir` into `learner`; returns its step (0 if none)."""
    manager = checkpoint_manager(learner, workdir)
    if manager.latest_checkpoint is None:
        if require:
            raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first "
                                    f"with bin/train.py --workdir={workdir}.")
        return 0
    manager.checkpoint.restore(manager.latest_checkpoint).expect_partial()
    return int(learner.optimizer.iterations.numpy())


def _check_workdir_config(config, workdir):
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    previous = load_config(path)
    for field in IDENTITY_FIELDS:
        old, new = previous.get(field), config.get(field)
        old = old.to_dict() if hasattr(old, "to_dict") else old
        new = new.to_dict() if hasattr(new, "to_dict") else new
        if json.loads(json.dumps(old)) != json.loads(json.dumps(new)):
            raise ValueError(
                f"{workdir} holds a run with {field}={old!r}, but this run has {field}={new!r}. "
                "Use a new --workdir, or the original settings to resume.")


def train(config, workdir: str, data_dir: str | None = None, strategy=None,
          verbose="auto", download: bool = False):
    """Meta-trains `config` in `workdir`, resuming from its last checkpoint.

    Returns the trained learner. Raises FloatingPointError on a non-finite loss,
    after which the newest checkpoint is the last good one.
    """
    os.makedirs(workdir, exist_ok=True)
    _check_workdir_config(config, workdir)
    save_config(config, os.path.join(workdir, CONFIG_FILE))
    keras.utils.set_random_seed(config.seed)
    if config.get("mixed_precision"):
        keras.mixed_precision.set_global_policy("mixed_float16")

    options = dict(config.data)
    if download:
        options["download_missing"] = True
    dataset = load_dataset(config.dataset, data_dir, **options)
    logging.info("%s", dataset.description)
    strategy = strategy or make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.meta_batch_size % replicas:
        raise ValueError(f"meta_batch_size={config.meta_batch_size} does not split over "
                         f"{replicas} replicas; use a multiple of {replicas}.")

    make_data = getattr(algorithm_module(config.algo), "training_data", training_data)
    train_episodes, val_episodes = make_data(dataset, config, replicas)

    learner = build_compiled_learner(config, dataset.input_shape, strategy)
    manager = checkpoint_manager(learner, workdir, config.keep_checkpoints)
    step = restore_latest(learner, workdir)
    if step >= config.num_steps:
        logging.info("%s already trained for %d >= %d steps.", workdir, step, config.num_steps)
        return learner
    if step:
        logging.info("Resuming %s from step %d.", workdir, step)
        if not config.optimizer.get("schedule"):
            # The checkpoint restored the old learning rate; the config's is the one asked
            # for. (A schedule is a function of the restored step count.)
            learner.optimizer.learning_rate = config.optimizer.learning_rate

    steps_per_epoch = min(config.get("log_every", config.checkpoint_every), config.num_steps)
    guard = CheckpointAndNaNGuard(manager, config.checkpoint_every, config.num_steps)
    callbacks = [
        guard,
        StepsPerSecond(),
        keras.callbacks.TensorBoard(os.path.join(workdir, "logs"), update_freq="epoch"),
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
        raise FloatingPointError(
            f"The meta-loss became NaN or infinite at step {guard.nan_step}; training stopped. "
            f"The last good checkpoint (step {guard.last_saved_step or restore_step(manager)}) "
            f"is in {workdir}/checkpoints. Lower optimizer.learning_rate or the inner "
            "learning rate, or set optimizer.clipnorm, and rerun to resume from it.")
    return learner


def restore_step(manager) -> str:
    path = manager.latest_checkpoint
    return path.rsplit("-", 1)[-1] if path else "none"

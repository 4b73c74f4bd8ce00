"""Keras callbacks for meta-training: atomic checkpoints with a NaN guard, steps per second."""

from __future__ import annotations

import glob
import math
import os
import shutil
import time

import keras
import tensorflow as tf


class CheckpointAndNaNGuard(keras.callbacks.Callback):
    """Saves a `tf.train.CheckpointManager` every `every` steps and at the end of
    training, and stops training at the first non-finite loss without saving it.

    Chosen over BackupAndRestore because TF checkpoints are written to temporary
    files and renamed (a SIGKILL mid-save leaves the previous one readable), keep a
    history (`max_to_keep`), and resume at the exact step from `optimizer.iterations`.

    After training, `nan_step` is the step whose loss was not finite (or None) and
    `last_saved_step` the step of the newest good checkpoint.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int, num_steps: int):
        super().__init__()
        self.manager = manager
        self.every = int(every)
        self.num_steps = int(num_steps)
        self.nan_step = None
        self.last_saved_step = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _weights_finite(self) -> bool:
        return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.trainable_variables
                   if tf.as_dtype(v.dtype).is_floating)

    def save(self) -> None:
        """Saves the current step, unless training diverged: a step's loss is computed before
        its update, so the weights are checked too (the update itself may have overflowed)."""
        step = self._step()
        if self.nan_step is not None or step == self.last_saved_step:
            return
        if not self._weights_finite():
            self.nan_step = step
            self.model.stop_training = True
            return
        try:
            self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            self._failed_save(step, error)
        self.last_saved_step = step

    def _failed_save(self, step, error):
        """A save that failed (a full disk, a lost mount): its partial files go, the older
        checkpoints stay, and the error says so in one line."""
        directory = self.manager.directory
        for partial in glob.glob(os.path.join(directory, f"*-{step}_temp*")) + glob.glob(
                os.path.join(directory, f"*-{step}.*")):
            if os.path.isdir(partial):
                shutil.rmtree(partial, ignore_errors=True)
            elif os.path.exists(partial):
                os.remove(partial)
        reason = " ".join(str(getattr(error, "message", error)).split())[:200]
        kept = (f"step {self.last_saved_step}" if self.last_saved_step is not None
                else "the newest checkpoint before this run")
        raise OSError(f"Could not write the checkpoint of step {step} to {directory} "
                      f"({reason}); the older checkpoints are intact. Free disk space, then "
                      f"rerun the same command to resume from {kept}.") from None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        step = self._step()
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_step = step
            self.model.stop_training = True
            return
        if step % self.every == 0:
            self.save()
        if step >= self.num_steps:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.save()


class StepsPerSecond(keras.callbacks.Callback):
    """Adds `steps_per_second` (meta-steps, median-free wall-clock over the epoch) to epoch logs,
    so the TensorBoard callback placed after it records it."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._first_step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        steps = int(self.model.optimizer.iterations.numpy()) - self._first_step
        if logs is not None and steps > 0:
            logs["steps_per_second"] = steps / (time.perf_counter() - self._start)

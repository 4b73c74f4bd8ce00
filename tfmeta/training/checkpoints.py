"""A run's checkpoints: `<workdir>/checkpoints/ckpt-<step>.{index,data-*}` and TF's state file
`checkpoints/checkpoint`, which names them.

The files on disk are what counts, not the state file: a missing or garbled state file
is rewritten from the complete checkpoints found (`repair_state`), and restoring tries
the newest checkpoint first and falls back to older ones when it is truncated, empty or
missing a file (`restore_latest`). Only when no checkpoint can be read is it an error,
one line naming the folder. A killed save leaves `ckpt-N_temp*` files, which are removed
(`remove_partial_checkpoints`), never read.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil

import tensorflow as tf

from tfmeta.errors import UserError
from tfmeta.migrate import checkpoint_learner

CHECKPOINTS = "checkpoints"
PREFIX = "ckpt"
_NAME = re.compile(rf"^{PREFIX}-(\d+)\.index$")


def untracked_variables(learner) -> dict:
    """The learner's variables that `tf.train.Checkpoint(learner=...)` would miss, by path:
    Keras 3 tracks variables a layer keeps in a list attribute (Meta-SGD's `alpha`, MAML++'s
    per-step copies) for training but not as checkpoint dependencies."""
    reached = {id(o) for o in tf.train.TrackableView(learner).descendants()}
    missing = {}
    for v in learner.variables:
        if id(v) in reached or id(getattr(v, "value", None)) in reached:
            continue
        key = v.path
        while key in missing:
            key += "_"
        missing[key] = v
    return missing


def learner_checkpoint(learner, saved_keys=()) -> tf.train.Checkpoint:
    """A checkpoint of the learner (every variable: see `untracked_variables`) and its
    optimizer; with the `saved_keys` of a checkpoint to restore, one that reads it in the
    names it was written with (`tfmeta.migrate.checkpoint_learner`)."""
    return tf.train.Checkpoint(learner=checkpoint_learner(learner, saved_keys),
                               optimizer=learner.optimizer,
                               variables=untracked_variables(learner))


def checkpoint_manager(learner, directory, max_to_keep=3):
    """A CheckpointManager of `learner_checkpoint(learner)` in `directory`."""
    return tf.train.CheckpointManager(learner_checkpoint(learner), directory,
                                      max_to_keep=max_to_keep, checkpoint_name=PREFIX)


def checkpoints_on_disk(directory: str) -> list:
    """[(step, prefix)] of the checkpoints whose index and data files are all there and not
    empty, oldest first (what a checkpoint's files can tell without reading its tensors)."""
    found = []
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        match = _NAME.match(name)
        if not match:
            continue
        prefix = os.path.join(directory, name[:-len(".index")])
        index = prefix + ".index"
        shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
        expected = {int(s.rsplit("-of-", 1)[1]) for s in shards}
        complete = (len(expected) == 1 and len(shards) == expected.pop()
                    and all(os.path.getsize(s) > 0 for s in shards))
        if os.path.getsize(index) > 0 and complete:
            found.append((int(match.group(1)), prefix))
    return sorted(found)


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a checkpoint's files (whatever its state file says)."""
    return bool(checkpoints_on_disk(os.path.join(workdir, CHECKPOINTS)))


def _state_paths(directory: str) -> list | None:
    """The checkpoints the state file names, or None when it is missing or unreadable."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError, UnicodeDecodeError):
        return None
    if state is None or not state.model_checkpoint_path:
        return None
    return list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]


def repair_state(directory: str) -> bool:
    """Rewrites the state file from the complete checkpoints on disk when it is missing,
    garbled, or names a checkpoint that is not complete or not the newest; returns whether
    it did (logged). A state file that names the complete checkpoints is left alone."""
    on_disk = checkpoints_on_disk(directory)
    if not on_disk:
        return False
    listed = _state_paths(directory)
    prefixes = [p for _, p in on_disk]
    resolved = [p if os.path.isabs(p) else os.path.join(directory, p) for p in listed or []]
    if listed is not None and resolved and resolved[-1] == prefixes[-1] and all(
            p in prefixes for p in resolved):
        return False
    # With their times, so the trainer's CheckpointManager counts them for keep_checkpoints
    # (without, it would keep them for ever and list only the new ones).
    times = [os.path.getmtime(p + ".index") for p in prefixes]
    tf.compat.v1.train.update_checkpoint_state(
        directory, prefixes[-1], all_model_checkpoint_paths=prefixes,
        all_model_checkpoint_timestamps=times, last_preserved_timestamp=min(times) - 1)
    logging.warning("The checkpoint state file in %s was %s; rewrote it from the %d complete "
                    "checkpoint(s) on disk (newest: step %d).", directory,
                    "missing or unreadable" if listed is None else f"out of date ({listed})",
                    len(prefixes), on_disk[-1][0])
    return True


def restore_latest(learner, workdir, require=False) -> int:
    """Restores the newest readable checkpoint of `workdir` into `learner` and returns its
    step (0 if there is none). A checkpoint that does not read (truncated, empty) is
    skipped for the one before it, with a warning; if none reads, a one-line error."""
    directory = os.path.join(workdir, CHECKPOINTS)
    candidates = checkpoints_on_disk(directory)
    if not candidates:
        if require:
            raise FileNotFoundError(f"No checkpoint in {workdir}/{CHECKPOINTS}; train first "
                                    f"with bin/train.py --workdir={workdir}.")
        return 0
    failures = []
    for _, prefix in reversed(candidates):
        try:
            saved_keys = [name for name, _ in tf.train.list_variables(prefix)]
            learner_checkpoint(learner, saved_keys).restore(prefix).expect_partial()
        except Exception as error:  # noqa: BLE001 - TF raises OpError, IndexError, ValueError
            # for a checkpoint that does not read; any of them means: try the one before.
            reason = " ".join(str(error).split())[:200]
            logging.warning("Checkpoint %s does not read (%s); trying the one before it.",
                            prefix, reason)
            failures.append(f"{os.path.basename(prefix)} ({reason})")
            continue
        restored = int(learner.optimizer.iterations.numpy())
        if failures:
            logging.warning("Restored %s (step %d); newer checkpoint(s) were unreadable: %s",
                            os.path.basename(prefix), restored, "; ".join(failures))
        return restored
    raise UserError(f"None of the {len(candidates)} checkpoint(s) in {directory} reads: "
                    f"{'; '.join(failures)}. Restore the folder from a backup, or train "
                    "again in a new --workdir.")


def remove_partial_checkpoints(workdir: str) -> list:
    """Deletes the `ckpt-N_temp*` folders a killed save leaves; returns what it removed."""
    removed = sorted(glob.glob(os.path.join(workdir, CHECKPOINTS, f"{PREFIX}-*_temp*")))
    for path in removed:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return removed

"""Process-level faults a trained run must survive (issue 20): SIGTERM, a missing or garbled
checkpoint state file, truncated, empty or missing checkpoint files, a full disk during a
checkpoint or an export. Each failed on the code before it; what it did then is in the
test's docstring. SIGKILL at any time: tests/test_trainer.py."""

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests.conftest import ROOT
from tests.test_trainer import TINY, checkpoint_steps, tiny_config
from tfmeta.training import checkpoints, evaluation, export, trainer


def checkpoint_dir(workdir):
    return os.path.join(workdir, "checkpoints")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MAML run with checkpoints at steps 2, 4 and 6 (its pristine copy: copy it)."""
    workdir = str(tmp_path_factory.mktemp("faults") / "run")
    trainer.train(tiny_config("num_steps=6", "checkpoint_every=2"), workdir, verbose=0)
    assert checkpoint_steps(workdir) == [2, 4, 6]
    return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    return workdir


def resume(workdir, steps, caplog=None):
    return trainer.train(tiny_config(f"num_steps={steps}", "checkpoint_every=2"), workdir,
                         verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_the_checkpoint_files_count_when_the_state_file_is_lost(run_copy, damage, caplog):
    """Before: without `checkpoints/checkpoint` the run looked new: training restarted at
    step 0 and, writing ckpt-2.. again, deleted the trained checkpoints."""
    caplog.set_level(logging.INFO)
    state = os.path.join(checkpoint_dir(run_copy), "checkpoint")
    if damage == "missing":
        os.remove(state)
    else:
        with open(state, "wb") as f:
            f.write(b"\x00\xffmodel_checkpoint_path: {{{ not a state file")
    learner = resume(run_copy, 8)
    assert int(learner.optimizer.iterations.numpy()) == 8
    assert "Resuming" in caplog.text and "from step 6" in caplog.text
    assert "rewrote it from the 3 complete checkpoint(s)" in caplog.text
    assert checkpoint_steps(run_copy) == [4, 6, 8]  # keep_checkpoints=3: 2 went, by age


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated data", "empty index", "missing data"])
def test_a_broken_newest_checkpoint_falls_back_to_the_one_before(run_copy, damage, caplog):
    """Before: a traceback on resume and in bin/evaluate.py; the intact step-4 checkpoint
    was never tried."""
    prefix = os.path.join(checkpoint_dir(run_copy), "ckpt-6")
    data = [p for p in os.listdir(checkpoint_dir(run_copy)) if p.startswith("ckpt-6.data")][0]
    data = os.path.join(checkpoint_dir(run_copy), data)
    if damage == "truncated data":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 3)
    elif damage == "empty index":
        open(prefix + ".index", "w").close()
    else:
        os.remove(data)
    result = evaluation.evaluate_workdir(run_copy, num_episodes=4)
    expected = 4
    assert result["step"] == expected, (damage, result)
    learner = resume(run_copy, 6)
    assert int(learner.optimizer.iterations.numpy()) == 6
    assert checkpoint_steps(run_copy)[-1] == 6


def test_no_readable_checkpoint_is_one_line(run_copy):
    for name in os.listdir(checkpoint_dir(run_copy)):
        if ".data" in name:
            with open(os.path.join(checkpoint_dir(run_copy), name), "r+b") as f:
                f.truncate(10)
    with pytest.raises(ValueError, match=r"None of the 3 checkpoint\(s\) in .* reads: "
                                         r"ckpt-6 \("):
        evaluation.evaluate_workdir(run_copy, num_episodes=4)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_rerunning_resumes_there(tmp_path):
    """Before: SIGTERM (docker stop, Kubernetes, Slurm, timeout) killed training with no
    checkpoint at exit; up to checkpoint_every - 1 steps were lost."""
    workdir = str(tmp_path / "run")
    args = [f"--workdir={workdir}", "--num_steps=400", "--export=false",
            *[f"--set={o}" for o in TINY + ["checkpoint_every=1000", "log_every=1"]]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "train.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    tensorboard = os.path.join(workdir, "logs", "train")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (
            os.path.isdir(tensorboard) and os.listdir(tensorboard)):
        time.sleep(0.2)
    time.sleep(3)  # a few steps into training, far from any scheduled checkpoint
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith(
        "error: terminated (SIGTERM) after checkpointing the current step"), stderr[-2000:]
    steps = checkpoint_steps(workdir)
    assert len(steps) == 1 and 0 < steps[0] < 400, steps
    learner = trainer.train(tiny_config(f"num_steps={steps[0] + 1}", "checkpoint_every=1000"),
                            workdir, verbose=0)
    assert int(learner.optimizer.iterations.numpy()) == steps[0] + 1


class DiskFull:
    """Writes fail with ENOSPC from the `after`-th call on (what a full disk does to a
    checkpoint or SavedModel writer)."""

    def __init__(self, real, after=0):
        self.real, self.after, self.calls = real, after, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(*args, **kwargs)


def test_a_full_disk_during_a_checkpoint_keeps_the_older_ones(run_copy, monkeypatch):
    """Before: a traceback, and a `ckpt-N_temp` folder left behind."""
    monkeypatch.setattr(tf.train.CheckpointManager, "save",
                        DiskFull(tf.train.CheckpointManager.save))
    os.makedirs(os.path.join(checkpoint_dir(run_copy), "ckpt-8_temp"))  # as a failed write leaves
    with pytest.raises(OSError, match=r"Could not write the checkpoint of step 8 to .* \(\[Errno "
                                      r"28\] No space left on device\); the older checkpoints "
                                      r"are intact\. Free disk space"):
        resume(run_copy, 8)
    assert checkpoint_steps(run_copy) == [2, 4, 6]
    assert not [p for p in os.listdir(checkpoint_dir(run_copy)) if "_temp" in p]
    assert checkpoints.checkpoints_on_disk(checkpoint_dir(run_copy))[-1][0] == 6


def test_a_full_disk_during_an_export_keeps_the_previous_one(run_copy, monkeypatch):
    """Before: a traceback, and `export.part` left behind."""
    path = export.export_workdir(run_copy)
    before = sorted(os.listdir(path))
    monkeypatch.setattr(tf.saved_model, "save", DiskFull(tf.saved_model.save))
    with pytest.raises(OSError, match=r"Could not write the export to .*export \(\[Errno 28\] "
                                      r"No space left on device\); the previous export is "
                                      r"unchanged"):
        export.export_workdir(run_copy)
    assert not os.path.exists(path + ".part") and sorted(os.listdir(path)) == before


@pytest.fixture
def full_disk(trained, tmp_path):
    """The trained run copied onto a small tmpfs that is then filled up: a real full disk.
    Skipped where the test may not mount one (the simulated tests above still run)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:100]})")
    try:
        workdir = str(mount / "run")
        shutil.copytree(trained, workdir)
        with open(mount / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (64 << 10))
                    f.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
        yield workdir
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk_fails_the_export_and_the_checkpoint_in_one_line(full_disk):
    """What TensorFlow raises when the disk is full (not simulated) ends in the same one
    line, leaving no partial files and the older checkpoints readable."""
    with pytest.raises(OSError, match=r"Could not write the export to .*; none was there"):
        export.export_workdir(full_disk)
    assert not os.path.exists(os.path.join(full_disk, "export.part"))

    from tfmeta.training import run as run_lib
    from tfmeta.training.callbacks import CheckpointAndNaNGuard

    opened = run_lib.open_run(full_disk)
    manager = checkpoints.checkpoint_manager(opened.learner, checkpoint_dir(full_disk))
    guard = CheckpointAndNaNGuard(manager, every=1, num_steps=10)
    guard.set_model(opened.learner)
    opened.learner.optimizer.iterations.assign(7)
    with pytest.raises(OSError, match=r"Could not write the checkpoint of step 7 .*the older "
                                      r"checkpoints are intact"):
        guard.save()
    assert [s for s, _ in checkpoints.checkpoints_on_disk(checkpoint_dir(full_disk))] == \
        [2, 4, 6]
    assert not [p for p in os.listdir(checkpoint_dir(full_disk)) if "-7" in p]
    assert run_lib.open_run(full_disk).step == 6


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_part(tmp_path):
    """config.json, eval.json, predictions and embeddings are written through
    `atomic_write`: a write that fails half-way leaves the previous file whole."""
    from tfmeta.files import atomic_write

    path = str(tmp_path / "eval.json")
    with atomic_write(path) as f:
        f.write("old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path) as f:
            f.write("half of the new")
            raise OSError(errno.ENOSPC, "disk full")
    with open(path) as f:
        assert f.read() == "old"
    assert os.listdir(tmp_path) == ["eval.json"]


def test_a_folder_is_replaced_whole_and_a_stale_part_is_cleared(tmp_path):
    """`atomic_path` (exports, record files, downloads, caches): a folder at the path is
    replaced only when the new one is complete; a part a killed writer left (named as
    `files.temporary_name` names them, by a process no longer running) is removed before
    the next write, and a failed write removes its own."""
    from tfmeta.files import atomic_path

    path = str(tmp_path / "export")
    os.makedirs(path)
    (tmp_path / "export" / "old.txt").write_text("old")
    stale = tmp_path / ".export.99999999.0123abcd.tfmeta-part"  # (above any pid_max)
    os.makedirs(stale)
    (stale / "stale.txt").write_text("killed writer")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(path) as partial:
            assert not os.path.exists(partial) and not stale.exists()  # cleared
            os.makedirs(partial)
            raise OSError(errno.ENOSPC, "disk full")
    assert sorted(os.listdir(tmp_path)) == ["export"] and os.listdir(path) == ["old.txt"]
    with atomic_path(path) as partial:
        os.makedirs(partial)
        with open(os.path.join(partial, "new.txt"), "w") as f:
            f.write("new")
    assert sorted(os.listdir(tmp_path)) == ["export"] and os.listdir(path) == ["new.txt"]

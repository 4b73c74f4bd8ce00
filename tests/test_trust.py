"""Trust under bad input and faults: one test per finding of issue 12, each of which failed
on the code before it (what it did then is in the test's docstring)."""

import glob
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from tests.test_trainer import TINY, checkpoint_steps, run_cli, tiny_config
from tfmeta import config as config_lib
from tfmeta.algorithms import MAML
from tfmeta.algorithms.prototypical import PrototypicalNetwork
from tfmeta.data import load_dataset, safe_pickle
from tfmeta.data import omniglot as omniglot_data
from tfmeta.errors import WorkdirLocked
from tfmeta.models import conv4
from tfmeta.training import evaluation, run, trainer


def copy_bundled(tmp_path):
    data_dir = tmp_path / "omniglot_copy"
    shutil.copytree(omniglot_data.BUNDLED_DIR, data_dir)
    return str(data_dir)


# ------------------------------------------------------------------ 1: data source
def test_evaluation_uses_the_recorded_data_and_refuses_when_it_is_gone(tmp_path):
    """Before: config.json did not record the data, so evaluating without --data_dir
    silently scored the run on the bundled sets."""
    data_dir = copy_bundled(tmp_path)
    workdir = str(tmp_path / "run")
    trainer.train(tiny_config("num_steps=1", "checkpoint_every=1"), workdir, data_dir, verbose=0)
    saved = config_lib.load_config(os.path.join(workdir, "config.json"))
    assert saved.data_source.data_dir == os.path.abspath(data_dir)
    assert saved.data_source.fingerprint.startswith("v2:") and \
        len(saved.data_source.fingerprint) == 19

    result = evaluation.evaluate_workdir(workdir, num_episodes=4)
    assert result["data_dir"] == os.path.abspath(data_dir)

    moved = str(tmp_path / "moved")
    os.rename(data_dir, moved)
    with pytest.raises(FileNotFoundError, match=r"trained on the omniglot data in .*omniglot_copy"
                                                r".*not there any more; pass --data_dir"):
        evaluation.evaluate_workdir(workdir, num_episodes=4)
    # Told where it is now, it evaluates (same files, same fingerprint).
    assert evaluation.evaluate_workdir(workdir, moved, num_episodes=4)["data_dir"] == moved
    # Changed files (here a zip that grew a comment) are refused unless named explicitly.
    os.rename(moved, data_dir)
    with zipfile.ZipFile(os.path.join(data_dir, "images_background_small2.zip"), "a") as z:
        z.comment = b"changed"
    with pytest.raises(FileNotFoundError, match="differ from the ones this run was trained on"):
        evaluation.evaluate_workdir(workdir, num_episodes=4)
    assert evaluation.evaluate_workdir(workdir, data_dir, num_episodes=4)["episodes"] == 4


# ---------------------------------------------------------------------- 2: pickles
class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_naming_file_and_global(tmp_path):
    """Before: LEO's loader called pickle.load, which ran the file's os.system."""
    marker = tmp_path / "ran"
    folder = tmp_path / "miniImageNet" / "center"
    folder.mkdir(parents=True)
    good = {"keys": np.array([b"0-n01-n01_0.JPEG"]), "embeddings": np.ones((1, 4), np.float32)}
    for split in ("train", "val"):
        with open(folder / f"{split}_embeddings.pkl", "wb") as f:
            pickle.dump(good, f, protocol=2)
    with open(folder / "test_embeddings.pkl", "wb") as f:
        pickle.dump({"keys": [_RunsACommand(marker)], "embeddings": good["embeddings"]}, f,
                    protocol=2)
    with pytest.raises(safe_pickle.UnsafePickleError,
                       match=r"test_embeddings\.pkl asks to load the global posix\.system"):
        load_dataset("mini_imagenet", str(tmp_path), embeddings="center")
    assert not marker.exists()


def test_safe_pickle_reads_what_the_formats_hold(tmp_path):
    data = {"image_data": np.zeros((2, 3), np.uint8), "class_dict": {"n01": [0, 1]},
            "labels": [np.int64(3)], "names": {"a", "b"}, "raw": b"\x89PNG"}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
        loaded = safe_pickle.load(str(path), encoding="latin1")
        np.testing.assert_array_equal(loaded["image_data"], data["image_data"])
        assert loaded["class_dict"] == data["class_dict"] and loaded["names"] == data["names"]


# ------------------------------------------------------- 3, 4: served episodes
@pytest.fixture(scope="module")
def small_learners():
    keras.utils.set_random_seed(0)
    maml = MAML(conv4((28, 28, 1), num_classes=5, filters=4), inner_steps_test=1)
    protonet = PrototypicalNetwork(conv4((28, 28, 1), filters=4))
    return {"maml": maml, "protonet": protonet}


@pytest.mark.parametrize("name", ["maml", "protonet"])
@pytest.mark.parametrize("support, labels, queries, message", [
    (0, [], 2, "support_images is empty"),              # MAML: abort in MaxPoolGrad (rc 134)
    (3, [0, 1, 2], 0, "query_images is empty"),
    (2, [0, 2], 2, "must cover every class 0..N-1"),     # accepted, logits for a missing class
    (3, [0, 1], 2, "one label per support image"),
    (2, [0, -1], 2, "must be in 0..N-1"),
])
def test_malformed_episodes_are_rejected(small_learners, name, support, labels, queries,
                                         message):
    """Before: MAML's export died in C++ on an empty support set, ProtoNet said "depth must be
    non-negative", and labels skipping a class were served."""
    learner = small_learners[name]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        learner.adapt_and_predict(tf.zeros([support, 28, 28, 1]), tf.constant(labels, tf.int32),
                                  tf.zeros([queries, 28, 28, 1]))


def test_too_many_ways_for_a_fixed_head_is_named(small_learners):
    with pytest.raises(tf.errors.InvalidArgumentError, match="serves at most 5 ways"):
        small_learners["maml"].adapt_and_predict(tf.zeros([6, 28, 28, 1]), tf.range(6),
                                                 tf.zeros([1, 28, 28, 1]))


# ------------------------------------------------------------- 5: evaluate flags
@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("trust") / "run")
    trainer.train(tiny_config("num_steps=1", "checkpoint_every=1"), workdir, verbose=0)
    return workdir


EPISODES_RANGE = "episodes must be an integer in [2, 1000000] (a confidence interval needs two)"


@pytest.mark.slow
@pytest.mark.parametrize("flag, message", [
    ("--episodes=-5", f"{EPISODES_RANGE}; got -5."),                         # never stopped
    ("--episodes=0", f"{EPISODES_RANGE}; got 0."),                           # became 600
    ("--ways=6", "serves at most 5 ways; got ways=6"),                       # label-range error
    ("--ways=1", "--ways must be an integer >= 2 or None (with one way every query is right "
                 "whatever the learner); got 1."),                           # scored 100%
])
def test_evaluate_flags_are_checked_with_one_line_errors(trained_workdir, flag, message):
    proc = run_cli("evaluate.py", f"--workdir={trained_workdir}", flag, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# -------------------------------------------------------------- 6: workdir lock
def test_a_second_trainer_on_a_workdir_is_refused_naming_the_holder(tmp_path):
    """Before: two trainers ran on one workdir and overwrote each other's files."""
    workdir = str(tmp_path / "run")
    script = (f"import sys, time; sys.path.insert(0, {ROOT!r})\n"
              "from tfmeta.training.lock import WorkdirLock\n"
              f"lock = WorkdirLock({workdir!r}).acquire(); print('held', flush=True); "
              "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirLocked, match=rf"in use by another trainer \(PID "
                                                    rf"{holder.pid}\)"):
            trainer.train(tiny_config("num_steps=1"), workdir, verbose=0)
        assert not os.path.exists(os.path.join(workdir, "config.json"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # A killed holder's lock is gone with it.
    trainer.train(tiny_config("num_steps=1", "checkpoint_every=1"), workdir, verbose=0)
    assert checkpoint_steps(workdir) == [1]


# --------------------------------------------------------- 7: numbers in range
@pytest.mark.parametrize("override, message", [
    ("checkpoint_every=0", "checkpoint_every must be an integer in [1, 1000000000]; got 0."),
    ("meta_batch_size=0", "meta_batch_size must be an integer in [1, 4096]; got 0."),
    ("meta_batch_size=-2", "meta_batch_size must be an integer in [1, 4096]; got -2."),
    ("learner.inner_lr=-0.4", "learner.inner_lr must be a number > 0; got -0.4."),
    ("optimizer.learning_rate=-0.001", "optimizer.learning_rate must be a number > 0; got -0.001."),
    ("num_steps=0", "num_steps must be an integer in [1, 1000000000]; got 0."),
    ("num_steps=-1", "num_steps must be an integer in [1, 1000000000]; got -1."),
    ("augment.rotation=400.0", "augment.rotation must be a number in [0, 180]; got 400.0."),
    ("eval_episodes=1", f"eval_{EPISODES_RANGE}; got 1."),
])
def test_bad_numbers_are_refused_before_anything_is_built(tmp_path, override, message):
    """Before: ZeroDivisionError once training started, MaxPool shape errors, a negative
    rate that trained and exported, "already trained" then "no checkpoint"."""
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer.train(tiny_config(override), workdir, verbose=0)
    assert not os.path.exists(workdir)


@pytest.mark.parametrize("algo, dataset, override, message", [
    ("protonet", "omniglot", "learner.distance=manhattan",
     "learner.distance must be one of ['squared_euclidean', 'cosine']; got 'manhattan'."),
    ("pretrain", "omniglot", "learner.classifier=svm",
     "learner.classifier must be one of ['nearest_centroid', 'logistic']; got 'svm'."),
    ("maml_rl", "navigation_2d", "learner.baseline=critic",
     "learner.baseline must be one of ['linear', 'none']; got 'critic'."),
])
def test_learner_choices_are_refused_before_the_data_loads(algo, dataset, override, message):
    """Before (issue 35): checked by hand in the learner's constructor, after the data had
    loaded and the backbone was built."""
    config = config_lib.apply_overrides(config_lib.get_config(algo, dataset), [override])
    with pytest.raises(ValueError, match=re.escape(message)):
        config_lib.validate_config(config)


def test_unknown_learner_argument_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown config field 'learner.inner_rate'; valid "
                                         r"fields of learner: \[") as error:
        tiny_config("learner.inner_rate=0.1")
    for valid in ("'batch_norm'", "'first_order'", "'inner_lr'", "'inner_steps'"):
        assert valid in str(error.value)


def test_choosing_another_backbone_drops_the_previous_backbones_fields():
    """MAML's Omniglot config names Conv4 with `downsample`; `--set=model.name=resnet12`
    must not carry it over (ResNet-12 has no such argument), and the result validates."""
    config = tiny_config("model.name=resnet12", "model.widths=(4, 4, 8, 8)")
    assert config.model.name == "resnet12" and "downsample" not in config.model
    assert tuple(config.model.widths) == (4, 4, 8, 8)
    config_lib.validate_config(config)


# ------------------------------------------------------ 8: resume = never stopping
@pytest.mark.slow
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """Before: the episode stream restarted at episode 0 on resume, so 10 + 10 steps ended
    with other weights than 20 steps."""
    def weights_after(workdir):
        return [v.numpy() for v in run.open_run(workdir).learner.trainable_variables]

    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    settings = ["checkpoint_every=5", "log_every=5"]
    trainer.train(tiny_config("num_steps=20", *settings), straight, verbose=0)
    trainer.train(tiny_config("num_steps=10", *settings), resumed, verbose=0)
    trainer.train(tiny_config("num_steps=20", *settings), resumed, verbose=0)
    for a, b in zip(weights_after(straight), weights_after(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ 9: smaller
def test_a_corrupt_zip_member_is_named(tmp_path):
    """Before: a raw zlib.error / BadZipFile naming neither the zip nor the file."""
    data_dir = copy_bundled(tmp_path)
    path = os.path.join(data_dir, "images_background_small1.zip")  # read first: no overlap
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(".png")
                    and i.compress_size > 200)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(f.read(4), "<u2")
        f.seek(info.header_offset + 30 + int(name_length) + int(extra_length) + 50)
        f.write(b"\x00" * 100)  # inside the member's compressed data
    with pytest.raises(ValueError, match=rf"Corrupt member {info.filename} in .*small1\.zip"):
        load_dataset("omniglot", data_dir)


def test_partial_checkpoints_of_a_killed_save_are_removed(tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(os.path.join(workdir, "checkpoints", "ckpt-7_temp", "part-00000-of-00001"))
    trainer.train(tiny_config("num_steps=1", "checkpoint_every=1"), workdir, verbose=0)
    assert not glob.glob(os.path.join(workdir, "checkpoints", "*_temp*"))


def test_nan_at_the_first_step_says_there_is_no_checkpoint(tmp_path):
    """Before: "last good checkpoint (step none) ... rerun to resume"."""
    with pytest.raises(FloatingPointError, match="No checkpoint was written before it"):
        trainer.train(tiny_config("num_steps=3", "optimizer.learning_rate=1e39"),
                      str(tmp_path / "run"), verbose=0)


def test_a_run_that_failed_before_training_does_not_block_another_algo(tmp_path):
    """Before: its config.json refused a different --algo in that workdir."""
    workdir = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        trainer.train(tiny_config(), workdir, data_dir=str(tmp_path / "nowhere"), verbose=0)
    protonet = config_lib.apply_overrides(config_lib.get_config("protonet", "omniglot"), [
        "model.filters=8", "ways=5", "num_steps=1", "checkpoint_every=1", "val_episodes=4",
        "eval_meta_batch_size=4"])
    trainer.train(protonet, workdir, verbose=0)
    assert config_lib.load_config(os.path.join(workdir, "config.json")).algo == "protonet"


# --------------------------------------------------------- 10: one-line CLI errors
@pytest.mark.slow
def test_cli_user_errors_are_one_line_and_tracebacks_are_opt_in(tmp_path):
    """Before: every CLI error was a full Python traceback."""
    args = [f"--workdir={tmp_path / 'run'}", "--num_steps=0", "--export=false",
            *[f"--set={o}" for o in TINY]]
    start = time.time()
    proc = run_cli("train.py", *args, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: num_steps must be an integer in [1, 1000000000]; got 0.")
    assert "Traceback" not in proc.stderr and time.time() - start < 120
    proc = run_cli("train.py", *args, "--verbose_errors", timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    missing = run_cli("train.py", f"--workdir={tmp_path / 'run2'}", "--data_dir=/nonexistent",
                      timeout=300)
    assert missing.returncode == 2 and "error: No Omniglot data in '/nonexistent'" in \
        missing.stderr and "Traceback" not in missing.stderr


# ============================================================ issue 20 (second round)
# ----------------------------------------------------------- 6, 7: pickles
@pytest.mark.parametrize("payload, message", [
    # bytearray(3 * 10**9): an allowed global called with a size.
    (b"\x80\x02c__builtin__\nbytearray\nJ\x00^\xd0\xb2\x85R.", r"calls bytearray\(int\)"),
    # numpy.ndarray((10**10,)) called directly.
    (b"\x80\x02cnumpy\nndarray\n\x8a\x05\x00\xe4\x0bT\x02\x85\x85R.", "calls numpy.ndarray"),
])
def test_allowed_globals_cannot_allocate_from_a_number(tmp_path, payload, message):
    """Before: an 83-byte pickle allocated gigabytes before failing."""
    path = tmp_path / "bomb.pkl"
    path.write_bytes(payload)
    start = time.time()
    with pytest.raises(safe_pickle.UnsafePickleError, match=message):
        safe_pickle.load_data_file(str(path))
    assert time.time() - start < 2
    assert isinstance(safe_pickle.UnsafePickleError("x"), ValueError)  # a CLI user error


def test_malformed_calls_and_protocol_2_bytes(tmp_path):
    """Before: crafted calls raised raw TypeError; `b""` under protocol 2 (pickled as
    builtins.bytes) was called unsafe."""
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps({"empty": b"", "some": b"ab", "raw": bytearray()}, protocol=2))
    assert safe_pickle.load_data_file(str(path)) == {"empty": b"", "some": b"ab",
                                                      "raw": bytearray()}
    path.write_bytes(b"\x80\x02c__builtin__\nset\nK\x01\x85R.")  # set(1): a TypeError
    with pytest.raises(ValueError, match=r"ok.pkl is not a readable pickle \(TypeError: "):
        safe_pickle.load_data_file(str(path))


@pytest.mark.slow
def test_an_unsafe_data_pickle_is_one_line_on_the_command_line(tmp_path):
    """Before: UnsafePickleError was not a CLI user error: a traceback."""
    for split in ("train", "val", "test"):
        with open(tmp_path / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(_RunsACommand(tmp_path / "ran"), f, protocol=2)
    proc = run_cli("train.py", "--algo=protonet", "--dataset=mini_imagenet",
                   f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and \
        "asks to load the global" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "ran").exists()


# ------------------------------------------------------------- 8: truncated files
@pytest.mark.parametrize("loader", ["mnist", "embeddings"])
def test_a_truncated_npz_is_a_data_error_naming_it(tmp_path, loader):
    """Before: zipfile.BadZipFile, a traceback."""
    if loader == "mnist":
        path = tmp_path / "mnist.npz"
        np.savez(path, x_train=np.zeros((4, 28, 28), np.uint8), y_train=np.zeros(4),
                 x_test=np.zeros((4, 28, 28), np.uint8), y_test=np.zeros(4))
    else:
        path = tmp_path / "center" / "train_embeddings.npz"
        path.parent.mkdir()
        np.savez(path, keys=np.array(["a-b-c"]), embeddings=np.zeros((1, 4), np.float32))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=f"{path} is not a readable .npz file"):
        if loader == "mnist":
            load_dataset("mnist", str(tmp_path))
        else:
            from tfmeta.data import leo_embeddings

            leo_embeddings.read_pickle(str(path))


# -------------------------------------------------------- 5, 8, 13: settings
@pytest.mark.parametrize("override, message", [
    ("val_episodes=1000000000", r"val_episodes must be an integer in \[1, 100000\]"),
    ("meta_batch_size=100000", r"meta_batch_size must be an integer in \[1, 4096\]"),
    ("data.image_size=0", r"data.image_size must be an integer in \[1, 2048\]"),
    ("ways=1", r"ways=1: a 1-way episode has nothing to tell apart"),
    ("eval_ways=1", r"eval_ways=1: a 1-way episode"),
])
def test_sizes_have_upper_bounds_and_one_way_is_refused(override, message):
    """Before: val_episodes=1e9 stalled silently, meta_batch_size=100000 aborted the process
    (std::bad_alloc), image_size=0 failed late, ways=1 trained a meaningless classifier."""
    with pytest.raises(ValueError, match=message):
        config_lib.validate_config(tiny_config(override))


def test_a_step_that_cannot_fit_in_memory_is_refused_before_the_first_step(tmp_path, monkeypatch):
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 2 ** 20 if name == "SC_PHYS_PAGES"
                        else real(name))  # 4 GiB with 4 KiB pages
    with pytest.raises(ValueError, match=r"meta_batch_size=4000 x ways=5 x 2 examples of shape "
                                         r"\(28, 28, 1\) need about \d+ GiB of activations"):
        trainer.train(tiny_config("meta_batch_size=4000"), str(tmp_path / "run"), verbose=0)


@pytest.mark.slow
def test_an_empty_workdir_flag_and_a_corrupt_config_are_named(trained_workdir, tmp_path):
    """Before: --workdir= trained into ./runs/...; a corrupt config.json was a bare JSON
    parse error."""
    proc = run_cli("train.py", "--workdir=", "--num_steps=1", timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: --workdir is empty"), proc.stderr[-2000:]
    workdir = str(tmp_path / "run")
    shutil.copytree(trained_workdir, workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write('{"algo": "maml", ')
    with pytest.raises(ValueError, match=f"{workdir}/config.json is not readable JSON"):
        evaluation.evaluate_workdir(workdir, num_episodes=4)


# ------------------------------------------------------------- 9: served labels
def test_served_labels_are_exact_or_refused_never_wrapped(tmp_path, omniglot):
    """Before: numpy int64 labels wrapped to int32 (2**32 + 4 was served as 4, 2**32 made a
    label 0), float labels were truncated, and a bincount of a huge label could exhaust
    memory."""
    from tfmeta.training.export import export_learner

    keras.utils.set_random_seed(0)
    learner = PrototypicalNetwork(conv4((28, 28, 1), filters=4))
    loaded = tf.saved_model.load(export_learner(learner, omniglot, str(tmp_path / "export")))
    images = np.random.default_rng(0).uniform(size=(6, 105, 105, 1)).astype(np.float32)
    for labels in (np.arange(4), np.arange(4, dtype=np.int32), tf.range(4), [0, 1, 2, 3],
                   tf.range(4, dtype=tf.int64)):
        for support in (images[:4], images[:4].astype(np.float64)):
            good = loaded.adapt_and_predict(support, labels, images[4:].astype(support.dtype))
            assert good["logits"].shape == (2, 4)
    for labels in ([0, 1, 2, 2 ** 32 + 3], [0, 1, 2, 2 ** 32], [0, 1, 2, 2 ** 31 - 1]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="support_labels must be 0..N-1"):
            loaded.adapt_and_predict(images[:4], np.array(labels, np.int64), images[4:])
    with pytest.raises(ValueError, match="Could not find matching concrete function"):
        loaded.adapt_and_predict(images[:4], np.array([0.0, 1.7, 2.0, 3.0]), images[4:])
    signature = loaded.signatures["adapt_and_predict"]
    assert signature(support_images=tf.constant(images[:4]), support_labels=tf.range(4),
                     query_images=tf.constant(images[4:]))["logits"].shape == (2, 4)


def test_a_request_over_the_size_limit_is_refused(monkeypatch, omniglot, small_learners):
    from tfmeta import serving

    monkeypatch.setattr(serving, "MAX_REQUEST_VALUES", 3 * 105 * 105)
    module = serving.AdaptAndPredict(small_learners["protonet"], omniglot)
    images = tf.zeros([2, 105, 105, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="send the queries in smaller "
                                                              "chunks"):
        module.adapt_and_predict(images, tf.range(2), images)


# ------------------------------------------------------------ 12: fingerprint
def test_the_fingerprint_sees_a_same_size_change_in_a_small_file(tmp_path):
    """Before: two labels swapped in a CSV (same size) kept the fingerprint, so a run was
    evaluated on changed data silently."""
    from tfmeta.data import FewShotDataset

    csv_path, image = tmp_path / "train.csv", tmp_path / "a.jpg"
    csv_path.write_text("filename,label\na.jpg,n01\nb.jpg,n02\n")
    image.write_bytes(b"\xff\xd8" + b"x" * 100)

    def dataset():
        return FewShotDataset("x", {}, (1,), None, source_files=(str(csv_path), str(image)))

    before, legacy = dataset().fingerprint(), dataset().fingerprint(legacy=True)
    assert before.startswith("v2:") and dataset().same_files(legacy)
    csv_path.write_text("filename,label\na.jpg,n02\nb.jpg,n01\n")
    assert dataset().fingerprint() != before and not dataset().same_files(before)
    assert dataset().same_files(legacy)  # what a names-and-sizes key could not see
    image.write_bytes(b"\xff\xd8" + b"y" * 100)  # images count by name and size
    assert dataset().fingerprint(legacy=True) == legacy

"""Trust, third round (issue 34): writing files and exports. One test per finding, each of
which failed on the code before it (what it did then is in the test's docstring)."""

import dataclasses
import errno
import json
import os
import shutil
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import files, predict
from tfmeta.algorithms import build_learner
from tfmeta.config import apply_overrides, get_config, tiny_overrides
from tfmeta.data import EpisodeShape, episode_dataset, from_arrays
from tfmeta.training import portable
from tfmeta.training.export import METADATA_FILE, export_learner, export_metadata

# A pid above any Linux pid_max (2 ** 22): a writer that is surely no longer running.
DEAD_PID = 99999999


@pytest.fixture(scope="module")
def exported(omniglot, tmp_path_factory):
    """An untrained tiny ProtoNet (no training needed to write files) exported as a
    SavedModel and as a .tflite file: (learner, SavedModel folder, .tflite file)."""
    folder = tmp_path_factory.mktemp("exported")
    keras.utils.set_random_seed(0)
    learner = build_learner(apply_overrides(get_config("protonet", "omniglot"),
                                            tiny_overrides("protonet")), omniglot.input_shape)
    saved = export_learner(learner, omniglot, str(folder / "export"))
    litert = folder / "model.tflite"
    litert.write_bytes(portable.to_litert(portable.PortableClassifier(learner, omniglot),
                                          export_metadata(learner, omniglot)))
    return learner, saved, str(litert)


def complete(path) -> bool:
    """Whether `path` holds an export a reader can load (its graph and its metadata)."""
    return all(os.path.isfile(os.path.join(path, name))
               for name in ("saved_model.pb", METADATA_FILE))


# ------------------------------------------------ 1: a user's own <output>.part
def test_a_users_own_part_file_survives_a_write_and_a_failed_write(tmp_path):
    """Before: every atomic write went through `<path>.part`, removing a file of that name
    first, so a user's own `predictions.csv.part` was deleted by bin/predict.py."""
    out, mine = tmp_path / "predictions.csv", tmp_path / "predictions.csv.part"
    mine.write_text("the user's own")
    predict.write_csv([predict.Prediction("a.png", "cat", 0.5)], str(out))
    assert mine.read_text() == "the user's own"
    assert out.read_text().startswith("file,predicted_class,probability")
    written = out.read_text()
    with pytest.raises(OSError, match="disk full"):
        with files.atomic_write(str(out)) as f:
            f.write("half of the new")
            raise OSError(errno.ENOSPC, "disk full")
    assert out.read_text() == written and mine.read_text() == "the user's own"
    assert sorted(os.listdir(tmp_path)) == ["predictions.csv", "predictions.csv.part"]


def test_only_what_a_killed_writer_left_is_cleared(tmp_path):
    """The temporary names are `.<name>.<pid>.<random>.tfmeta-part`: one of a process that is
    no longer running is cleared before the next write of `<name>`; a running writer's, and
    every other name, however alike, is kept. (Before: a killed writer left `out.csv.part`,
    and whatever had that name was removed.)"""
    dead = f".out.csv.{DEAD_PID}.0123abcd.tfmeta-part"
    kept = [f".out.csv.{os.getppid()}.0123abcd.tfmeta-part",  # a running process's
            "out.csv.part", ".out.csv.backup", f".out.csv.{DEAD_PID}.tfmeta-part",
            f".other.csv.{DEAD_PID}.0123abcd.tfmeta-part",
            f"out.csv.{DEAD_PID}.0123abcd.tfmeta-part"]
    for name in [dead, *kept]:
        (tmp_path / name).write_text("x")
    with files.atomic_write(str(tmp_path / "out.csv")) as f:
        f.write("new")
    assert sorted(os.listdir(tmp_path)) == sorted(["out.csv", *kept])
    # A caller that resumes by its part's name (records conversion) still names it.
    with files.atomic_path(str(tmp_path / "spec.json"), ".partial") as partial:
        assert partial == str(tmp_path / "spec.json.partial")
        (tmp_path / "spec.json.partial").write_text("{}")
    assert (tmp_path / "spec.json").read_text() == "{}"


# ---------------------------------------------- 2: no moment without an export
def test_an_export_is_at_its_path_at_every_step_of_its_replacement(exported, omniglot,
                                                                   tmp_path, monkeypatch):
    """Before: the old export was removed (`shutil.rmtree`) and only then the new one renamed
    in, so bin/predict.py or a server loading the path in between found no export."""
    learner, saved, _ = exported
    path = str(tmp_path / "export")
    shutil.copytree(saved, path)
    steps = []

    def observed(module, name):
        function = getattr(module, name)

        def call(*args, **kwargs):
            assert complete(path), f"no export at the path before {name}{args}"
            result = function(*args, **kwargs)
            assert complete(path), f"no export at the path after {name}{args}"
            steps.append(name)
            return result
        monkeypatch.setattr(module, name, call)

    for module, name in ((os, "replace"), (os, "rename"), (os, "remove"), (shutil, "rmtree")):
        observed(module, name)
    if hasattr(files, "exchange"):
        observed(files, "exchange")
    export_learner(learner, omniglot, path)
    assert "exchange" in steps and "rmtree" in steps  # swapped, then the old one removed
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["export"]  # nothing left beside it
    assert "adapt_and_predict" in tf.saved_model.load(path).signatures
    assert predict.open_export(path).metadata == export_metadata(learner, omniglot)


def write_export(partial, version: int) -> None:
    """A stand-in export (the files a reader checks, and some weight) of `version`."""
    os.makedirs(os.path.join(partial, "variables"))
    for name in ("saved_model.pb", METADATA_FILE, *(f"variables/{i}" for i in range(20))):
        with open(os.path.join(partial, name), "w") as f:
            f.write(str(version))


def test_a_reader_looping_over_replacements_always_finds_an_export(tmp_path):
    """Before: a reader checking the path while the export was replaced found it missing."""
    path = str(tmp_path / "export")
    with files.atomic_path(path) as partial:
        write_export(partial, 0)
    stop, missing = threading.Event(), []

    def read():
        while not stop.is_set():
            if not complete(path):
                missing.append(1)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the reader runs between any two steps of the writer
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 101):
            with files.atomic_path(path) as partial:
                write_export(partial, version)
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert not missing, f"the path had no export {len(missing)} times"
    with open(os.path.join(path, METADATA_FILE)) as f:
        assert f.read() == "100"
    assert os.listdir(tmp_path) == ["export"]


def test_without_an_exchange_the_old_export_goes_only_once_the_new_one_is_in(tmp_path,
                                                                             monkeypatch):
    """Where the system or file system has no exchange (NFS, macOS), the old folder is
    renamed aside, the new one renamed in, and only then the old one removed."""
    path = str(tmp_path / "export")
    with files.atomic_path(path) as partial:
        write_export(partial, 0)
    monkeypatch.setattr(files, "exchange", lambda first, second: False)
    rmtree = shutil.rmtree

    def remove_old(folder, *args, **kwargs):
        assert complete(path), "the old export was removed before the new one was in"
        return rmtree(folder, *args, **kwargs)
    monkeypatch.setattr(shutil, "rmtree", remove_old)
    with files.atomic_path(path) as partial:
        write_export(partial, 1)
    with open(os.path.join(path, METADATA_FILE)) as f:
        assert f.read() == "1"
    assert os.listdir(tmp_path) == ["export"]


# ---------------------------------------------- 3: a damaged export tfmeta.json
DAMAGES = {
    "truncated": lambda text: text[:len(text) // 2],
    "a list": lambda text: "[]",
    "without max_ways": lambda text: json.dumps(
        {k: v for k, v in json.loads(text).items() if k != "max_ways"}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_tfmeta_json_is_one_line_naming_the_file(exported, tmp_path, damage):
    """Before: a truncated file was json's "Expecting ',' delimiter: line 6 column 1" with no
    file named, '[]' an AttributeError traceback, and an export without max_ways was served
    as if it served any number of ways."""
    path = str(tmp_path / "export")
    shutil.copytree(exported[1], path)
    metadata_file = os.path.join(path, METADATA_FILE)
    with open(metadata_file) as f:
        text = f.read()
    with open(metadata_file, "w") as f:
        f.write(DAMAGES[damage](text))
    with pytest.raises(ValueError) as error:
        predict.open_export(predict.export_path(export=path))
    message = str(error.value)
    assert "\n" not in message and os.path.abspath(metadata_file) in message, message
    assert "the export is damaged; export the run again: bin/export.py" in message, message


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_tflite_metadata_is_one_line_naming_the_file(exported, omniglot, tmp_path,
                                                              damage):
    """The same metadata inside a .tflite file (`tfmeta.lite`), damaged in place (padded with
    spaces to its length, so that the file stays a readable model). Before: '[]' was a
    TypeError traceback ("list indices must be integers") and an export without max_ways
    was served without its check of ways (text that is not JSON was one line already,
    without the command to export again)."""
    learner, _, litert = exported
    with open(litert, "rb") as f:
        content = f.read()
    text = json.dumps(export_metadata(learner, omniglot))
    assert content.count(text.encode()) == 1
    assert predict.open_export(litert).metadata == json.loads(text)  # as written, it serves
    damaged = DAMAGES[damage](text).ljust(len(text)).encode()
    path = str(tmp_path / "model.tflite")
    with open(path, "wb") as f:
        f.write(content.replace(text.encode(), damaged))
    with pytest.raises(ValueError) as error:
        predict.open_export(predict.export_path(export=path))
    message = str(error.value)
    assert "\n" not in message and f"The tfmeta metadata inside {path}" in message, message
    assert "the export is damaged; export the run again: bin/export.py" in message, message


# ------------------------------------------ 4: a split with fewer than 2 classes
def one_class_test_split():
    """Own data (10 classes of 6 images) whose 'test' split (data.class_split) has one
    class, c9."""
    labels = np.repeat(np.arange(10), 6)
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8), np.uint8)
    names = [f"c{i}" for i in range(10)]
    split = {"train": names[:7], "val": names[7:9], "test": names[9:]}
    return from_arrays(images, labels, class_names=names, class_split=split)


def assert_needs_two_classes(error, split="'test' split"):
    message = str(error.value)
    assert "ways <= 1" not in message and "min_ways <= 1" not in message, message
    assert split in message and "needs at least 2" in message, message
    assert "\n" not in message, message


def test_a_split_of_one_class_says_it_needs_two_not_ways_1():
    """Before: "ways=5 is larger than the 1 classes available in the 'test' split; use ways
    <= 1 or a dataset with more classes", and the same "ways <= 1" (or
    "episode_sampler.min_ways <= 1") for a split whose other classes are too small, for
    variable episodes, and for groups of one class: not a valid setting (ways >= 2)."""
    data = one_class_test_split()
    with pytest.raises(ValueError, match=r"larger than the 1 class available in the 'test' "
                                         r"split.*give the split more classes.*"
                                         r"data\.class_split or data\.split_fractions") as error:
        episode_dataset(data, EpisodeShape(5, 1, 1), split="test")
    assert_needs_two_classes(error)
    with pytest.raises(ValueError, match="2 or more examples") as error:
        episode_dataset(data, EpisodeShape(5, 1, 1, sampler="variable"), split="test")
    assert_needs_two_classes(error)
    # Two test classes, one of them too small for 4 + 1 images: one class is left.
    small = from_arrays(
        np.zeros((57, 8, 8), np.uint8), np.repeat(np.arange(10), [6] * 9 + [3]),
        class_names=[f"c{i}" for i in range(10)],
        class_split={"train": [f"c{i}" for i in range(7)], "val": ["c7"], "test": ["c8", "c9"]})
    with pytest.raises(ValueError, match=r"Only 1 of the 2 classes in the 'test' split") as error:
        episode_dataset(small, EpisodeShape(2, 4, 1), split="test")
    assert_needs_two_classes(error)
    # Episodes within one group, where every group has one class.
    train = data.split("train")
    grouped = dataclasses.replace(train, class_groups=list(train.class_names))
    with pytest.raises(ValueError, match="has 1 class, and an episode needs at least 2 classes; "
                                         "use episode_grouping=any") as error:
        episode_dataset(grouped, EpisodeShape(2, 1, 1, grouping="within"), split="train")
    assert_needs_two_classes(error, "'train' split")

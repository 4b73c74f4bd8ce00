"""Trust, third round (issue 34): records folders under bad input. A records folder is
untrusted input: its spec's entries, its class files and their records are checked where
they are read. Each test failed on the code before it (what it did then is in its
docstring)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.test_records import REPO, coded_images
from tfmeta import cli, errors
from tfmeta.data import (
    EpisodeShape,
    episode_dataset,
    from_arrays,
    record_format,
    record_store,
    record_writer,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    images, labels = coded_images(classes=8, per_class=6)
    source = from_arrays(images, labels, split_fractions=(0.5, 0.25, 0.25))
    folder = str(tmp_path_factory.mktemp("trusted") / "r")
    record_writer.convert(source, folder, threads=1)
    return folder


@pytest.fixture
def copy(converted, tmp_path):
    folder = str(tmp_path / "copy")
    shutil.copytree(converted, folder)
    return folder


def edit_spec(folder, change):
    path = os.path.join(folder, record_format.SPEC_FILE)
    spec = json.load(open(path))
    change(spec)
    json.dump(spec, open(path, "w"))
    return path


def first_file(folder):
    spec = json.load(open(os.path.join(folder, record_format.SPEC_FILE)))
    return os.path.join(folder, spec["classes"][0]["file"])


@pytest.mark.parametrize("file", ["../../outside.tfrecord", "../../../../etc/passwd",
                                  "/etc/passwd", "train/../../x.tfrecord", "train//x"])
def test_a_class_file_outside_the_folder_is_refused(copy, tmp_path, file):
    """Before: `../../x.tfrecord` was read from outside the folder (training ran on it) and
    `../../../../etc/passwd` was opened as a record file (traceback)."""
    outside = tmp_path.parent / "outside.tfrecord"
    shutil.copy(first_file(copy), outside)
    shutil.copy(first_file(copy) + record_format.INDEX_SUFFIX,
                str(outside) + record_format.INDEX_SUFFIX)
    edit_spec(copy, lambda spec: spec["classes"][0].update(file=file))
    with pytest.raises(ValueError, match=r"dataset_spec.json: class entry 0 .* names the file "
                                         r".* not a relative path inside"):
        record_store.load(copy)


def test_a_class_file_linked_outside_the_folder_is_refused(copy, tmp_path):
    """Before: a class file that is a symlink to a file elsewhere was read."""
    target = tmp_path / "elsewhere.tfrecord"
    shutil.move(first_file(copy), target)
    os.symlink(target, first_file(copy))
    with pytest.raises(ValueError, match="not a relative path inside"):
        record_store.load(copy)


@pytest.mark.parametrize("change, message", [
    (lambda s: s["classes"][1].pop("file"), "class entry 1 has no 'file' text"),
    (lambda s: s.update(classes={"a": 1}), "'classes' is not a non-empty list"),
    (lambda s: s["classes"].__setitem__(2, "train/x"), "class entry 2 is not an object"),
    (lambda s: s["classes"][0].update(count=-5), "has count -5, not a positive integer"),
    (lambda s: s["classes"][0].update(count="6"), "has count '6', not a positive integer"),
    (lambda s: s["classes"][1].update(file=s["classes"][0]["file"]),
     "class entry 1 .* and class entry 0 name the same file"),
    (lambda s: s.update(stored_shape=[12, -1, 3]), "stored_shape .* not a list of positive"),
    (lambda s: s.update(stored_dtype="object"), "stored_dtype 'object' is not a numeric"),
    (lambda s: s.update(encoding="jpeg"), "encoding 'jpeg' is not"),
    (lambda s: s.update(transform={"size": [12]}), "transform .* is not null or"),
])
def test_a_malformed_spec_entry_is_one_line_naming_the_spec(copy, change, message):
    """Before: KeyError ('file'), TypeError (classes not a list), a negative count advised
    "shots + queries <= -5"."""
    path = edit_spec(copy, change)
    with pytest.raises(ValueError, match=message) as raised:
        record_store.load(copy)
    assert path in str(raised.value) and "convert the data again" in str(raised.value)


def test_counts_are_checked_against_the_files(copy):
    """Before: a count of 10**12 was believed (training ran, drawing record numbers the file
    does not have); the count now has to be the file's."""
    edit_spec(copy, lambda spec: spec["classes"][0].update(count=10 ** 12))
    with pytest.raises(ValueError, match=r"spec counts 1000000000000 records of .*class_00000"
                                         r".* but the file holds 6"):
        record_store.load(copy)


def test_a_stored_shape_that_is_not_the_records_is_one_line_at_load(copy):
    """Before: `InvalidArgumentError` from the pipeline (ensure_shape) when training."""
    edit_spec(copy, lambda spec: spec.update(stored_shape=[10, 10, 3]))
    with pytest.raises(ValueError, match=r"A record of .*class_00000.tfrecord holds an example "
                                         r"of shape 12x12x3, not the spec's stored_shape "
                                         r"10x10x3"):
        record_store.load(copy)


def test_a_truncated_record_file_is_one_line_at_load(copy):
    """Before: `DataLossError` traceback when the stream reached the end of the file."""
    file = first_file(copy)
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) - 100)
    with pytest.raises(ValueError, match=r"class_00000.tfrecord holds \d+ bytes but its 6 "
                                         r"records take \d+: it was truncated"):
        record_store.load(copy)
    os.remove(file + record_format.INDEX_SUFFIX)
    with pytest.raises(ValueError, match=r"Cannot read the index .*class_00000.tfrecord.index"):
        record_store.load(copy)


def flip_byte(file, at):
    with open(file, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))


def test_a_flipped_byte_stops_the_stream_with_a_line_naming_the_file(copy):
    """Before: `DataLossError` (a corrupted record) traceback from inside the pipeline. Now
    the record's CRC-32 (written at conversion) is checked as it is read, and the error
    carries one line that `tfmeta.cli` prints."""
    loaded = record_store.load(copy)
    train = loaded.split("train")
    flip_byte(train.files[1], 200)
    episodes = episode_dataset(train, EpisodeShape(ways=4, shots=2, queries=1), meta_batch_size=2,
                               seed=1)
    with pytest.raises(tf.errors.OpError) as raised:
        for _ in episodes.take(6):
            pass
    line = cli.user_message(raised.value)
    assert line.startswith("Record ") and "class_00001.tfrecord is corrupt" in line
    assert "convert the data again" in line and "\n" not in line
    with pytest.raises(ValueError, match="class_00001.tfrecord is corrupt"):
        train.stored_examples(1)


def test_two_conversions_of_the_same_data_are_the_same_bytes(converted, tmp_path):
    """Before: the order of the features inside each serialized Example varied from process
    to process (protobuf maps), so the bytes, and the records fingerprint, of identical
    data differed. The writer now serializes deterministically (features in key order), in
    this process and in another."""
    for raw in tf.data.TFRecordDataset(first_file(converted)).take(3):
        example = tf.train.Example.FromString(raw.numpy())
        assert raw.numpy() == example.SerializeToString(deterministic=True)
        assert raw.numpy().index(b"image") < raw.numpy().index(b"label")
    script = ("import sys; from tests.test_trust_records import convert_again; "
              "convert_again(sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "again")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for folder, _, names in os.walk(converted):
        for name in names:
            mine = os.path.join(folder, name)
            theirs = os.path.join(tmp_path / "again", os.path.relpath(mine, converted))
            assert open(mine, "rb").read() == open(theirs, "rb").read(), name


def convert_again(folder):
    images, labels = coded_images(classes=8, per_class=6)
    source = from_arrays(images, labels, split_fractions=(0.5, 0.25, 0.25))
    record_writer.convert(source, folder, threads=1)


def test_a_full_disk_during_conversion_is_one_line_and_resumes(tmp_path, monkeypatch):
    """Before: `ResourceExhaustedError` traceback from the record writer. Writes go to
    /dev/full here, which fails as a full disk does (ENOSPC)."""
    images, labels = coded_images(classes=8, per_class=6)
    source = from_arrays(images, labels, split_fractions=(0.5, 0.25, 0.25))
    real = tf.io.TFRecordWriter
    full = {"after": 3}

    def writer(path):
        full["after"] -= 1
        return real("/dev/full" if full["after"] < 0 else path)

    monkeypatch.setattr(record_writer.tf.io, "TFRecordWriter", writer)
    folder = str(tmp_path / "r")
    with pytest.raises(OSError, match=r"Writing records to .*/r failed after \d of 8 classes "
                                      r"\(.*No space left on device\); free space there .* "
                                      r"rerun the same bin/convert.py"):
        record_writer.convert(source, folder, threads=1)
    leftovers = [n for _, _, names in os.walk(folder) for n in names if "partial" in n]
    assert leftovers == [record_format.SPEC_FILE + ".partial"]  # no half-written class file
    monkeypatch.setattr(record_writer.tf.io, "TFRecordWriter", real)
    record_writer.convert(source, folder, threads=1)  # the rerun completes it
    assert record_store.load(folder).split("train").num_classes == 4


def test_records_version_1_is_refused_with_the_fix(copy):
    """Records written before the index (version 1) cannot be read on demand."""
    edit_spec(copy, lambda spec: spec.update(version=1))
    with pytest.raises(ValueError, match="version 1, not 2 .* convert the data again"):
        record_store.load(copy)


def test_a_pipeline_message_is_found_in_a_tensorflow_error_and_nothing_else_is():
    marked = tf.errors.InvalidArgumentError(
        None, None, "Graph execution error:\n  ValueError: " +
        errors.pipeline_message("Record 3 of x is corrupt; convert the data again.") +
        "\nTraceback ...")
    assert cli.user_message(marked) == "Record 3 of x is corrupt; convert the data again."
    assert cli.user_message(tf.errors.InvalidArgumentError(None, None, "a bug")) is None
    assert cli.user_message(RuntimeError("a bug")) is None


# ------------------------------------------------------- user errors by type (issue 35)
INTERNAL_BUG = """
import sys
from tfmeta.commands import train
from tfmeta.training import trainer

def broken(*args, **kwargs):
    raise ValueError("an internal bug")  # as a ValueError inside TensorFlow or Keras would be

trainer.train = broken
sys.argv = ["bin/train.py", "--algo=protonet", "--workdir=" + sys.argv[1]]
train.run()
"""


def test_a_bugs_valueerror_keeps_its_traceback_and_a_user_error_is_one_line(tmp_path):
    """Before: cli.py printed every ValueError as one line, a bug's included, losing its
    traceback. Now only `UserError` (a ValueError) and OSErrors are a user's."""
    bug = subprocess.run([sys.executable, "-c", INTERNAL_BUG, str(tmp_path / "run")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bug.returncode == 1 and "Traceback (most recent call last)" in bug.stderr
    assert "ValueError: an internal bug" in bug.stderr and "error: an internal" not in bug.stderr
    assert cli.user_message(ValueError("a bug")) is None
    assert cli.user_message(errors.UserError("--ways=0 is\n not allowed")) == \
        "--ways=0 is not allowed"
    with pytest.raises(errors.UserError, match="needs --data_dir"):
        record_store.load(None)  # what tfmeta raises for a user is a UserError

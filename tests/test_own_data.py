"""A user's own data: a folder of class folders, TFDS datasets, arrays and tf.data, on
files written here (mixed formats, modes and sizes, strays, a corrupt file)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfmeta.data import (
    EpisodeShape,
    episode_dataset,
    from_arrays,
    from_tf_dataset,
    load_dataset,
    own_data,
)
from tfmeta.data import images as image_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Each test module decodes into its own cache, never the user's (conftest.private_cache).
pytestmark = pytest.mark.usefixtures("private_cache")


def save(path, array, mode=None, fmt=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, fmt, **kwargs)
    return path


def class_tree(root, counts, size=(24, 30), seed=0):
    """`root/<class>/...`: `counts[class]` images each, cycling through formats and modes,
    sizes around `size`, every third image in a nested folder."""
    rng = np.random.default_rng(seed)
    kinds = [("png", "RGB"), ("jpg", "RGB"), ("bmp", "L"), ("gif", "P"), ("png", "RGBA"),
             ("png", "L"), ("jpeg", "L"), ("PNG", "1")]
    for name, count in counts.items():
        for i in range(count):
            extension, mode = kinds[(i + len(name)) % len(kinds)]
            nested = "deeper/still" if i % 3 == 2 else ""
            shape = (size[0] + i, size[1] + 2 * i, 3)
            save(os.path.join(root, name, nested, f"img{i}.{extension}"),
                 rng.integers(0, 256, shape, dtype=np.uint8), mode)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """12 classes of 5..9 images, with stray files (a README, .DS_Store, a text file in a
    class, an AppleDouble `._` file with an image extension, a hidden folder)."""
    root = str(tmp_path_factory.mktemp("photos"))
    class_tree(root, {f"class_{k:02d}": 5 + k % 5 for k in range(12)})
    for stray in ("README.md", "class_00/.DS_Store", "class_01/notes.txt",
                  "class_02/._img0.jpg", ".git/config", "class_03/Thumbs.db"):
        os.makedirs(os.path.dirname(os.path.join(root, stray)), exist_ok=True)
        with open(os.path.join(root, stray), "wb") as f:
            f.write(b"not an image")
    return root


# --------------------------------------------------------------------- decoding
def test_every_format_and_mode_decodes_to_the_same_pixels(tmp_path):
    """A grey pattern saved as PNG (grey, RGB, RGBA, palette, 16-bit, 1-bit), BMP, GIF
    and lossless-ish JPEG decodes to the same grey pixels; RGB -> grey is ITU-R 601 luma
    and grey -> RGB repeats the channel."""
    grey = np.tile(np.array([0, 255], np.uint8).repeat(4), (8, 1))      # 8x8 stripes
    files = {
        "grey.png": ("L", "PNG"), "rgb.png": ("RGB", "PNG"), "rgba.png": ("RGBA", "PNG"),
        "palette.png": ("P", "PNG"), "bits.png": ("1", "PNG"), "deep.png": ("I;16", "PNG"),
        "grey.bmp": ("L", "BMP"), "rgb.bmp": ("RGB", "BMP"), "palette.gif": ("P", "GIF"),
    }
    for name, (mode, fmt) in files.items():
        image = Image.fromarray(grey)
        image = (image.convert("I").point(lambda v: v * 257).convert("I;16")
                 if mode == "I;16" else image.convert(mode))
        image.save(tmp_path / name, fmt)
    for name in files:
        data = tf.io.read_file(str(tmp_path / name))
        np.testing.assert_array_equal(image_utils.decode_image(data, 8, 1).numpy()[..., 0],
                                      grey, err_msg=name)
        np.testing.assert_array_equal(image_utils.decode_image(data, 8, 3).numpy(),
                                      np.repeat(grey[..., None], 3, -1), err_msg=name)
    save(str(tmp_path / "q.jpg"), grey, "L", quality=100)
    jpeg = image_utils.decode_image(tf.io.read_file(str(tmp_path / "q.jpg")), 8, 1).numpy()
    assert np.abs(jpeg[..., 0].astype(int) - grey).max() <= 8
    # Columns of pure red, green, blue -> 255 * (0.2989, 0.587, 0.114), rounded.
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[:, 0, 0] = rgb[:, 1, 1] = rgb[:, 2, 2] = 255
    grey = image_utils.decode_image(tf.io.encode_png(rgb), 3, 1).numpy()
    np.testing.assert_array_equal(grey[..., 0], [[76, 150, 29]] * 3)


def test_crop_to_aspect_ratio_takes_the_centre_and_squash_keeps_everything():
    """A 20x40 image, black at both ends and white in its centre 20 columns: the centred
    square is all white; squashing to 20x20 keeps the black ends."""
    image = np.zeros((20, 40, 1), np.uint8)
    image[:, 10:30] = 255
    data = tf.io.encode_png(image)
    cropped = image_utils.decode_image(data, 20, 1, crop_to_aspect_ratio=True).numpy()
    squashed = image_utils.decode_image(data, 20, 1).numpy()
    assert (cropped == 255).all()
    assert squashed[:, 0].max() < 64 and squashed[:, 10].min() == 255


# ------------------------------------------------------------------------ folder
def test_folder_reads_formats_sizes_and_nesting_and_skips_strays(tree, caplog):
    with caplog.at_level(logging.INFO):
        data = load_dataset("folder", tree, image_size=16, channels=3)
    counts = {f"class_{k:02d}": 5 + k % 5 for k in range(12)}
    assert data.raw_shape == (16, 16, 3) and data.input_shape == (16, 16, 3)
    stored = {n: int(c) for split in data.splits.values()
              for n, c in zip(split.class_names, split.class_counts)}
    assert stored == counts  # every image, nested ones included; no stray counted
    assert all(s.images.dtype == np.uint8 for s in data.splits.values())
    skipped = [r.getMessage() for r in caplog.records if "Skipped" in r.getMessage()]
    assert skipped and "Skipped 5 files that are not" in skipped[0], skipped
    assert data.decoding == {"image_size": 16, "channels": 3, "crop_to_aspect_ratio": False}
    grey = load_dataset("folder", tree, image_size=16, channels=1)
    assert grey.input_shape == (16, 16, 1)


def test_folder_classes_are_split_by_seeded_fractions(tree):
    data = load_dataset("folder", tree, image_size=8)
    split = data.chosen_split
    names = sorted(n for names in split.values() for n in names)
    assert names == [f"class_{k:02d}" for k in range(12)]         # each class once
    assert [len(split[s]) for s in ("train", "val", "test")] == [8, 2, 2]  # 12 x .64/.16/.2
    assert {s: list(c.class_names) for s, c in data.splits.items()} == split
    again = load_dataset("folder", tree, image_size=8)
    assert again.chosen_split == split
    other = load_dataset("folder", tree, image_size=8, split_seed=1)
    assert other.chosen_split != split
    custom = load_dataset("folder", tree, image_size=8, split_fractions=(0.5, 0.25, 0.25))
    assert [len(custom.chosen_split[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    with pytest.raises(ValueError, match=r"split_fractions must be three numbers > 0 that "
                                         r"sum to 1.*\(0.5, 0.5\)"):
        load_dataset("folder", tree, image_size=8, split_fractions=(0.5, 0.5))


def test_split_fractions_round_to_whole_classes():
    assert [len(v) for v in own_data.split_classes(range(10)).values()] == [6, 2, 2]
    assert [len(v) for v in own_data.split_classes(range(3)).values()] == [1, 1, 1]
    assert [len(v) for v in own_data.split_classes(range(100)).values()] == [64, 16, 20]
    with pytest.raises(ValueError, match="at least 3 classes; got 2"):
        own_data.split_classes(["a", "b"])


def test_train_val_test_folders_fix_the_split(tmp_path):
    class_tree(tmp_path / "train", {f"t{k}": 4 for k in range(5)})
    class_tree(tmp_path / "val", {"v0": 4, "v1": 4})
    class_tree(tmp_path / "test", {"s0": 4, "s1": 4, "s2": 4})
    data = load_dataset("folder", str(tmp_path), image_size=8)
    assert data.chosen_split == {"train": [f"t{k}" for k in range(5)], "val": ["v0", "v1"],
                                 "test": ["s0", "s1", "s2"]}
    # No val/: cut from train/'s classes (.16 of .64 + .16 of 5 classes: one).
    only = tmp_path.parent / f"{tmp_path.name}_only"
    class_tree(only / "train", {f"t{k}": 4 for k in range(5)})
    class_tree(only / "test", {"s0": 4})
    split = load_dataset("folder", str(only), image_size=8).chosen_split
    assert len(split["val"]) == 1 and len(split["train"]) == 4 and split["test"] == ["s0"]
    class_tree(tmp_path / "val", {"t0": 4})
    with pytest.raises(ValueError, match=r"Class 't0' is in both .*train/ and val/"):
        load_dataset("folder", str(tmp_path), image_size=8)


def test_a_corrupt_image_is_an_error_naming_it_or_skipped_and_listed(tree, tmp_path, caplog):
    root = tmp_path / "with_corrupt"
    class_tree(str(root), {f"c{k}": 5 for k in range(4)})
    bad = root / "c2" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ValueError, match=f"Corrupt image {bad}: it does not decode"):
        load_dataset("folder", str(root), image_size=8)
    with caplog.at_level(logging.WARNING):
        data = load_dataset("folder", str(root), image_size=8, skip_corrupt=True)
    assert sum(len(s.images) for s in data.splits.values()) == 20
    assert any(str(bad) in r.getMessage() for r in caplog.records)


def test_missing_or_empty_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="--dataset=folder needs --data_dir"):
        load_dataset("folder", None)
    with pytest.raises(FileNotFoundError, match="No folder .*nowhere"):
        load_dataset("folder", str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no class folders with images"):
        load_dataset("folder", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"data.image_size must be an integer in \[1, 2048\]"):
        load_dataset("folder", str(tmp_path), image_size=0)
    with pytest.raises(ValueError, match="data.channels must be 1 .* or 3"):
        load_dataset("folder", str(tmp_path), channels=4)


def test_small_classes_leave_episodes_with_a_warning_and_too_few_is_one_line(tmp_path,
                                                                            caplog):
    class_tree(str(tmp_path), {"big0": 6, "big1": 6, "big2": 6, "big3": 6, "tiny": 2},
               size=(8, 8))
    split = {"train": ["big0", "big1", "tiny"], "val": ["big2"], "test": ["big2"]}
    with pytest.raises(ValueError, match="'big2' is in both the 'val' and the 'test'"):
        load_dataset("folder", str(tmp_path), image_size=8, class_split=split)
    data = load_dataset("folder", str(tmp_path), image_size=8, class_split={
        "train": ["big0", "big1", "tiny"], "val": ["big2"], "test": ["big3"]})
    with caplog.at_level(logging.WARNING):
        episode = next(iter(episode_dataset(data, EpisodeShape(2, 2, 2), split="train")))
    assert episode["support_images"].shape == (4, 8, 8, 3)
    assert any("'tiny' (2)" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=r"Only 2 of the 3 classes in the 'train' split have "
                                         r"at least shots \+ queries = 2 \+ 2 = 4 images, "
                                         r"fewer than ways=3"):
        episode_dataset(data, EpisodeShape(3, 2, 2), split="train")


def test_decoded_folders_are_cached_on_the_files_fingerprint(tmp_path, monkeypatch):
    class_tree(str(tmp_path), {f"c{k}": 4 for k in range(3)})
    first = load_dataset("folder", str(tmp_path), image_size=8)

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(image_utils, "decode_images_skipping", fail)
    cached = load_dataset("folder", str(tmp_path), image_size=8)
    np.testing.assert_array_equal(cached.split("train").images, first.split("train").images)
    save(str(tmp_path / "c0" / "new.png"), np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("folder", str(tmp_path), image_size=8)


def test_normalization_uses_the_training_classes_statistics(tree):
    data = load_dataset("folder", tree, image_size=8)
    inputs = data.split("train").all_inputs().reshape(-1, 3)
    np.testing.assert_allclose(inputs.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(inputs.std(0), 1.0, atol=1e-3)
    raw = load_dataset("folder", tree, image_size=8, normalize=False)
    assert 0 <= raw.split("test").all_inputs().min() and raw.split("test").all_inputs().max() <= 1


# -------------------------------------------------------------- arrays, tf.data
def test_from_arrays_and_from_tf_dataset_build_episodes_in_one_call():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 10, 10), dtype=np.uint8)
    labels = np.repeat(np.array([f"kind{k}" for k in range(10)]), 6)
    data = from_arrays(images, labels, image_size=12)
    assert data.raw_shape == (10, 10, 1) and data.input_shape == (12, 12, 1)
    assert sorted(n for s in data.chosen_split.values() for n in s) == sorted(set(labels))
    episode = next(iter(episode_dataset(data, EpisodeShape(3, 1, 2), meta_batch_size=2)))
    assert episode["query_images"].shape == (2, 6, 12, 12, 1)
    floats = from_arrays(images / 255.0, np.repeat(np.arange(10), 6),
                         class_names=[f"c{k}" for k in range(10)])
    np.testing.assert_array_equal(
        np.sort(np.concatenate([s.images.ravel() for s in floats.splits.values()])),
        np.sort(images.ravel()))  # float [0, 1] stored back as the same uint8 pixels
    with pytest.raises(ValueError, match="60 images but 59 labels"):
        from_arrays(images, labels[:59])
    with pytest.raises(ValueError, match=r"must be in \[0.0, 1.0\]"):
        from_arrays(images * 2.0, labels)

    sizes = [(8 + k % 3, 9 + k % 4) for k in range(40)]
    stream = tf.data.Dataset.from_generator(
        lambda: ((rng.integers(0, 256, (*s, 3), dtype=np.uint8), k % 8)
                 for k, s in enumerate(sizes)),
        output_signature=(tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int64)))
    from_stream = from_tf_dataset(stream, image_size=8, channels=1)
    assert from_stream.raw_shape == (8, 8, 1)
    assert sum(len(s.images) for s in from_stream.splits.values()) == 40
    with pytest.raises(ValueError, match="need image_size"):
        from_tf_dataset(stream)


# ---------------------------------------------------------------------- TFDS
TINY_BUILDER = textwrap.dedent('''
    import numpy as np
    import tensorflow_datasets as tfds

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        """Two splits of 8 classes; train repeats two test images (as Omniglot's small1)."""
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "picture": tfds.features.Image(shape=(None, None, 3)),
                "thumbnail": tfds.features.Image(shape=(None, None, 3)),
                "kind": tfds.features.ClassLabel(names=[f"kind{k}" for k in range(8)]),
                "group": tfds.features.ClassLabel(names=["a", "b"]),
            }), supervised_keys=("picture", "kind"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0), "test": self._generate_examples(1)}

        def _generate_examples(self, part):
            for i in range(16):
                k = 16 + i if part == 0 and i < 2 else 16 * part + i
                rng = np.random.default_rng(k)
                yield f"{part}-{i}", {
                    "picture": rng.integers(0, 256, (10 + i % 3, 12, 3), dtype=np.uint8),
                    "thumbnail": np.zeros((2, 2, 3), np.uint8), "kind": i % 8,
                    "group": i % 2}
''')


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS data directory holding `tiny_shapes`, prepared here through the loader's
    --download (`download_and_prepare`) with the builder code of TINY_BUILDER."""
    path = tmp_path_factory.mktemp("tfds")
    namespace = {}
    exec(compile(TINY_BUILDER, "tiny_builder", "exec"), namespace)  # registers TinyShapes
    data = load_dataset("tfds:tiny_shapes", str(path), download=True, image_size=8,
                        split_fractions=(0.5, 0.25, 0.25))
    assert os.path.isdir(path / "tiny_shapes" / "1.0.0")
    assert data.description.startswith("TFDS tiny_shapes (train, test; image 'picture', "
                                       "label 'kind')")
    return str(path)


def test_a_prepared_tfds_dataset_is_read_without_its_builder_code(tfds_dir):
    """In a fresh process, where TinyShapes is not defined, the prepared files are read by
    name: all splits pooled (32 examples less the 2 repeated), classes split 4/2/2."""
    code = textwrap.dedent(f"""
        import json
        from tfmeta.data import load_dataset
        data = load_dataset("tfds:tiny_shapes", {tfds_dir!r}, image_size=8,
                            split_fractions=(0.5, 0.25, 0.25))
        print("RESULT", json.dumps({{"split": data.chosen_split, "shape": data.raw_shape,
            "images": sum(len(s.images) for s in data.splits.values()),
            "fingerprint": data.fingerprint()}}))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["images"] == 30 and result["shape"] == [8, 8, 3]
    assert sorted(n for s in result["split"].values() for n in s) == [f"kind{k}"
                                                                       for k in range(8)]
    assert [len(result["split"][s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert result["fingerprint"]


def test_tfds_features_are_chosen_by_supervised_keys_or_by_name(tfds_dir):
    """The dataset has two Image and two ClassLabel features: supervised_keys choose
    (picture, kind); image_key chooses the thumbnails, all identical, so each class keeps
    one after duplicates are dropped."""
    data = load_dataset("tfds:tiny_shapes", tfds_dir, image_size=8, image_key="thumbnail")
    assert sum(len(s.images) for s in data.splits.values()) == 8
    assert "image 'thumbnail', label 'kind'" in data.description
    with pytest.raises(ValueError, match=r"data.label_key='colour' is not an ClassLabel "
                                         r"feature.*\['group', 'kind'\]"):
        load_dataset("tfds:tiny_shapes", tfds_dir, label_key="colour")
    from tfmeta.data import tfds_catalog

    features = {"a": tfds_feature("Image"), "b": tfds_feature("Image"),
                "y": tfds_feature("ClassLabel")}
    with pytest.raises(ValueError, match=r"2 Image features \(\['a', 'b'\].*"
                                         r"--set=data.image_key"):
        tfds_catalog.find_features(features, None, None, None)
    assert tfds_catalog.find_features(features, None, "b", None) == ("b", "y")
    assert tfds_catalog.find_features(features, ("a", "y"), None, None) == ("a", "y")


def tfds_feature(kind):
    import tensorflow_datasets as tfds

    return tfds.features.Image() if kind == "Image" else tfds.features.ClassLabel(num_classes=3)


def test_a_features_file_naming_foreign_code_is_refused(tfds_dir, tmp_path):
    """TFDS imports the module of every feature class features.json names; a data folder
    must not make it import anything but TFDS's own."""
    import shutil

    copy = tmp_path / "tfds"
    shutil.copytree(tfds_dir, copy)
    path = copy / "tiny_shapes" / "1.0.0" / "features.json"
    spec = json.loads(path.read_text())
    spec["featuresDict"]["features"]["kind"]["pythonClassName"] = "antigravity.ClassLabel"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"names feature classes that are not TensorFlow "
                                         r"Datasets' own \(\['antigravity.ClassLabel'\]\)"):
        load_dataset("tfds:tiny_shapes", str(copy))
    assert "antigravity" not in sys.modules


def test_tfds_mock_data_and_unknown_names(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        data = load_dataset("tfds:cifar10", str(tmp_path), image_size=16, channels=1,
                            splits=("train",))
    assert data.raw_shape == (16, 16, 1)
    names = sorted(n for s in data.chosen_split.values() for n in s)
    assert set(names) <= set(tfds.builder("cifar10").info.features["label"].names)
    assert sum(len(s.images) for s in data.splits.values()) == 40
    with pytest.raises(FileNotFoundError, match=r"No TFDS dataset 'no_such_set'.*list_builders"):
        load_dataset("tfds:no_such_set", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="lists no splits: it is not prepared"):
        load_dataset("tfds:cifar10", str(tmp_path))


def test_the_readme_own_data_example_runs(tmp_path):
    """The README's own-data snippet, run as written on a folder written here (12 classes
    of 20 images: 5-way 5-shot 15-query episodes take 20 of each)."""
    import re

    tree = class_tree(str(tmp_path), {f"c{k}": 20 for k in range(12)}, size=(6, 6))

    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    code = next(b for b in blocks if "from_folder(" in b)
    namespace = {}
    exec(code.replace('"photos/"', repr(tree)).replace("image_size=84", "image_size=8"),
         namespace)
    batch = next(iter(namespace["train"]))
    assert batch["support_images"].shape == (4, 25, 8, 8, 3)


def test_every_config_takes_datasets_it_has_never_heard_of():
    """`configs/<algo>.py` gives a valid run for `folder` and any `tfds:NAME` (no data is
    read); the learners of embeddings and environments are refused in one line."""
    from tfmeta import config as config_lib
    from tfmeta.algorithms import ALGORITHMS, recipe_of

    for algo in sorted(ALGORITHMS):
        for dataset in ("folder", "tfds:oxford_flowers102"):
            config = config_lib.get_config(algo, dataset)
            if "images" in recipe_of(algo).input_kinds:
                config_lib.validate_config(config)
            else:
                with pytest.raises(ValueError, match=f"--dataset={dataset}.* gives images"):
                    config_lib.validate_config(config)
    with pytest.raises(ValueError, match="A TFDS dataset is --dataset=tfds:NAME"):
        config_lib.get_config("protonet", "tfds:")


@pytest.mark.slow
def test_a_tfds_run_trains_records_its_split_and_evaluates(tfds_dir, tmp_path):
    """bin/train.py's path on a prepared TFDS dataset: config.json records the class
    split, and the run opens again on exactly those classes."""
    from tfmeta import config as config_lib
    from tfmeta.training import evaluation, trainer

    config = config_lib.apply_overrides(config_lib.get_config("protonet", "tfds:tiny_shapes"), [
        "data.image_size=16", "data.split_fractions=(0.5, 0.25, 0.25)", "ways=2",
        "eval_ways=2", "shots=1", "eval_shots=1", "queries=1", "num_steps=2",
        "model.filters=8", "val_episodes=2", "eval_meta_batch_size=2"])
    workdir = str(tmp_path / "run")
    trainer.train(config, workdir, tfds_dir, verbose=0)
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = json.load(f)["data_source"]["class_split"]
    assert [len(recorded[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    result = evaluation.evaluate_workdir(workdir, num_episodes=4)
    assert result["dataset"] == "tfds:tiny_shapes" and result["ways"] == 2
    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f) == result
    correct = result["accuracy"] * 4 * 2 * result["queries"]  # 4 episodes, 2 ways
    assert abs(correct - round(correct)) < 1e-3, correct


def test_predict_names_exactly_the_learners_that_serve_any_number_of_classes():
    """bin/predict.py's error for too many classes lists the learners whose exports serve
    any number (max_ways None); built from their configs, exactly those do."""
    from tfmeta import config as config_lib
    from tfmeta.algorithms import (
        ALGORITHMS,
        MAML,
        EpisodicClassifier,
        any_ways_algorithms,
        build_learner,
        learner_class,
        prototype_head_algorithms,
        recipe_of,
    )

    def max_ways(algo, *overrides):  # of the learner its config describes, made tiny
        config = config_lib.apply_overrides(config_lib.get_config(algo, "omniglot"),
                                            [*config_lib.tiny_overrides(algo), *overrides])
        return build_learner(config, (28, 28, 1)).max_ways

    classifiers = sorted(a for a in ALGORITHMS if "images" in recipe_of(a).input_kinds
                         and issubclass(learner_class(a), EpisodicClassifier))
    any_ways = {a for a in classifiers if max_ways(a) is None}
    assert any_ways == set(any_ways_algorithms())
    assert len(any_ways) >= 5, any_ways  # no fewer than the five once listed by hand
    # The prototype head's learners serve any number with it, and the MAML family's others
    # refuse it in one line.
    maml_family = [a for a in ALGORITHMS if issubclass(learner_class(a), MAML)]
    assert {"maml", "maml_plusplus"} <= set(prototype_head_algorithms()) < set(maml_family)
    for algo in maml_family:
        if algo in prototype_head_algorithms():
            assert max_ways(algo, "learner.head=prototypes") is None, algo
        else:
            with pytest.raises(ValueError, match="makes a head of N ways per task. Use "
                                                 "head='learned'"):
                max_ways(algo, "learner.head=prototypes")

"""Omniglot in its official layouts: splits, de-duplication, zip vs folder, cache,
download against local files, and errors for missing or corrupt data."""

import os
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.data import load_dataset
from tfmeta.data import omniglot as omniglot_data

BUNDLED = omniglot_data.BUNDLED_DIR


def alphabets(classes):
    return {name.split("/")[0] for name in classes.class_names}


def test_bundled_minimal_split_by_alphabet(omniglot):
    train, val, test = (omniglot.split(s) for s in ("train", "val", "test"))
    assert alphabets(train) == set(omniglot_data.MINIMAL_SPLIT["train"])
    assert alphabets(val) == {"Early_Aramaic"}
    assert alphabets(test) == {"Sanskrit", "Tagalog"}
    # 242 distinct characters (Greek and Latin are in both zips but read once):
    # train 161 characters x 4 rotations, val 22, test 42 + 17.
    assert (train.num_classes, val.num_classes, test.num_classes) == (644, 22, 59)
    assert 161 + 22 + 59 == 242
    assert set(train.class_counts) == {20} and set(test.class_counts) == {20}
    assert sum(n.endswith("/rot90") for n in train.class_names) == 161
    assert not any("rot" in n for n in test.class_names + val.class_names)


def test_train_on_val_adds_the_validation_characters_with_rotations(omniglot):
    from tfmeta.data import load_dataset

    both = load_dataset("omniglot", train_on_val=True)
    train = both.split("train")
    assert alphabets(train) == set(omniglot_data.MINIMAL_SPLIT["train"]) | {"Early_Aramaic"}
    assert train.num_classes == (161 + 22) * 4
    assert both.split("test").class_names == omniglot.split("test").class_names
    assert "training on train + val" in both.description


def test_images_are_preprocessed_strokes_bright(omniglot):
    images = omniglot.split("test").images
    assert images.shape[1:] == (28, 28, 1) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    assert images.mean() < 0.3  # background 0 after inversion, strokes 1


def test_rotations_are_rotated_copies(omniglot):
    train = omniglot.split("train")
    name = train.class_names[0]
    rotated = train.class_names.index(name + "/rot90")
    np.testing.assert_array_equal(np.rot90(train.class_examples(0), 1, axes=(1, 2)),
                                  train.class_examples(rotated))


def test_cache_equals_export_preprocessing(omniglot):
    """The cached examples are exactly `preprocess` of the decoded files, which is
    what exported models apply to their inputs."""
    test = omniglot.split("test")
    index = test.class_names.index("Tagalog/character01")
    with zipfile.ZipFile(os.path.join(BUNDLED, "images_background_small2.zip")) as z:
        name = sorted(n for n in z.namelist() if "Tagalog/character01/" in n and
                      n.endswith(".png"))[0]
        raw = tf.io.decode_png(z.read(name), channels=1).numpy()[None].astype(np.float32) / 255
    np.testing.assert_allclose(omniglot.preprocess(raw).numpy()[0], test.class_examples(index)[0],
                               atol=1e-6)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot_folders")
    for set_name in omniglot_data.MINIMAL_SETS:
        with zipfile.ZipFile(os.path.join(BUNDLED, set_name + ".zip")) as z:
            z.extractall(root)
    return root


def test_folders_read_like_zips(extracted, omniglot):
    from_folders = load_dataset("omniglot", str(extracted))
    for split in ("train", "val", "test"):
        a, b = from_folders.split(split), omniglot.split(split)
        assert a.class_names == b.class_names
        np.testing.assert_array_equal(a.images, b.images)


def test_second_load_uses_the_cache(monkeypatch, omniglot):
    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(omniglot_data, "read_characters", fail)
    again = load_dataset("omniglot")
    np.testing.assert_array_equal(again.split("test").images, omniglot.split("test").images)


def test_missing_folder_says_where_it_looked(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"No Omniglot data in .*nowhere.*images_background"
                                                r".*--download"):
        load_dataset("omniglot", str(missing))


def test_empty_folder_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked for images_background"):
        load_dataset("omniglot", str(tmp_path))


def test_partial_full_data_is_an_error(tmp_path):
    shutil.copy(os.path.join(BUNDLED, "images_background_small1.zip"),
                tmp_path / "images_background.zip")
    with pytest.raises(FileNotFoundError, match=r"\['images_evaluation'\] missing"):
        load_dataset("omniglot", str(tmp_path))


def copy_tree_with(extracted, tmp_path, relative, content):
    target = tmp_path / "data"
    shutil.copytree(extracted, target)
    with open(target / relative, "wb") as f:
        f.write(content)
    return target, target / relative


def test_corrupt_image_names_the_file(extracted, tmp_path):
    relative = "images_background_small2/Tagalog/character03/0894_05.png"
    data_dir, path = copy_tree_with(extracted, tmp_path, relative, b"\x89PNG not really")
    with pytest.raises(ValueError, match=f"Corrupt image {path}"):
        load_dataset("omniglot", str(data_dir))


def test_wrong_size_image_names_the_file(extracted, tmp_path):
    relative = "images_background_small1/Latin/character01/0630_01.png"
    small = tf.io.encode_png(tf.zeros((10, 10, 1), tf.uint8)).numpy()
    data_dir, path = copy_tree_with(extracted, tmp_path, relative, small)
    with pytest.raises(ValueError, match=rf"Image {path} has shape \(10, 10, 1\)"):
        load_dataset("omniglot", str(data_dir))


def test_download_from_local_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for set_name in omniglot_data.MINIMAL_SETS:
        shutil.copy(os.path.join(BUNDLED, set_name + ".zip"), mirror)
    data_dir = tmp_path / "data"
    found = omniglot_data.download(str(data_dir), omniglot_data.MINIMAL_SETS, f"file://{mirror}/")
    assert sorted(found) == sorted(omniglot_data.MINIMAL_SETS)
    assert load_dataset("omniglot", str(data_dir)).split("test").num_classes == 59
    # Present files are not fetched again.
    shutil.rmtree(mirror)
    omniglot_data.download(str(data_dir), omniglot_data.MINIMAL_SETS, f"file://{mirror}/")


def test_download_rejects_a_corrupt_file(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "images_background_small1.zip").write_bytes(b"not the official zip")
    data_dir = tmp_path / "data"
    with pytest.raises(OSError, match="has MD5 .* expected e704a628"):
        omniglot_data.download(str(data_dir), ["images_background_small1"], f"file://{mirror}/")
    assert not os.path.exists(data_dir / "images_background_small1.zip")
    assert not os.path.exists(data_dir / "images_background_small1.zip.part")


def test_download_failure_says_what_to_do(tmp_path):
    with pytest.raises(OSError, match="Could not download .*fetch the file by hand"):
        omniglot_data.download(str(tmp_path), ["images_evaluation"], f"file://{tmp_path}/absent/")


def write_fake_set(root, set_name, alphabets_and_counts, drawers=3):
    """A synthetic set in the official layout: each character draws a different square."""
    for a, (alphabet, count) in enumerate(alphabets_and_counts):
        for c in range(count):
            folder = root / set_name / alphabet / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            image = np.full((105, 105, 1), 255, np.uint8)
            image[10 + 5 * c:30 + 5 * c, 10 + 10 * a:40 + 10 * a] = 0
            png = tf.io.encode_png(image).numpy()
            for d in range(drawers):
                (folder / f"{a:02d}{c:02d}_{d + 1:02d}.png").write_bytes(png)


def test_full_data_uses_the_maml_split(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot_data, "FULL_SPLIT_SIZES", {"train": 6, "val": 2})
    write_fake_set(tmp_path, "images_background", [("A", 4), ("B", 3)])
    write_fake_set(tmp_path, "images_evaluation", [("C", 3)])
    data = load_dataset("omniglot", str(tmp_path))
    train, val, test = (data.split(s) for s in ("train", "val", "test"))
    assert (train.num_classes, val.num_classes, test.num_classes) == (24, 2, 2)
    names = [n for n in train.class_names if "rot" not in n] + list(val.class_names) + list(
        test.class_names)
    assert len(set(names)) == 10  # every character exactly once, in one split
    assert "MAML split" in data.description


def test_minimal_zips_without_the_split_alphabets_say_so(tmp_path):
    """Before: zips named like the minimal sets whose alphabets are not the official ones
    (renamed, re-packed) failed with "ClassImages needs at least one class"."""
    for name in omniglot_data.MINIMAL_SETS:
        with zipfile.ZipFile(os.path.join(BUNDLED, name + ".zip")) as source, \
                zipfile.ZipFile(tmp_path / (name + ".zip"), "w") as renamed:
            for info in source.infolist():
                parts = info.filename.split("/")
                if len(parts) > 1 and parts[1]:
                    parts[1] = "Renamed_" + parts[1]
                renamed.writestr("/".join(parts), source.read(info))
    with pytest.raises(ValueError, match=r"hold the alphabets \['Renamed_.*the minimal-set "
                                         r"split takes its train, val, test split from"):
        load_dataset("omniglot", str(tmp_path))

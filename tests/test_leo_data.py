"""The LEO embeddings reader (official pickle layout) and the embeddings writer."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from tfmeta.data import load_dataset
from tfmeta.data.leo_embeddings import class_of_key

DIM = 8


def official_pickle(path, per_class: dict, rng, as_bytes=True, protocol=2):
    """Writes a pickle as the LEO release lays it out: {"keys", "embeddings"}.

    per_class maps wnid -> number of images. Keys are "<x>-<wnid>-<wnid>_<n>.JPEG",
    as a numpy bytes array (Python 2 strings) when `as_bytes`.
    """
    keys, rows = [], []
    for wnid, count in per_class.items():
        for n in range(count):
            keys.append(f"{len(keys)}-{wnid}-{wnid}_{n}.JPEG")
            rows.append(rng.uniform(0.0, 3.0, DIM))
    keys = np.array([k.encode("latin-1") for k in keys]) if as_bytes else np.array(keys)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"keys": keys, "embeddings": np.array(rows, np.float32)}, f,
                    protocol=protocol)


def write_release(root, name="miniImageNet", crop="center", sizes=None, seed=0):
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": {"n01": 5, "n02": 7, "n03": 6},
                      "val": {"n04": 5, "n05": 4},
                      "test": {"n06": 6, "n07": 5}}
    for split, per_class in sizes.items():
        official_pickle(os.path.join(root, name, crop, f"{split}_embeddings.pkl"), per_class,
                        rng, as_bytes=split != "test")


def test_reads_official_layout_with_unequal_class_sizes(tmp_path):
    write_release(tmp_path)
    dataset = load_dataset("mini_imagenet", str(tmp_path), embeddings="center")
    assert dataset.name == "mini_imagenet"
    assert dataset.raw_shape == (DIM,)
    train = dataset.split("train")
    assert train.class_names == ("n01", "n02", "n03")
    assert list(train.class_counts) == [5, 7, 6]  # not 600 each
    assert dataset.split("val").class_names == ("n04", "n05")
    # Rows are L2-normalized, and keep their class: row 5 of the file is n02's first image.
    np.testing.assert_allclose(np.linalg.norm(train.images, axis=1), 1.0, rtol=1e-5)
    with open(tmp_path / "miniImageNet" / "center" / "train_embeddings.pkl", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["embeddings"]
    np.testing.assert_allclose(train.class_examples(1)[0], raw[5] / np.linalg.norm(raw[5]),
                               rtol=1e-5)


def test_preprocess_is_l2_normalization():
    from tfmeta.data.leo_embeddings import l2_normalize

    # [3, 4] has norm 5.
    np.testing.assert_allclose(l2_normalize(np.array([[3.0, 4.0]])).numpy(), [[0.6, 0.8]],
                               rtol=1e-6)


def test_bad_key_is_an_error_naming_it(tmp_path):
    write_release(tmp_path)
    path = tmp_path / "miniImageNet" / "center" / "val_embeddings.pkl"
    bad = "3-n04-n09_1.JPEG"  # file name does not start with its wnid
    with open(path, "wb") as f:
        pickle.dump({"keys": np.array([b"0-n04-n04_0.JPEG", bad.encode()]),
                     "embeddings": np.ones((2, DIM), np.float32)}, f, protocol=2)
    with pytest.raises(ValueError, match="n04-n09_1"):
        load_dataset("mini_imagenet", str(tmp_path), embeddings="center")
    with pytest.raises(ValueError, match="no-dashes"):
        class_of_key("no-dashes")


def test_tiered_multiview_is_a_clear_error(tmp_path):
    write_release(tmp_path, name="tieredImageNet")
    tiered = load_dataset("tiered_imagenet", str(tmp_path), embeddings="center")
    assert tiered.split("test").num_classes == 2
    with pytest.raises(ValueError, match="multiview.*tieredImageNet"):
        load_dataset("tiered_imagenet", str(tmp_path), embeddings="multiview")


def test_multiview_mini_imagenet(tmp_path):
    write_release(tmp_path, crop="multiview")
    dataset = load_dataset("mini_imagenet", str(tmp_path), embeddings="multiview")
    assert dataset.split("train").num_classes == 3


def test_train_on_val_merges_classes(tmp_path):
    write_release(tmp_path)
    dataset = load_dataset("mini_imagenet", str(tmp_path), embeddings="center", train_on_val=True)
    train = dataset.split("train")
    assert train.class_names == ("n01", "n02", "n03", "n04", "n05")
    assert list(train.class_counts) == [5, 7, 6, 5, 4]
    assert dataset.split("val").num_classes == 2


def test_missing_files_say_where_and_where_from(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)train_embeddings.pkl.*deepmind/leo"):
        load_dataset("mini_imagenet", str(tmp_path), embeddings="center")
    with pytest.raises(FileNotFoundError, match="leo-embeddings"):
        load_dataset("tiered_imagenet", None, embeddings="center")


def test_generic_embeddings_dataset_finds_its_folder(tmp_path):
    write_release(tmp_path, name="MyData")
    dataset = load_dataset("embeddings", str(tmp_path))
    assert dataset.split("test").class_names == ("n06", "n07")
    write_release(tmp_path, name="Other")
    with pytest.raises(FileNotFoundError, match="data.folder"):
        load_dataset("embeddings", str(tmp_path))
    assert load_dataset("embeddings", str(tmp_path), folder="Other").split("val").num_classes == 2


def test_writer_round_trips_through_the_reader(tmp_path):
    import keras

    from tfmeta.data import ClassImages, FewShotDataset
    from tfmeta.embeddings import write_embeddings

    rng = np.random.default_rng(0)
    # Class names with '-' and '_' (as Omniglot's) must not leak into the keys.
    splits = {s: ClassImages.from_lists(
        [rng.normal(size=(n, 3)).astype(np.float32) for n in (4, 3)],
        [f"{s}_alpha-1", f"{s}_beta-2"]) for s in ("train", "val", "test")}
    dataset = FewShotDataset("toy", splits, (3,), lambda x: x)
    double = keras.Sequential([keras.Input((3,)), keras.layers.Rescaling(2.0)])
    write_embeddings(double, dataset, str(tmp_path), "Toy")
    with open(tmp_path / "Toy" / "center" / "train_embeddings.pkl", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert sorted(raw) == ["embeddings", "keys"]
    assert raw["embeddings"].dtype == np.float32 and raw["embeddings"].shape == (7, 3)
    np.testing.assert_allclose(raw["embeddings"][:4], 2 * splits["train"].class_examples(0))
    loaded = load_dataset("embeddings", str(tmp_path))
    assert list(loaded.split("train").class_counts) == [4, 3]
    np.testing.assert_allclose(np.linalg.norm(loaded.split("val").images, axis=1), 1.0,
                               rtol=1e-5)


def release_zip(path, tmp_path, extra=()):
    """LEO's embeddings.zip as released: every file under `embeddings/<Name>/<crop>/`."""
    from tfmeta.data.leo_embeddings import PUBLISHED

    staging = tmp_path / "staging"
    for name, crops in PUBLISHED.items():
        for crop in crops:
            write_release(staging, name=name, crop=crop)
    with zipfile.ZipFile(path, "w") as z:
        for file in sorted(staging.rglob("*.pkl")):
            z.write(file, "embeddings/" + file.relative_to(staging).as_posix())
        for name, data in extra:
            z.writestr(name, data)
    return path


def test_download_fetches_checks_and_unpacks_the_release(tmp_path, monkeypatch):
    from tfmeta.data import leo_embeddings

    mirror = release_zip(tmp_path / "embeddings.zip", tmp_path)
    monkeypatch.setattr(leo_embeddings, "RELEASE_URL", f"file://{mirror}")
    data_dir = tmp_path / "data"
    # The path --algo=leo --dataset=mini_imagenet --download takes.
    dataset = load_dataset("mini_imagenet", str(data_dir), download=True, embeddings="center")
    assert dataset.split("train").class_names == ("n01", "n02", "n03")
    assert (data_dir / "tieredImageNet" / "center" / "test_embeddings.pkl").is_file()
    # Everything present: nothing is fetched again.
    mirror.unlink()
    assert leo_embeddings.download_release(str(data_dir)) == []
    multiview = load_dataset("mini_imagenet", str(data_dir), download=True, embeddings="multiview")
    assert multiview.split("val").num_classes == 2


def test_download_rejects_a_zip_without_the_release_files(tmp_path):
    from tfmeta.data import leo_embeddings

    mirror = tmp_path / "other.zip"
    with zipfile.ZipFile(mirror, "w") as z:
        z.writestr("embeddings/miniImageNet/center/train_embeddings.pkl", b"x")
    with pytest.raises(ValueError, match="lacks .*val_embeddings.pkl.*not LEO's release"):
        leo_embeddings.download_release(str(tmp_path / "data"), f"file://{mirror}")
    assert not (tmp_path / "data" / "embeddings.zip").exists()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        leo_embeddings.download_release(str(tmp_path / "data2"), f"file://{tmp_path}/junk.zip")


def test_download_refuses_members_outside_the_folder(tmp_path):
    from tfmeta.data import leo_embeddings

    mirror = release_zip(tmp_path / "evil.zip", tmp_path, extra=[("embeddings/../../evil.txt", b"x")])
    with pytest.raises(ValueError, match="outside"):
        leo_embeddings.download_release(str(tmp_path / "data" / "deep"), f"file://{mirror}")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()

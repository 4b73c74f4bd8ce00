"""mini-ImageNet, tieredImageNet, CIFAR-FS and FC100 read from small files written here in
exactly the official formats: splits, pixels, cache, errors, downloads, class lists."""

import csv
import hashlib
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.algorithms import ALGORITHMS, recipe_of
from tfmeta.data import cifar, load_dataset
from tfmeta.data import images as image_utils

# CIFAR-100's 20 superclasses and their fine classes (the dataset's own grouping, from
# https://www.cs.toronto.edu/~kriz/cifar.html), as its meta file names them.
CIFAR100_CLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
MINI_SPLITS = {"train": {"n01532829": 6, "n01558993": 7, "n01704323": 6},
               "val": {"n01855672": 6, "n02091244": 6},
               "test": {"n01930112": 6, "n01981276": 8}}


# Each test module decodes into its own cache, never the user's (conftest.private_cache).
pytestmark = pytest.mark.usefixtures("private_cache")


def random_image(rng, size=84):
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_mini_csv(root, seed=0, splits=MINI_SPLITS):
    """Ravi & Larochelle's layout: images/<wnid><number>.jpg and <split>.csv."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, classes in splits.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            # Rows interleave classes, so grouping by label is tested.
            rows = [(wnid, n) for n in range(max(classes.values()))
                    for wnid, count in classes.items() if n < count]
            for wnid, n in rows:
                name = f"{wnid}{n + 1:08d}.jpg"
                size = 100 if n == 0 else 84  # an unresized image, as ImageNet's are
                jpeg = tf.io.encode_jpeg(random_image(rng, size), quality=95).numpy()
                (root / "images" / name).write_bytes(jpeg)
                writer.writerow([name, wnid])
    return root


def write_mini_pickles(root, seed=0):
    """The pickle caches: {"image_data": uint8 [n, 84, 84, 3], "class_dict": wnid -> indices}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, classes in MINI_SPLITS.items():
        labels = rng.permutation([w for w, c in classes.items() for _ in range(c)])
        data = {"image_data": rng.integers(0, 256, (len(labels), 84, 84, 3), dtype=np.uint8),
                "class_dict": {w: [int(i) for i in np.flatnonzero(labels == w)]
                               for w in classes}}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump(data, f, protocol=4)
    return root


@pytest.fixture(scope="module")
def mini_csv_dir(tmp_path_factory):
    return write_mini_csv(tmp_path_factory.mktemp("mini_csv"))


@pytest.fixture(scope="module")
def mini_csv(mini_csv_dir):
    return load_dataset("mini_imagenet", str(mini_csv_dir))


def test_mini_imagenet_csv_splits_as_the_files_say(mini_csv, mini_csv_dir):
    for split, classes in MINI_SPLITS.items():
        images = mini_csv.split(split)
        assert images.class_names == tuple(sorted(classes))
        assert list(images.class_counts) == [classes[w] for w in sorted(classes)]
        assert images.images.dtype == np.uint8 and images.images.shape[1:] == (84, 84, 3)
    assert mini_csv.raw_shape == (84, 84, 3) and mini_csv.input_shape == (84, 84, 3)
    assert mini_csv.data_dir == os.path.abspath(mini_csv_dir)
    assert os.path.join(str(mini_csv_dir), "test.csv") in mini_csv.source_files
    assert len(mini_csv.source_files) == 3 + sum(sum(c.values()) for c in MINI_SPLITS.values())


def test_mini_imagenet_pixels_round_trip_to_the_export_preprocessing(mini_csv, mini_csv_dir):
    """transform(stored uint8) == preprocess(decoded file / 255): the trainer and a served
    model see the same inputs."""
    test = mini_csv.split("test")
    wnid = test.class_names[1]
    raw = tf.io.decode_jpeg((mini_csv_dir / "images" / f"{wnid}00000002.jpg").read_bytes())
    stored = test.stored_examples(1)
    matches = [i for i in range(len(stored)) if np.array_equal(stored[i], raw.numpy())]
    assert len(matches) == 1  # the file's pixels, unchanged, in its class
    from_file = mini_csv.preprocess(raw.numpy()[None].astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(test.class_examples(1)[matches[0]], from_file[0], atol=1e-5)
    # Per-channel normalization: pixel value m (the channel mean) maps to 0, m + s to 1.
    mean, std = np.array(image_utils.IMAGENET_MEAN_STD, np.float32)
    probe = np.stack([np.full((84, 84), v) for v in mean + std], -1)[None] / 255.0
    np.testing.assert_allclose(mini_csv.preprocess(probe).numpy(), 1.0, atol=1e-5)


def test_mini_imagenet_larger_images_are_resized_to_84(mini_csv, mini_csv_dir):
    wnid = sorted(MINI_SPLITS["val"])[0]
    big = tf.io.decode_jpeg((mini_csv_dir / "images" / f"{wnid}00000001.jpg").read_bytes())
    assert big.shape == (100, 100, 3)
    expected = tf.cast(tf.round(tf.image.resize(tf.cast(big, tf.float32), (84, 84),
                                                antialias=True)), tf.uint8).numpy()
    stored = mini_csv.split("val").stored_examples(0)
    assert min(np.abs(s.astype(int) - expected).max() for s in stored) <= 1


def test_mini_imagenet_image_size_resizes_in_the_transform(mini_csv_dir, mini_csv):
    small = load_dataset("mini_imagenet", str(mini_csv_dir), image_size=42)
    assert small.input_shape == (42, 42, 3) and small.raw_shape == (84, 84, 3)
    np.testing.assert_array_equal(small.split("train").images, mini_csv.split("train").images)
    raw = small.split("train").images[:2].astype(np.float32) / 255.0
    np.testing.assert_allclose(small.split("train").class_examples(0)[:2],
                               small.preprocess(raw).numpy(), atol=1e-5)


def test_mini_imagenet_second_load_reads_the_cache(mini_csv_dir, mini_csv, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(image_utils, "decode_images", fail)
    again = load_dataset("mini_imagenet", str(mini_csv_dir))
    np.testing.assert_array_equal(again.split("test").images, mini_csv.split("test").images)


def test_mini_imagenet_pickle_caches(tmp_path):
    write_mini_pickles(tmp_path)
    data = load_dataset("mini_imagenet", str(tmp_path), train_on_val=True)
    assert data.split("test").class_names == tuple(sorted(MINI_SPLITS["test"]))
    assert data.split("train").num_classes == 5 and data.split("val").num_classes == 2
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "rb") as f:
        raw = pickle.load(f)
    wnid = data.split("test").class_names[1]
    np.testing.assert_array_equal(data.split("test").stored_examples(1),
                                  raw["image_data"][raw["class_dict"][wnid]])


def test_mini_imagenet_episodes_are_model_inputs(mini_csv):
    from tfmeta.data import EpisodeShape, episode_dataset

    episode = next(iter(episode_dataset(mini_csv.split("train"), EpisodeShape(3, 1, 2), seed=1)))
    assert episode["support_images"].dtype == tf.float32
    assert episode["query_images"].shape == (6, 84, 84, 3)
    assert abs(float(tf.reduce_mean(episode["query_images"]))) < 1.0  # normalized


def test_mini_imagenet_errors_name_the_file_and_the_fix(mini_csv_dir, tmp_path):
    data = shutil.copytree(mini_csv_dir, tmp_path / "copy")
    os.remove(data / "val.csv")
    with pytest.raises(FileNotFoundError, match=r"lacks the split file\(s\) \['val.csv'\]"):
        load_dataset("mini_imagenet", str(data))
    (data / "val.csv").write_text("n01855672000001.jpg,n01855672\n")
    with pytest.raises(ValueError, match="val.csv should start with the header 'filename,label'"):
        load_dataset("mini_imagenet", str(data))
    with pytest.raises(FileNotFoundError, match="No mini-ImageNet images in .*train.csv.*no pub"):
        load_dataset("mini_imagenet", str(tmp_path / "empty"))
    (tmp_path / "leo" / "miniImageNet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="LEO's embeddings .*data.embeddings=center"):
        load_dataset("mini_imagenet", str(tmp_path / "leo"))


def test_mini_imagenet_corrupt_jpeg_is_named(mini_csv_dir, tmp_path):
    data = shutil.copytree(mini_csv_dir, tmp_path / "copy")
    bad = data / "images" / "n01930112" "00000003.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=f"Corrupt image {bad}"):
        load_dataset("mini_imagenet", str(data))


def test_mini_imagenet_pickle_with_a_wrong_key_is_named(tmp_path):
    write_mini_pickles(tmp_path)
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    with open(path, "wb") as f:
        pickle.dump({"images": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {}}, f)
    with pytest.raises(ValueError, match=f"{path} should hold a dict with keys 'image_data'"):
        load_dataset("mini_imagenet", str(tmp_path))


@pytest.mark.parametrize("dataset", ["mini_imagenet", "tiered_imagenet"])
def test_download_of_images_without_public_url_is_a_one_line_error(dataset, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset(dataset, str(tmp_path), download=True)
    message = str(error.value)
    assert "\n" not in message and "no public URL" in message
    assert ("train.csv" in message and "ImageNet" in message) if dataset == "mini_imagenet" \
        else ("_images_png.pkl" in message and "Google Drive" in message)


# ------------------------------------------------------------------ tieredImageNet
TIERED_SPLITS = {"train": [("n01", "animal", 4), ("n02", "animal", 5), ("n03", "device", 4)],
                 "val": [("n04", "food", 4), ("n05", "food", 4)],
                 "test": [("n06", "plant", 4), ("n07", "rock", 5)]}


def write_tiered(root, seed=0, as_bytes_split="val"):
    """Ren et al.'s release: PNG-encoded images (uint8 arrays, or bytes in one split; a list,
    or an object array in the test split) and the labels dict."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    pixels = {}
    for split, classes in TIERED_SPLITS.items():
        generals = sorted({g for _, g, _ in classes})
        labels = rng.permutation([c for c, (_, _, n) in enumerate(classes) for _ in range(n)])
        images = [random_image(rng) for _ in labels]
        encoded = [tf.io.encode_png(im).numpy() for im in images]
        encoded = encoded if split == as_bytes_split else [
            np.frombuffer(e, np.uint8) for e in encoded]
        if split == "test":  # some copies hold an object array instead of a list
            encoded = np.array(encoded + [None], dtype=object)[:-1]
        with open(root / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(encoded, f, protocol=2)
        with open(root / f"{split}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": labels.astype(np.int64),
                         "label_general": np.array([generals.index(classes[c][1])
                                                    for c in labels]),
                         "label_specific_str": [w for w, _, _ in classes],
                         "label_general_str": generals}, f, protocol=2)
        pixels[split] = (labels, np.stack(images))
    return pixels


@pytest.fixture(scope="module")
def tiered(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiered")
    pixels = write_tiered(root)
    return root, pixels, load_dataset("tiered_imagenet", str(root))


def test_tiered_imagenet_splits_and_lossless_pixels(tiered):
    _, pixels, data = tiered
    for split, classes in TIERED_SPLITS.items():
        images = data.split(split)
        assert images.class_names == tuple(w for w, _, _ in classes)
        assert list(images.class_counts) == [n for _, _, n in classes]
        labels, raw = pixels[split]
        for c in range(len(classes)):  # PNG is lossless: the exact pixels, class by class
            np.testing.assert_array_equal(images.stored_examples(c), raw[labels == c])
    raw = pixels["test"][1][:3]
    np.testing.assert_allclose(
        data.split("test").inputs(raw), data.preprocess(raw.astype(np.float32) / 255).numpy(),
        atol=1e-6)


def test_tiered_imagenet_errors(tiered, tmp_path):
    root = shutil.copytree(tiered[0], tmp_path / "copy")
    with open(root / "test_images_png.pkl", "rb") as f:
        encoded = pickle.load(f)
    broken = list(encoded)
    broken[3] = np.frombuffer(b"\x89PNG broken", np.uint8)
    with open(root / "test_images_png.pkl", "wb") as f:
        pickle.dump(broken, f, protocol=2)
    with pytest.raises(ValueError, match=r"Corrupt image number 3 in .*test_images_png.pkl"):
        load_dataset("tiered_imagenet", str(root))
    with open(root / "test_images_png.pkl", "wb") as f:
        pickle.dump(encoded[:-1], f, protocol=2)
    with pytest.raises(ValueError, match=r"test_labels.pkl has 9 labels but .* holds 8 images"):
        load_dataset("tiered_imagenet", str(root))
    with open(root / "test_labels.pkl", "wb") as f:
        pickle.dump({"labels": np.zeros(8, np.int64)}, f, protocol=2)
    with pytest.raises(ValueError, match="test_labels.pkl should hold a dict with keys"):
        load_dataset("tiered_imagenet", str(root))
    os.remove(root / "val_labels.pkl")
    with pytest.raises(FileNotFoundError, match=r"missing \['val_labels.pkl'\].*Ren et al"):
        load_dataset("tiered_imagenet", str(root))


# ------------------------------------------------------------------ CIFAR-FS and FC100
def write_cifar100(root, per_class=(2, 1), seed=0):
    """The python release: cifar-100-python/{train,test,meta}, Python-2-style pickles with
    byte-string keys and channel-major rows. Returns {fine name: [r, g, b] of its images}."""
    rng = np.random.default_rng(seed)
    fine_names = sorted(f for fs in CIFAR100_CLASSES.values() for f in fs)
    coarse_names = sorted(CIFAR100_CLASSES)
    coarse_of = {f: coarse_names.index(c) for c, fs in CIFAR100_CLASSES.items() for f in fs}
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    colours = {}
    for part, count in zip(("train", "test"), per_class):
        labels = rng.permutation(np.repeat(np.arange(100), count))
        # Each image is one colour (r, g, b); the row stores all reds, then greens, then blues.
        rgb = rng.integers(0, 256, (len(labels), 3), dtype=np.uint8)
        data = np.repeat(rgb, 1024, axis=1)
        for label, colour in zip(labels, rgb):
            colours.setdefault(fine_names[label], []).append(tuple(colour))
        with open(folder / part, "wb") as f:
            pickle.dump({b"filenames": [b"x.png"] * len(labels), b"data": data,
                         b"fine_labels": [int(x) for x in labels],
                         b"coarse_labels": [coarse_of[fine_names[x]] for x in labels]},
                        f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in fine_names],
                     b"coarse_label_names": [n.encode() for n in coarse_names]}, f, protocol=2)
    return colours


def tar_gz(folder, path, extra=None):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
        if extra:
            tar.add(extra[0], arcname=extra[1])
    return path


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar100(root)


def test_class_lists_are_the_published_splits():
    fine = {f for fs in CIFAR100_CLASSES.values() for f in fs}
    sizes = {s: len(names) for s, names in cifar.CIFAR_FS_SPLIT.items()}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    assert set().union(*map(set, cifar.CIFAR_FS_SPLIT.values())) == fine  # disjoint, all 100
    supers = {s: len(names) for s, names in cifar.FC100_SPLIT.items()}
    assert supers == {"train": 12, "val": 4, "test": 4}
    assert set().union(*map(set, cifar.FC100_SPLIT.values())) == set(CIFAR100_CLASSES)
    # TADAM's superclass indices (Oreshkin et al. 2018): test 0, 7, 12, 14; val 8, 11, 13, 16.
    order = sorted(CIFAR100_CLASSES)
    assert [order.index(c) for c in cifar.FC100_SPLIT["test"]] == [0, 7, 12, 14]
    assert [order.index(c) for c in cifar.FC100_SPLIT["val"]] == [8, 11, 13, 16]


def test_cifar_fs_reads_the_folder(cifar_dir):
    root, colours = cifar_dir
    data = load_dataset("cifar_fs", str(root))
    assert {s: data.split(s).num_classes for s in ("train", "val", "test")} == {
        "train": 64, "val": 16, "test": 20}
    assert data.split("val").class_names == cifar.CIFAR_FS_SPLIT["val"]
    assert set(data.split("train").class_counts) == {3}  # 2 training + 1 test image
    assert data.raw_shape == (32, 32, 3) and data.input_shape == (32, 32, 3)
    # Channel-major rows become [32, 32, 3] pixels of the right colour and class.
    test = data.split("test")
    index = test.class_names.index("whale")
    got = sorted(tuple(int(v) for v in image[7, 19]) for image in test.stored_examples(index))
    assert got == sorted(colours["whale"])
    raw = test.stored_examples(index).astype(np.float32) / 255
    mean, std = np.array(image_utils.CIFAR100_MEAN_STD, np.float32) / 255
    np.testing.assert_allclose(test.class_examples(index), (raw - mean) / std, atol=1e-5)
    np.testing.assert_allclose(data.preprocess(raw).numpy(), (raw - mean) / std, atol=1e-5)


def test_fc100_splits_by_superclass(cifar_dir):
    data = load_dataset("fc100", str(cifar_dir[0]))
    super_of = {f: c for c, fs in CIFAR100_CLASSES.items() for f in fs}
    for split, size in (("train", 60), ("val", 20), ("test", 20)):
        names = data.split(split).class_names
        assert len(names) == size
        assert {super_of[n] for n in names} == set(cifar.FC100_SPLIT[split])


def test_cifar_reads_the_archive_and_upsamples(cifar_dir, tmp_path):
    tar_gz(cifar_dir[0] / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    data = load_dataset("cifar_fs", str(tmp_path), image_size=84)
    assert data.input_shape == (84, 84, 3) and data.raw_shape == (32, 32, 3)
    assert data.split("train").images.shape[1:] == (32, 32, 3)  # stored small, as uint8
    assert (tmp_path / "cifar-100-python" / "meta").is_file()


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz.*--download"):
        load_dataset("fc100", str(tmp_path))
    write_cifar100(tmp_path)
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"test lacks the key\(s\) \[b'fine_labels'"):
        load_dataset("cifar_fs", str(tmp_path))


def test_cifar_download_checks_md5_and_unpacks_safely(cifar_dir, tmp_path, monkeypatch):
    mirror = tar_gz(cifar_dir[0] / "cifar-100-python", tmp_path / "mirror.tar.gz")
    monkeypatch.setattr(cifar, "URL", f"file://{mirror}")
    with pytest.raises(OSError, match="has MD5 .* expected eb9058c3"):
        load_dataset("cifar_fs", str(tmp_path / "a"), download=True)
    assert not (tmp_path / "a" / "cifar-100-python.tar.gz").exists()
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(mirror.read_bytes()).hexdigest())
    data = load_dataset("fc100", str(tmp_path / "a"), download=True)
    assert data.split("test").num_classes == 20
    evil_file = tmp_path / "evil.txt"
    evil_file.write_text("x")
    evil = tar_gz(cifar_dir[0] / "cifar-100-python", tmp_path / "evil.tar.gz",
                  (evil_file, "../escaped.txt"))
    monkeypatch.setattr(cifar, "URL", f"file://{evil}")
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(evil.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="outside"):
        load_dataset("cifar_fs", str(tmp_path / "b"), download=True)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "b" / "cifar-100-python").exists()


def test_extract_archive_refuses_links_and_absolute_names(tmp_path):
    import io
    import zipfile

    from tfmeta.data.base import extract_archive

    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("cifar-100-python/meta")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="a link or special file"):
        extract_archive(str(link), str(tmp_path / "out"))
    absolute = tmp_path / "absolute.zip"
    with zipfile.ZipFile(absolute, "w") as z:
        z.writestr("ok.txt", b"fine")
        z.writestr(zipfile.ZipInfo("/tmp/absolute.txt"), b"x")
    with pytest.raises(ValueError, match="outside"):
        extract_archive(str(absolute), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "ok.txt").exists()  # names are checked before writing
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo("embeddings/a/b.pkl")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    written = extract_archive(str(plain), str(tmp_path / "out"), strip_prefix="embeddings/")
    assert written == [os.path.realpath(tmp_path / "out" / "a" / "b.pkl")]
    assert (tmp_path / "out" / "a" / "b.pkl").read_bytes() == b"abc"


# ------------------------------------------------------------------ input kinds
@pytest.mark.parametrize("algo, dataset, overrides, error", [
    ("leo", "mini_imagenet", [], None),
    ("leo", "tiered_imagenet", [], None),
    ("maml", "mini_imagenet", ["data.embeddings=center"], "takes images.*gives embeddings"),
    ("leo", "mini_imagenet", ["data.embeddings=None"], "takes embeddings.*gives images"),
])
def test_configs_and_input_kinds_are_checked_before_building(algo, dataset, overrides, error):
    from tfmeta.config import apply_overrides, get_config, validate_config

    config = apply_overrides(get_config(algo, dataset, "5w1s"), overrides)
    if error is None:
        validate_config(config)
    else:
        with pytest.raises(ValueError, match=error):
            validate_config(config)


IMAGE_LEARNERS = sorted(a for a in ALGORITHMS if "images" in recipe_of(a).input_kinds)


@pytest.mark.parametrize("dataset", ["mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100"])
@pytest.mark.parametrize("algo", IMAGE_LEARNERS)
def test_every_image_config_is_runnable_without_omniglot_settings(algo, dataset):
    from tfmeta.config import get_config, validate_config

    config = get_config(algo, dataset)
    validate_config(config)
    assert not config.data.get("train_on_val") and not config.data.get("rotate_train")
    assert config.augment.shift == config.augment.rotation == config.augment.scale == 0.0
    assert config.data.get("image_size") is None  # the files' size: 84 or 32


# ------------------------------------------------------------------ train and export
# Overrides for every learner: 2 steps, episodes the generated files can hold; each learner
# is shrunk by its own config's TINY (`tfmeta.config.tiny_overrides`).
TINY = ["num_steps=2", "checkpoint_every=2", "log_every=2", "val_episodes=2",
        "eval_meta_batch_size=2", "meta_batch_size=2", "queries=2", "eval_queries=2", "ways=5"]
TRAIN_SPLITS = {split: {f"n0{i}{split}": 4 for i in range(5)} for split in ("train", "val",
                                                                               "test")}


@pytest.fixture(scope="module")
def training_data(tmp_path_factory, cifar_dir):
    return {"mini_imagenet": write_mini_csv(tmp_path_factory.mktemp("mini_train"),
                                            splits=TRAIN_SPLITS),
            "cifar_fs": cifar_dir[0]}


# A run costs 20-65 s here (compile, 2 steps, validation, export), so the suite trains one
# gradient-based and one metric learner, each with the extra overrides that keep it short
# (every learner trains on a folder of images in tests/test_own_data_integration.py).
SLOW_PAIRS = [("maml", "mini_imagenet", ["learner.inner_steps=1"]),
              ("protonet", "cifar_fs", ["meta_batch_size=1"])]


@pytest.mark.slow
@pytest.mark.parametrize("algo, dataset, extra", SLOW_PAIRS)
def test_train_and_serve_raw_images(algo, dataset, extra, training_data, tmp_path):
    from tfmeta.config import apply_overrides, get_config, tiny_overrides
    from tfmeta.training.trainer import train

    config = apply_overrides(get_config(algo, dataset, "5w1s"),
                             TINY + tiny_overrides(algo) + extra)
    workdir = str(tmp_path / "run")
    learner = train(config, workdir, str(training_data[dataset]), verbose=0, export=True)
    data = load_dataset(dataset, str(training_data[dataset]))
    test = data.split("test")
    stored = np.stack([test.stored_examples(c)[:2] for c in range(5)])  # [5, 2, H, W, 3]
    support, query = stored[:, 0], stored[:, 1]
    served = tf.saved_model.load(os.path.join(workdir, "export")).signatures[
        "adapt_and_predict"](support_images=tf.constant(support.astype(np.float32) / 255),
                             support_labels=tf.range(5),
                             query_images=tf.constant(query.astype(np.float32) / 255))["logits"]
    assert served.shape == (5, 5) and np.all(np.isfinite(served)), served
    direct = learner.adapt_and_predict(test.transform(support), tf.range(5),
                                       test.transform(query))
    np.testing.assert_allclose(served, direct, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- issue 20, item 11
def test_a_split_file_naming_a_path_outside_images_is_refused(mini_csv_dir, tmp_path):
    """Before: a row `../secret.jpg` was read from outside --data_dir."""
    root = tmp_path / "mini"
    shutil.copytree(mini_csv_dir, root)
    rows = (root / "val.csv").read_text().splitlines()
    rows[2] = "../outside.jpg," + rows[2].split(",")[1]
    (root / "val.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"val.csv line 3 names '../outside.jpg', which is not "
                                         r"a file in images/"):
        load_dataset("mini_imagenet", str(root))


def test_a_class_in_two_split_files_is_refused(mini_csv_dir, tmp_path):
    """Before: a test.csv reusing a training class was read with no warning: a class leak
    between training and evaluation."""
    root = tmp_path / "mini"
    shutil.copytree(mini_csv_dir, root)
    train_wnid = next(iter(MINI_SPLITS["train"]))
    with open(root / "test.csv", "a", newline="") as f:
        csv.writer(f).writerow([f"{train_wnid}00000001.jpg", train_wnid])
    with pytest.raises(ValueError, match=f"Class '{train_wnid}' is in both the 'train' and the "
                                         "'test' split"):
        load_dataset("mini_imagenet", str(root))


def test_cifar_labels_outside_their_range_are_refused_with_a_count(tmp_path):
    """Before: fine labels outside 0..99 were dropped silently."""
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    with open(path, "rb") as f:
        raw = pickle.load(f)
    raw[b"fine_labels"][:3] = [100, 250, -1]
    with open(path, "wb") as f:
        pickle.dump(raw, f, protocol=2)
    with pytest.raises(ValueError, match=r"train has 3 fine label\(s\) outside 0..99"):
        load_dataset("cifar_fs", str(tmp_path))

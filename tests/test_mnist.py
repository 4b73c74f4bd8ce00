"""The MNIST loader on small files written in exactly the official mnist.npz format."""

import os

import numpy as np
import pytest

from tfmeta.data import load_dataset, mnist


def digit_images(digit: int, count: int, rng) -> np.ndarray:
    """uint8 `[count, 28, 28]`: a noisy bar whose row and length depend on the digit, so each
    digit is a distinct, learnable class."""
    images = rng.integers(0, 40, size=(count, 28, 28)).astype(np.uint8)
    row = 2 + 2 * digit
    images[:, row:row + 3, 4:10 + 2 * digit] = 255
    return images


def write_mnist_npz(path, train_per_digit=12, test_per_digit=6, seed=0) -> str:
    """Writes an mnist.npz with the official keys, dtypes and shapes (x uint8 [n, 28, 28],
    y uint8 [n]), digits interleaved as in the real file."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, count in (("train", train_per_digit), ("test", test_per_digit)):
        labels = np.tile(np.arange(10, dtype=np.uint8), count)
        images = np.zeros((len(labels), 28, 28), np.uint8)
        for digit in range(10):
            images[labels == digit] = digit_images(digit, count, rng)
        arrays[f"x_{part}"], arrays[f"y_{part}"] = images, labels
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def mnist_dir(tmp_path):
    write_mnist_npz(tmp_path / "mnist.npz")
    return str(tmp_path)


def test_generation_split_holds_out_nine(mnist_dir):
    dataset = load_dataset("mnist", mnist_dir)
    assert dataset.split("train").class_names == tuple(str(d) for d in range(9))
    assert dataset.split("val").class_names == ("9",) == dataset.split("test").class_names
    assert dataset.split("train").num_classes == 9
    assert dataset.raw_shape == (28, 28, 1) and dataset.input_shape == (28, 28, 1)
    # Test images are the test part's 9s, scaled to [0, 1].
    test = dataset.split("test").images
    assert test.shape == (6, 28, 28, 1) and test.dtype == np.float32
    assert test.min() >= 0.0 and test.max() == 1.0


def test_classification_split_has_disjoint_train_and_test_digits(mnist_dir):
    dataset = load_dataset("mnist", mnist_dir, split="classification")
    train = set(dataset.split("train").class_names)
    test = set(dataset.split("test").class_names)
    assert train == {"0", "1", "2", "3", "4"} and test == {"5", "6", "7", "8", "9"}
    assert dataset.split("val").class_names == dataset.split("test").class_names
    # Same classes, different images: validation from x_train, test from x_test.
    assert len(dataset.split("val").images) == 5 * 12 and len(dataset.split("test").images) == 5 * 6


def test_resize_and_max_per_class(mnist_dir):
    dataset = load_dataset("mnist", mnist_dir, image_size=14, max_per_class=3)
    assert dataset.input_shape == (14, 14, 1)
    assert list(dataset.split("train").class_counts) == [3] * 9


def test_missing_file_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist.npz") as error:
        mnist.load(str(tmp_path), tfds_dir=str(tmp_path / "no_tfds"))
    assert str(tmp_path) in str(error.value) and "--download" in str(error.value)


def test_download_from_file_url(tmp_path, monkeypatch):
    source = write_mnist_npz(tmp_path / "source.npz")
    monkeypatch.setattr(mnist, "URL", "file://" + os.path.abspath(source))
    dataset = mnist.load(str(tmp_path / "data"), download_missing=True)
    assert os.path.isfile(tmp_path / "data" / "mnist.npz")
    assert dataset.split("train").num_classes == 9


def test_wrong_keys_and_shapes_are_named(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="missing"):
        mnist.load(str(tmp_path))
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 32, 32), np.uint8),
             y_train=np.zeros(2, np.uint8), x_test=np.zeros((2, 28, 28), np.uint8),
             y_test=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=r"\(2, 32, 32\)"):
        mnist.load(str(tmp_path))


def test_a_missing_digit_is_an_error(tmp_path):
    path = write_mnist_npz(tmp_path / "mnist.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    keep = arrays["y_test"] != 9
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][keep], arrays["y_test"][keep]
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="Digit 9 has no images in x_test"):
        mnist.load(str(tmp_path))


def test_bad_options(mnist_dir):
    with pytest.raises(ValueError, match="'fewshot'"):
        mnist.load(mnist_dir, split="fewshot")
    with pytest.raises(ValueError, match="max_per_class"):
        mnist.load(mnist_dir, max_per_class=0)

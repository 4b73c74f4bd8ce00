"""Training-episode augmentation: the affine maps against hand-placed pixels, the random
draws' ranges and seeding, and that only training episodes are augmented."""

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.algorithms.prototypical import PrototypicalNetwork
from tfmeta.config import apply_overrides, get_config
from tfmeta.data import ClassImages, EpisodeShape, episode_dataset
from tfmeta.data.augment import RandomAffine, affine_transforms, transform_images
from tfmeta.episode_spec import DataSpec
from tfmeta.models import conv4


def warp(image, degrees=0.0, zoom=1.0, shift_x=0.0, shift_y=0.0):
    height, width = image.shape
    transforms = affine_transforms(tf.constant([degrees]), tf.constant([zoom]),
                                   tf.constant([shift_x]), tf.constant([shift_y]), height, width)
    return transform_images(tf.constant(image[None, :, :, None], tf.float32), transforms)[0, :, :, 0].numpy()


def test_affine_maps_move_pixels_where_worked_by_hand():
    image = np.zeros((9, 9), np.float32)
    image[4, 5] = 1.0  # one pixel, one right of the centre (4, 4)

    shifted = warp(image, shift_x=2.0, shift_y=-1.0)  # 2 right, 1 up
    assert shifted[3, 7] == pytest.approx(1.0) and shifted.sum() == pytest.approx(1.0)

    # Zoom 2 about the centre: output (x, y) reads input 4 + ((x, y) - 4) / 2, so x=6
    # reads the pixel's column, x=5 and x=7 halfway to it (0.5, bilinear); likewise rows
    # 3 and 5 read halfway between row 4 and its neighbours.
    zoomed = warp(image, zoom=2.0)
    expected = np.zeros((9, 9), np.float32)
    expected[3:6, 5:8] = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(zoomed, expected, atol=1e-6)

    rng = np.random.default_rng(0)
    letter = rng.uniform(size=(9, 9)).astype(np.float32)
    np.testing.assert_allclose(warp(letter, degrees=180.0), letter[::-1, ::-1], atol=1e-4)
    # +90 degrees turns the image a quarter counter-clockwise on screen, as np.rot90.
    np.testing.assert_allclose(warp(letter, degrees=90.0), np.rot90(letter), atol=1e-4)
    np.testing.assert_allclose(warp(letter), letter, atol=1e-6)


def centroids(images):
    ys, xs = np.mgrid[:images.shape[1], :images.shape[2]]
    mass = images[..., 0].sum(axis=(1, 2))
    return np.stack([(images[..., 0] * xs).sum(axis=(1, 2)) / mass,
                     (images[..., 0] * ys).sum(axis=(1, 2)) / mass], -1)


def test_random_affine_draws_per_image_within_range_and_by_seed():
    images = np.zeros((64, 28, 28, 1), np.float32)
    images[:, 12:16, 12:16] = 1.0  # a centred square
    augment = RandomAffine(shift=0.1)  # up to 2.8 pixels each way
    out = augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    moves = centroids(out) - centroids(images)
    assert np.abs(moves).max() <= 2.8 + 1e-3
    assert np.abs(moves).max() > 1.5 and len(np.unique(moves.round(3), axis=0)) == 64
    again = augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    other = augment(tf.constant(images), tf.constant([3, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)
    assert not np.allclose(out, other)
    # Rotation and scale about the centre keep the centre of mass of a centred square.
    turned = RandomAffine(rotation=30.0, scale=0.2)(tf.constant(images), tf.constant([1, 1], tf.int64))
    np.testing.assert_allclose(centroids(turned.numpy()), centroids(images), atol=1e-3)
    assert not np.allclose(turned.numpy(), images)
    assert RandomAffine()(images, None) is images  # nothing asked, nothing done


@pytest.mark.parametrize("kwargs, message", [
    ({"shift": -0.1}, r"augment.shift must be >= 0; got -0.1"),
    ({"scale": 1.0}, r"augment.scale must be < 1 .*got 1.0"),
    ({"fill_mode": "mirror"}, r"fill_mode must be one of .*'mirror'"),
])
def test_bad_augmentation_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomAffine(**kwargs)


def test_feature_vectors_refuse_image_augmentation():
    with pytest.raises(ValueError, match=r"examples have shape \(640,\)"):
        RandomAffine(shift=0.1)(tf.zeros([4, 640]), tf.constant([0, 0], tf.int64))


def test_only_training_episodes_are_augmented(omniglot):
    small = ["ways=5", "val_episodes=4", "eval_meta_batch_size=4"]
    config = apply_overrides(get_config("protonet", "omniglot"),
                             small + ["augment.shift=0.1", "augment.rotation=15.0"])
    plain = apply_overrides(get_config("protonet", "omniglot"), small)
    learner = PrototypicalNetwork(conv4(omniglot.input_shape, filters=8))
    (train, val), (plain_train, plain_val) = (
        learner.training_episodes(omniglot, DataSpec.from_config(config)),
        learner.training_episodes(omniglot, DataSpec.from_config(plain)))
    augmented, original = next(iter(train)), next(iter(plain_train))
    # The same episode (classes, examples, labels), each image transformed on its own.
    np.testing.assert_array_equal(augmented["query_labels"], original["query_labels"])
    differences = np.abs(augmented["support_images"] - original["support_images"]).mean(axis=(2, 3, 4))
    assert (differences > 0.01).all(), differences
    np.testing.assert_allclose(augmented["support_images"].numpy().mean(),
                               original["support_images"].numpy().mean(), rtol=0.15)
    for a, b in zip(val, plain_val):
        np.testing.assert_array_equal(a["query_images"], b["query_images"])


def test_sampler_applies_the_function_it_is_given():
    classes = ClassImages.from_dense(np.arange(3 * 4 * 2 * 2, dtype=np.float32).reshape(3, 4, 2, 2, 1))
    plain = next(iter(episode_dataset(classes, EpisodeShape(3, 1, 2), seed=5)))
    doubled = next(iter(episode_dataset(classes, EpisodeShape(3, 1, 2), seed=5,
                                        augment=lambda x, seed: 2 * x)))
    np.testing.assert_array_equal(doubled["support_images"], 2 * plain["support_images"])
    np.testing.assert_array_equal(doubled["query_images"], 2 * plain["query_images"])

"""The in-graph episode sampler: shapes, sampling without replacement, permuted labels,
reproducibility, and errors for specs the data cannot satisfy."""

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.data import ClassImages, EpisodeShape, episode_dataset


def numbered_classes(num_classes=12, per_class=7, ragged=False):
    """Each example's value encodes (class, index) so episodes can be decoded exactly."""
    per = []
    for c in range(num_classes):
        count = per_class + (c % 3 if ragged else 0)
        per.append(np.array([[c * 100 + i] for i in range(count)], np.float32))
    return ClassImages.from_lists(per, [f"class{c}" for c in range(num_classes)])


def decode(values):
    values = np.asarray(values).reshape(-1).astype(int)
    return values // 100, values % 100


@pytest.mark.parametrize("ragged", [False, True])
def test_episode_structure_and_no_replacement(ragged):
    classes = numbered_classes(ragged=ragged)
    ways, shots, queries = 5, 2, 3
    for episode in episode_dataset(classes, EpisodeShape(ways, shots, queries), seed=3).take(50):
        s_cls, s_idx = decode(episode["support_images"])
        q_cls, q_idx = decode(episode["query_images"])
        assert episode["support_images"].shape == (ways * shots, 1)
        assert episode["query_images"].shape == (ways * queries, 1)
        np.testing.assert_array_equal(episode["support_labels"], np.repeat(np.arange(ways), shots))
        np.testing.assert_array_equal(episode["query_labels"], np.repeat(np.arange(ways), queries))
        # Each label maps to exactly one class, and different labels to different classes.
        label_to_class = {}
        for label, cls in zip(np.concatenate([episode["support_labels"], episode["query_labels"]]),
                              np.concatenate([s_cls, q_cls])):
            assert label_to_class.setdefault(int(label), int(cls)) == cls
        assert len(set(label_to_class.values())) == ways
        # No example twice within an episode (support and query disjoint).
        pairs = list(zip(np.concatenate([s_cls, q_cls]), np.concatenate([s_idx, q_idx])))
        assert len(set(pairs)) == len(pairs)
        # Indices stay inside each class's own examples.
        for cls, idx in pairs:
            assert idx < classes.class_counts[cls]


def test_labels_are_permuted_across_episodes():
    classes = numbered_classes()
    first_class_of_label0 = set()
    for episode in episode_dataset(classes, EpisodeShape(5, 1, 1), seed=0).take(40):
        first_class_of_label0.add(int(decode(episode["support_images"])[0][0]))
    assert len(first_class_of_label0) > 5


def test_every_class_and_example_gets_drawn():
    classes = numbered_classes(num_classes=6, per_class=5)
    seen = set()
    for episode in episode_dataset(classes, EpisodeShape(3, 1, 1), seed=1).take(300):
        seen.update(zip(*decode(episode["support_images"])))
    assert len(seen) == 30


def test_seed_makes_it_reproducible():
    classes = numbered_classes()

    def take(seed):
        ds = episode_dataset(classes, EpisodeShape(5, 1, 2), meta_batch_size=4, seed=seed)
        return [b["support_images"].numpy() for b in ds.take(3)]

    np.testing.assert_array_equal(np.stack(take(7)), np.stack(take(7)))
    assert not np.array_equal(np.stack(take(7)), np.stack(take(8)))


def test_meta_batches_and_finite_streams():
    classes = numbered_classes()
    batches = list(episode_dataset(classes, EpisodeShape(4, 1, 2), meta_batch_size=3,
                                   num_episodes=10))
    assert len(batches) == 3  # 10 episodes -> 3 whole meta-batches of 3
    assert batches[0]["support_images"].shape == (3, 4, 1)
    assert batches[0]["query_labels"].shape == (3, 8)


def test_more_ways_than_classes_is_a_clear_error():
    with pytest.raises(ValueError, match=r"ways=13 is larger than the 12 classes available in "
                                         r"the 'test' split"):
        episode_dataset(numbered_classes(), EpisodeShape(13, 1, 1), split="test")


def test_more_shots_and_queries_than_examples_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shots \+ queries = 5 \+ 3 = 8 is more than the 7 "
                                         r"examples of class 'class0'"):
        episode_dataset(numbered_classes(), EpisodeShape(5, 5, 3))


def test_non_positive_spec_is_an_error():
    with pytest.raises(ValueError, match="shots must be a positive integer; got 0"):
        episode_dataset(numbered_classes(), EpisodeShape(5, 0, 3))


def test_the_old_ways_shots_queries_arguments_are_refused():
    """`episode_dataset` takes an `EpisodeShape`; counts in its place are a TypeError naming
    it, not episodes of some other shape."""
    with pytest.raises(TypeError, match=r"EpisodeShape\(ways=5, shots=1, queries=15\)"):
        episode_dataset(numbered_classes(), 5, 1, 1)


def test_empty_class_is_an_error():
    with pytest.raises(ValueError, match="Class 'b' has no examples"):
        ClassImages.from_lists([np.zeros((2, 1)), np.zeros((0, 1))], ["a", "b"])


def test_stored_examples_are_transformed_in_the_sampler_and_on_request():
    # uint8 "pixels" stored; the transform maps them to float inputs x / 255 * 2.
    stored = np.arange(3 * 4 * 2, dtype=np.uint8).reshape(3, 4, 2, 1) * 10
    transform = lambda x: tf.cast(x, tf.float32) / 255.0 * 2.0  # noqa: E731
    classes = ClassImages.from_dense(stored, transform=transform)
    assert classes.images.dtype == np.uint8 and classes.example_shape == (2, 1)
    episode = next(iter(episode_dataset(classes, EpisodeShape(3, 1, 1), seed=0)))
    assert episode["support_images"].dtype == tf.float32
    # Every sampled input is the transform of some stored example.
    allowed = {round(float(v), 5) for v in (stored.reshape(-1) / 255.0 * 2.0)}
    assert {round(float(v), 5) for v in episode["support_images"].numpy().reshape(-1)} <= allowed
    np.testing.assert_allclose(classes.class_examples(1), stored[1] / 255.0 * 2.0, rtol=1e-6)
    assert classes.select([2]).images.dtype == np.uint8  # selection keeps the stored form


def test_large_stored_arrays_are_read_from_a_variable(monkeypatch):
    from tfmeta.data import episodes

    monkeypatch.setattr(episodes, "CONSTANT_LIMIT_BYTES", 10)
    classes = ClassImages.from_dense(np.ones((3, 4, 2), np.float32))
    assert isinstance(episodes.stored_tensor(classes.images), tf.Variable)
    batch = next(iter(episode_dataset(classes, EpisodeShape(2, 1, 1), meta_batch_size=2, seed=0)))
    assert float(tf.reduce_mean(batch["support_images"])) == 1.0

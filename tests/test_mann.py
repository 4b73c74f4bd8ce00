"""MANN: label offset, LRUA memory arithmetic, instance numbering, the contract."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta.algorithms.mann import MANN, LRUAMemory, instance_numbers
from tfmeta.models import conv4


def pixel_mann(ways=3, **kwargs):
    keras.utils.set_random_seed(0)
    return MANN(None, num_classes=ways, input_shape=(2, 2, 1), units=8, memory_slots=6,
                slot_size=4, heads=2, **kwargs)


def toy_episode(labels, seed=0):
    n, rng = len(labels), np.random.default_rng(seed)
    return {"support_images": tf.constant(rng.uniform(size=(1, n, 2, 2, 1)), tf.float32),
            "support_labels": tf.constant([labels], tf.int32),
            "query_images": tf.constant(rng.uniform(size=(1, 2, 2, 2, 1)), tf.float32)}


def test_label_of_step_t_is_seen_from_step_t_plus_one():
    learner = pixel_mann()
    episode = toy_episode([0, 1, 2, 0])
    support, query, order = learner.sequence_logits(episode)
    # Change the label of the support example shown at time step 2 (the evaluation order
    # depends on the images only).
    step2 = int(order[0, 2])
    labels = episode["support_labels"].numpy().copy()
    labels[0, step2] = (labels[0, step2] + 1) % 3
    support2, query2, _ = learner.sequence_logits(dict(episode, support_labels=labels))
    np.testing.assert_allclose(support[:, :3], support2[:, :3], atol=1e-6)  # steps 0..2
    assert not np.allclose(support[:, 3], support2[:, 3])                  # step 3 sees it
    # The last step's label reaches the queries (their label input), the others' too.
    last = int(order[0, -1])
    labels = episode["support_labels"].numpy().copy()
    labels[0, last] = (labels[0, last] + 1) % 3
    support3, query3, _ = learner.sequence_logits(dict(episode, support_labels=labels))
    np.testing.assert_allclose(support, support3, atol=1e-6)
    assert not np.allclose(query, query3)


def test_queries_are_independent_of_each_other():
    learner = pixel_mann()
    episode = toy_episode([0, 1, 2])
    _, query, _ = learner.sequence_logits(episode)
    one = dict(episode, query_images=episode["query_images"][:, :1])
    np.testing.assert_allclose(learner.sequence_logits(one)[1], query[:, :1], atol=1e-6)


@pytest.mark.parametrize("write_key, key_strength", [(True, False), (False, False),
                                                      (False, True)])
def test_lrua_write_goes_to_least_used_slots_and_read_is_cosine_softmax(write_key, key_strength):
    memory = LRUAMemory(input_dim=3, units=4, memory_slots=3, slot_size=2, heads=1, gamma=0.5,
                        write_key=write_key, key_strength=key_strength)
    h, c, m, read_w, usage, reads = memory.initial_state(1)
    usage = tf.constant([[0.7, 0.2, 0.9]])          # slot 1 is the least used
    m = tf.constant([[[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]]])
    read_w = tf.constant([[[1.0, 0.0, 0.0]]])        # previous read: slot 0
    memory.alpha_layer.kernel.assign(np.zeros((4, 1)))
    memory.alpha_layer.bias.assign([0.0])             # sigmoid(0) = 0.5
    if key_strength:
        memory.strength_layer.kernel.assign(np.zeros((4, 1)))
        memory.strength_layer.bias.assign([np.log(np.e - 1.0)])  # 1 + softplus = 2
    _, (h, _, new_m, new_read, new_usage, new_reads) = memory.step(
        tf.constant([[1.0, 0.0, 0.0]]), (h, c, m, read_w, usage, reads))
    key = tf.reshape(memory.key_layer(h), [2]).numpy()
    # The paper writes the key; by default a separate add vector tanh(W_a h) is written.
    written = key if write_key else tf.reshape(memory.add_layer(h), [2]).numpy()
    assert write_key or not np.allclose(written, key)
    # The least-used slot 1 is erased, then w_w = 0.5 * [1, 0, 0] + 0.5 * [0, 1, 0]:
    expected_m = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    expected_m[0] += 0.5 * written
    expected_m[1] += 0.5 * written
    np.testing.assert_allclose(new_m[0], expected_m, atol=1e-6)
    unit = lambda v: v / max(np.linalg.norm(v), 1e-12)  # noqa: E731
    cos = np.array([unit(key) @ unit(row) for row in expected_m])
    strength = 2.0 if key_strength else 1.0
    expected_read = np.exp(strength * cos) / np.exp(strength * cos).sum()
    np.testing.assert_allclose(new_read[0, 0], expected_read, atol=1e-5)
    np.testing.assert_allclose(new_reads[0], expected_read @ expected_m, atol=1e-5)
    # usage = gamma * usage + w_r + w_w
    np.testing.assert_allclose(new_usage[0], 0.5 * np.array([0.7, 0.2, 0.9]) + expected_read
                               + np.array([0.5, 0.5, 0.0]), atol=1e-5)


def test_instance_numbers():
    np.testing.assert_array_equal(instance_numbers([[2, 0, 2, 2, 0]]), [[1, 1, 2, 3, 2]])


class TestMANNContract(ClassifierContract):
    dataset_fixture = "omniglot_small"
    learning_rate = 3e-3

    def make_learner(self, input_shape, ways):
        return MANN(conv4(input_shape, filters=8, num_blocks=3), num_classes=ways, units=32,
                    memory_slots=16, slot_size=16, heads=2)

"""LSTM meta-learner: preprocessing, one hand-computed cell-state update, the contract."""

import math

import keras
import numpy as np
import tensorflow as tf

from tests.learner_contract import ClassifierContract
from tfmeta import weights
from tfmeta.algorithms.lstm_meta import LSTMMetaLearner, preprocess_gradients
from tfmeta.models import conv4


def test_preprocess_gradients_matches_the_formula():
    # p = 10, threshold e^-10 = 4.54e-5. |x| >= it: (log|x| / 10, sign x); else (-1, e^10 x).
    got = preprocess_gradients(tf.constant([1.0, -math.e, 1e-3, 1e-6, -1e-6, 0.0])).numpy()
    expected = [[0.0, 1.0], [0.1, -1.0], [math.log(1e-3) / 10, 1.0],
                [-1.0, math.exp(10) * 1e-6], [-1.0, -math.exp(10) * 1e-6], [-1.0, 0.0]]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def linear_learner(hidden_units=0):
    inputs = keras.Input((2,))
    outputs = keras.layers.Dense(2, kernel_initializer="zeros", name="head")(inputs)
    return LSTMMetaLearner(keras.Model(inputs, outputs), inner_steps=1, inner_steps_test=1,
                           hidden_units=hidden_units)


def test_one_meta_lstm_step_by_hand():
    learner = linear_learner(hidden_units=0)
    # Gates from [grad(2), loss(2), theta, previous gate]: only theta and the bias count here.
    learner.forget_kernel.assign([[0.0], [0.0], [0.0], [0.0], [1.0], [0.0]])
    learner.forget_bias.assign([0.0])
    learner.input_kernel.assign(np.zeros((6, 1)))
    learner.input_bias.assign([math.log(0.5 / 0.5)])  # sigmoid(0) = 0.5
    learner.backbone.get_layer("head").kernel.assign([[1.0, 0.0], [0.0, 0.0]])
    params = weights.values(learner.params)
    fast = learner.adapt(params, [], tf.constant([[1.0, 2.0]]), tf.constant([0]), steps=1)
    # theta = [W (1, 0, 0, 0), b (0, 0)]. Logits for x = [1, 2]: [1, 0];
    # p = softmax = [e/(e+1), 1/(e+1)]; dL/dlogits = p - [1, 0] = [-q, q], q = 1/(e+1).
    # grad W = x^T [-q, q] = [[-q, q], [-2q, 2q]], grad b = [-q, q].
    # f = sigmoid(theta), i = 0.5, theta' = f * theta - 0.5 * grad.
    q = 1 / (math.e + 1)
    theta = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    grad = np.array([-q, q, -2 * q, 2 * q, -q, q])
    expected = theta / (1 + np.exp(-theta)) - 0.5 * grad
    np.testing.assert_allclose(weights.flatten(fast).numpy(), expected, rtol=1e-5)


def test_gradient_inputs_are_constants_but_theta_path_is_differentiable():
    learner = linear_learner(hidden_units=4)
    images, labels = tf.constant([[1.0, 2.0]]), tf.constant([0])
    with tf.GradientTape() as tape:
        fast = learner.adapt(weights.values(learner.params), [], images, labels, steps=2)
        loss = tf.reduce_sum(weights.flatten(fast))
    grads = tape.gradient(loss, learner.trainable_variables)
    by_id = {id(v): g for v, g in zip(learner.trainable_variables, grads)}
    assert by_id[id(learner.forget_kernel)] is not None
    assert by_id[id(learner.input_bias)] is not None
    # d theta_T / d theta_0 ~ prod f (the gradient term is a constant; the gates' own
    # theta inputs have weights of at most 0.01): positive, near 1 with f ~ sigmoid(5).
    kernel_grad = by_id[id(learner.backbone.get_layer("head").kernel)].numpy()
    assert np.all(kernel_grad > 0.9) and np.all(kernel_grad < 1.1), kernel_grad


class TestLSTMMetaContract(ClassifierContract):
    dataset_fixture = "omniglot_small"
    learning_rate = 3e-3

    def make_learner(self, input_shape, ways):
        return LSTMMetaLearner(conv4(input_shape, num_classes=ways, filters=8, num_blocks=3),
                               inner_steps=2, inner_steps_test=2, hidden_units=8)

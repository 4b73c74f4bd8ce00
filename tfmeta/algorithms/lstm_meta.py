"""The LSTM meta-learner: optimization as a model for few-shot learning
(Ravi and Larochelle, ICLR 2017). https://openreview.net/forum?id=rJY0-Kcll

A learned update rule. The learner's parameters are the cell state of an LSTM
whose gates are computed, coordinate by coordinate, from the learner's gradient
and loss; the cell state's initial value is the learner's meta-learned initial
parameters (paper eqs. 2-3, Algorithm 1):

    theta = theta_0                                   # c_0, meta-learned
    i = f = 0
    for t in range(inner_steps):
        loss, grad = L(theta, support), dL/dtheta(theta, support)   # no second derivatives
        x = lstm_1(preprocess(grad), preprocess(loss))  # first layer: a plain LSTM, [P, hidden]
        f = sigmoid(W_F @ [x, theta, f] + b_F)          # forget gate: shrink theta (weight decay)
        i = sigmoid(W_I @ [x, theta, i] + b_I)          # input gate: the learning rate
        theta = f * theta - i * grad                    # the cell-state update
    meta_loss = L(theta, query)

All P coordinates of theta share the meta-learner's parameters (coordinates are a
batch of P rows), as in the paper's section 3.2. Gradient and loss are preprocessed
as Andrychowicz et al. 2016 (appendix A), with p = 10:

    preprocess(x) = (log(|x|) / p, sign(x))   if |x| >= exp(-p)
                    (-1, exp(p) * x)           otherwise

The gradient and loss inputs are constants to the meta-gradient (the paper drops
those second derivatives); the meta-gradient flows through theta's recurrence.

Batch norm: the learner always normalizes with the statistics of the batch it sees,
at meta-test time too (the paper's transductive choice, section 3.3 and appendix);
moving averages are never used or updated.

The task loop (one `tf.while_loop` over the meta-batch) is `TaskLoopLearner`'s, shared
with MAML; this learner's `adapt` (the inner loop) is the LSTM instead of gradient descent.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.task_loop import TaskLoopLearner, TaskLoopRecipe
from tfmeta.ranges import NON_NEGATIVE_INT, POSITIVE


def preprocess_gradients(x, p: float = 10.0):
    """Andrychowicz et al.'s preprocessing: `[...]` -> `[..., 2]`, see the module docstring."""
    x = tf.convert_to_tensor(x, tf.float32)
    big = tf.abs(x) >= math.exp(-p)
    log_part = tf.math.log(tf.maximum(tf.abs(x), math.exp(-p))) / p
    first = tf.where(big, log_part, -tf.ones_like(x))
    second = tf.where(big, tf.sign(x), math.exp(p) * x)
    return tf.stack([first, second], axis=-1)


class LSTMMetaLearner(TaskLoopLearner):
    """Ravi and Larochelle's meta-learner LSTM around a Keras classifier (the learner).

    Example:

        learner = LSTMMetaLearner(tfmeta.models.conv4((28, 28, 1), num_classes=5, filters=32),
                                  inner_steps=5)
        learner.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=0.25))

    Args:
      backbone: a built Keras classifier; its trainable parameters are the cell state.
      inner_steps: LSTM updates of the learner while meta-training (T).
      inner_steps_test: updates at meta-test time.
      hidden_units: units of the first (plain) LSTM layer; 0 feeds the preprocessed
        gradient and loss to the gates directly.
      preprocess_p: p of the gradient preprocessing.
    """

    argument_ranges = {"hidden_units": NON_NEGATIVE_INT, "preprocess_p": POSITIVE}
    vectorizable = False  # the meta-LSTM reads one task's parameters as one vector

    def __init__(self, backbone: keras.Model, inner_steps: int = 5, inner_steps_test: int = 5,
                 hidden_units: int = 20, preprocess_p: float = 10.0, **kwargs):
        self.check_arguments({"hidden_units": hidden_units, "preprocess_p": preprocess_p})
        super().__init__(backbone, inner_steps=inner_steps, inner_steps_test=inner_steps_test,
                         batch_norm="batch_stats", **kwargs)
        self.hidden_units = int(hidden_units)
        self.preprocess_p = float(preprocess_p)
        if self.hidden_units:
            self.lstm = keras.layers.LSTMCell(self.hidden_units, name="lstm_1")
            self.lstm.build((None, 4))
        features = (self.hidden_units or 4) + 2  # [x, theta, previous gate]
        small = keras.initializers.RandomUniform(-0.01, 0.01)
        # Initial gates as the paper's code: forget ~ 1 (keep theta), input ~ 0.01 (a small rate).
        self.forget_kernel = self.add_weight(shape=(features, 1), initializer=small, name="W_F")
        self.forget_bias = self.add_weight(shape=(1,), name="b_F",
                                           initializer=keras.initializers.RandomUniform(4.0, 6.0))
        self.input_kernel = self.add_weight(shape=(features, 1), initializer=small, name="W_I")
        self.input_bias = self.add_weight(shape=(1,), name="b_I",
                                          initializer=keras.initializers.RandomUniform(-5.0, -4.0))

    def learner_gradient(self, params, state, images, labels):
        """(loss, flat gradient `[P]`) of the learner on a support set, both constants."""
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits, _ = self.forward(params, state, images, training=True)
            loss = self.loss_fn(labels, logits)
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.stop_gradient(loss), tf.stop_gradient(weights.flatten(grads))

    def meta_lstm_step(self, theta, grad, loss, lstm_state, forget, input_gate):
        """One update of the cell state. theta, grad, forget, input_gate: `[P, 1]`; loss: `[]`.

        Returns (theta, lstm_state, forget, input_gate) after the step.
        """
        grad_in = preprocess_gradients(grad[:, 0], self.preprocess_p)           # [P, 2]
        loss_in = tf.broadcast_to(preprocess_gradients(loss, self.preprocess_p), tf.shape(grad_in))
        x = tf.concat([grad_in, loss_in], axis=-1)                              # [P, 4]
        if self.hidden_units:
            x, lstm_state = self.lstm(x, lstm_state)                             # [P, hidden]
        forget = tf.sigmoid(tf.concat([x, theta, forget], -1) @ self.forget_kernel
                            + self.forget_bias)
        input_gate = tf.sigmoid(tf.concat([x, theta, input_gate], -1) @ self.input_kernel
                                + self.input_bias)
        return forget * theta - input_gate * grad, lstm_state, forget, input_gate

    def adapt(self, params, state, support_images, support_labels, steps, training=True):
        """The inner loop: `steps` meta-LSTM updates of the learner's parameters `params`."""
        del training  # batch statistics always; gradient inputs always constant
        params = list(params)
        theta = weights.flatten(params)[:, None]                                 # [P, 1]
        coordinates = tf.shape(theta)[0]
        zeros = tf.zeros([coordinates, self.hidden_units])
        lstm_state = [zeros, zeros]
        forget = input_gate = tf.zeros_like(theta)
        for _ in range(steps):
            loss, grad = self.learner_gradient(params, state, support_images, support_labels)
            theta, lstm_state, forget, input_gate = self.meta_lstm_step(
                theta, grad[:, None], loss, lstm_state, forget, input_gate)
            params = weights.unflatten(theta[:, 0], params)
        return params


class LSTMMetaRecipe(TaskLoopRecipe):
    fixed_arguments = ("batch_norm",)  # batch statistics always


RECIPE = LSTMMetaRecipe(LSTMMetaLearner)

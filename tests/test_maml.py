"""MAML's math on tiny models: hand-computed inner steps, second order against an
explicitly unrolled computation, first order, untouched variables, batch-norm policy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms import MAML
from tfmeta.algorithms.maml_regression import MAMLRegression
from tfmeta.models import conv4


def linear_model(inputs=2, outputs=2, kernel=None, bias=None):
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(outputs)])
    if kernel is not None:
        model.layers[0].kernel.assign(np.asarray(kernel, np.float32))
        model.layers[0].bias.assign(np.asarray(bias, np.float32))
    return model


def test_one_inner_step_matches_hand_computation():
    # Dense(2) with W = 0, b = 0 and one support example x = (1, 2) of class 0:
    #   logits = xW + b = (0, 0), softmax p = (0.5, 0.5), one-hot y = (1, 0)
    #   dL/dlogits = p - y = (-0.5, 0.5)
    #   dL/dW = x^T (p - y) = [[-0.5, 0.5], [-1.0, 1.0]],  dL/db = (-0.5, 0.5)
    # With inner_lr = 0.1:  W' = -0.1 * dL/dW = [[0.05, -0.05], [0.1, -0.1]],  b' = (0.05, -0.05)
    maml = MAML(linear_model(kernel=np.zeros((2, 2)), bias=np.zeros(2)), inner_lr=0.1)
    fast = maml.adapt(weights.values(maml.params), [], tf.constant([[1.0, 2.0]]),
                      tf.constant([0]), steps=1)
    np.testing.assert_allclose(fast[0].numpy(), [[0.05, -0.05], [0.1, -0.1]], atol=1e-7)
    np.testing.assert_allclose(fast[1].numpy(), [0.05, -0.05], atol=1e-7)


def test_two_inner_steps_match_hand_computation():
    # Continuing from W', b' above: logits = x W' + b' = (0.05 + 0.2 + 0.05, -0.3) = (0.3, -0.3)
    #   p = softmax(0.3, -0.3) = (s, 1 - s) with s = 1 / (1 + e^-0.6)
    #   dL/dlogits = (s - 1, 1 - s); W'' = W' - 0.1 * x^T (s - 1, 1 - s), b'' likewise.
    s = 1 / (1 + np.exp(-0.6))
    g = np.array([s - 1, 1 - s])
    expected_kernel = np.array([[0.05, -0.05], [0.1, -0.1]]) - 0.1 * np.outer([1.0, 2.0], g)
    expected_bias = np.array([0.05, -0.05]) - 0.1 * g
    maml = MAML(linear_model(kernel=np.zeros((2, 2)), bias=np.zeros(2)), inner_lr=0.1)
    fast = maml.adapt(weights.values(maml.params), [], tf.constant([[1.0, 2.0]]),
                      tf.constant([0]), steps=2)
    np.testing.assert_allclose(fast[0].numpy(), expected_kernel, atol=1e-6)
    np.testing.assert_allclose(fast[1].numpy(), expected_bias, atol=1e-6)


def tiny_meta_batch(seed=0, tasks=3, ways=3, dim=4):
    rng = np.random.default_rng(seed)
    return {
        "support_images": tf.constant(rng.normal(size=(tasks, ways * 2, dim)), tf.float32),
        "support_labels": tf.constant(np.tile(np.repeat(np.arange(ways), 2), (tasks, 1)), tf.int32),
        "query_images": tf.constant(rng.normal(size=(tasks, ways, dim)), tf.float32),
        "query_labels": tf.constant(np.tile(np.arange(ways), (tasks, 1)), tf.int32),
    }


def unrolled_meta_gradient(kernel, bias, batch, inner_lr, first_order):
    """The meta-gradient written out by hand for a linear softmax classifier.

    The inner gradient of the mean cross-entropy is closed-form,
        dL/dW = X^T (softmax(XW + b) - Y) / n,   dL/db = sum_rows(softmax(XW + b) - Y) / n,
    so the adapted weights are an explicit function of (W, b) and a single tape
    differentiates the whole unrolled computation (second order included) without
    nested tapes. For first order the inner gradient is a constant.
    """
    W, b = tf.Variable(kernel), tf.Variable(bias)
    ways = kernel.shape[1]
    with tf.GradientTape() as tape:
        losses = []
        for t in range(batch["support_images"].shape[0]):
            xs, ys = batch["support_images"][t], tf.one_hot(batch["support_labels"][t], ways)
            n = tf.cast(tf.shape(xs)[0], tf.float32)
            residual = tf.nn.softmax(xs @ W + b) - ys
            grad_W, grad_b = tf.transpose(xs) @ residual / n, tf.reduce_sum(residual, 0) / n
            if first_order:
                grad_W, grad_b = tf.stop_gradient(grad_W), tf.stop_gradient(grad_b)
            W1, b1 = W - inner_lr * grad_W, b - inner_lr * grad_b
            query_logits = batch["query_images"][t] @ W1 + b1
            losses.append(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                batch["query_labels"][t], query_logits)))
        loss = tf.add_n(losses) / len(losses)
    return [g.numpy() for g in tape.gradient(loss, [W, b])]


def linear_problem():
    """(kernel [4, 3], bias [3], meta-batch) of the unrolled-gradient tests."""
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    return kernel, bias, tiny_meta_batch()


def assert_unrolled(grads, kernel, bias, batch, first_order, message=""):
    """Meta-gradients equal `unrolled_meta_gradient` at inner rate 0.5, one step."""
    expected = unrolled_meta_gradient(kernel, bias, batch, 0.5, first_order)
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6, err_msg=message)


@pytest.mark.parametrize("form", ["loop", "vectorized", "xla"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_unrolled_computation(first_order, form):
    """In each form of the task loop: the tf.while_loop, every task in one pass, and the
    loop unrolled and compiled by XLA."""
    kernel, bias, batch = linear_problem()
    maml = MAML(linear_model(4, 3, kernel, bias), inner_lr=0.5, inner_steps=1,
                first_order=first_order, task_parallel="vectorized" if form == "vectorized"
                else "loop")
    maml.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=form == "xla")
    assert maml.vectorized == (form == "vectorized")
    if form == "loop":
        grads, _, _ = maml.compute_meta_gradients(batch)
    else:
        grads, _, _ = tf.function(maml.compute_meta_gradients,
                                  jit_compile=form == "xla")(batch)
    assert_unrolled(grads, kernel, bias, batch, first_order)


def test_second_order_differs_from_first_order():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    batch = tiny_meta_batch()
    second = unrolled_meta_gradient(kernel, bias, batch, 0.5, first_order=False)
    first = unrolled_meta_gradient(kernel, bias, batch, 0.5, first_order=True)
    assert np.abs(second[0] - first[0]).max() > 1e-2


def test_compiled_meta_gradient_equals_eager():
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    batch = tiny_meta_batch(seed=3)
    maml = MAML(linear_model(4, 3, kernel, bias), inner_lr=0.3, inner_steps=2)
    maml.compile(optimizer=keras.optimizers.SGD(0.0))
    eager, _, _ = maml.compute_meta_gradients(batch)
    graph, _, _ = tf.function(maml.compute_meta_gradients)(batch)
    for a, b in zip(eager, graph):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.fixture
def conv_batch(omniglot):
    from tfmeta.data import EpisodeShape, episode_dataset

    return next(iter(episode_dataset(omniglot.split("train"), EpisodeShape(5, 1, 2), 4, seed=0)))


def test_inner_loop_leaves_variables_untouched(conv_batch):
    maml = MAML(conv4((28, 28, 1), num_classes=5, filters=8), inner_lr=0.4, inner_steps=2,
                inner_steps_test=3)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [v.numpy().copy() for v in maml.backbone.variables]
    maml.query_logits(conv_batch, training=True)
    maml.query_logits(conv_batch, training=False)
    maml.compute_meta_gradients(conv_batch)
    for value, variable in zip(before, maml.backbone.variables):
        np.testing.assert_array_equal(value, variable.numpy(), err_msg=variable.path)


def test_train_step_updates_weights(conv_batch):
    maml = MAML(conv4((28, 28, 1), num_classes=5, filters=8))
    maml.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = maml.backbone.layers[1].kernel.numpy().copy()
    maml.train_on_batch(conv_batch)
    assert np.abs(maml.backbone.layers[1].kernel.numpy() - before).max() > 0


def moving_mean(maml):
    return next(v for v in maml.backbone.non_trainable_variables if "moving_mean" in v.path).numpy()


def test_batch_norm_batch_stats_never_touches_moving_averages(conv_batch):
    maml = MAML(conv4((28, 28, 1), num_classes=5, filters=8), batch_norm="batch_stats")
    maml.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = moving_mean(maml).copy()
    maml.train_on_batch(conv_batch)
    np.testing.assert_array_equal(moving_mean(maml), before)


def test_batch_norm_running_stats_updates_averages_and_is_not_transductive(conv_batch):
    maml = MAML(conv4((28, 28, 1), num_classes=5, filters=8), batch_norm="running_stats",
                inner_steps_test=1)
    maml.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = moving_mean(maml).copy()
    maml.train_on_batch(conv_batch)
    assert np.abs(moving_mean(maml) - before).max() > 0
    # With moving averages, a query's logits do not depend on the other queries.
    one = dict(conv_batch, query_images=conv_batch["query_images"][:, :1])
    alone = maml.query_logits(one, training=False)[:, 0]
    together = maml.query_logits(conv_batch, training=False)[:, 0]
    np.testing.assert_allclose(alone.numpy(), together.numpy(), rtol=1e-4, atol=1e-5)


def test_meta_test_adapts_on_support_statistics_and_predicts_on_moving_averages():
    """By hand. Dense(1, no bias, w = 1) -> BatchNormalization (mean 0, variance 1, eps
    1e-3, no scale or offset: w is the only parameter); MSE, inner rate 0.1, one step; support x = (1, 3), y = (0, 0);
    query x = 2.

    Support normalized by its own statistics: h = w x has mean 2w and variance w^2, so the
    output (x - 2) w / sqrt(w^2 + eps) barely depends on w:
        dL/dw = 2 w eps / (w^2 + eps)^2 = 0.0019960,   w' = 1 - 0.1 * dL/dw = 0.9998004
    The query pass uses the moving averages, untouched by the support pass at test time:
        prediction = 2 w' / sqrt(1 + eps) = 1.998602
    (Stepping on the moving averages instead: dL/dw = mean(2 w x^2 / (1 + eps)) = 9.99,
    w' = 0.001, prediction 0.002; the support's statistics folded into the averages
    (momentum 0.99: mean 0.02, variance 1) would give (2 w' - 0.02) / sqrt(1 + eps) = 1.978612.)"""
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="ones"),
                              keras.layers.BatchNormalization(epsilon=1e-3, center=False,
                                                              scale=False)])
    maml = MAMLRegression(model, inner_lr=0.1, inner_steps=1, inner_steps_test=1,
                          batch_norm="running_stats")
    episode = {"support_images": tf.constant([[[1.0], [3.0]]]),
               "support_labels": tf.constant([[[0.0], [0.0]]]),
               "query_images": tf.constant([[[2.0]]])}
    eps = 1e-3
    grad = 2 * eps / (1 + eps) ** 2
    expected = 2 * (1 - 0.1 * grad) / np.sqrt(1 + eps)
    assert expected == pytest.approx(1.998602, abs=1e-6)
    prediction = float(maml.query_logits(episode, training=False)[0, 0, 0])
    assert prediction == pytest.approx(expected, rel=1e-5)


def test_batch_stats_evaluation_is_transductive(conv_batch):
    maml = MAML(conv4((28, 28, 1), num_classes=5, filters=8), batch_norm="batch_stats",
                inner_steps_test=1)
    one = dict(conv_batch, query_images=conv_batch["query_images"][:, :1])
    alone = maml.query_logits(one, training=False)[:, 0]
    together = maml.query_logits(conv_batch, training=False)[:, 0]
    assert np.abs(alone.numpy() - together.numpy()).max() > 1e-3


def test_jit_compile_auto_is_off_on_cpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: auto may enable XLA there")
    maml = MAML(linear_model())
    maml.compile(optimizer=keras.optimizers.Adam(), jit_compile="auto")
    assert maml.jit_compile is False


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        MAML(linear_model(), batch_norm="moving")
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 0; got -1"):
        MAML(linear_model(), inner_steps=-1)


def test_serving_more_ways_than_outputs_is_an_error():
    maml = MAML(linear_model(2, 2))
    with pytest.raises(tf.errors.InvalidArgumentError, match="serves at most 2 ways"):
        maml.adapt_and_predict(tf.zeros((3, 2)), tf.constant([0, 1, 2]), tf.zeros((1, 2)))


@pytest.mark.parametrize("compiled", [False, True])
def test_derivative_order_annealing_switches_at_first_order_steps(compiled):
    # MAML++'s annealing: first order while the optimizer's step < first_order_steps (a
    # tf.cond), second order after; both branches against the unrolled computation.
    from tfmeta.algorithms.maml_plusplus import MAMLPlusPlus

    kernel, bias, batch = linear_problem()
    learner = MAMLPlusPlus(linear_model(4, 3, kernel, bias), inner_lr=0.5, inner_steps=1,
                           first_order_steps=10, multi_step_loss=False,
                           learned_inner_lrs=False, per_step_batch_norm=False)
    learner.compile(optimizer=keras.optimizers.SGD(0.0))
    compute = tf.function(learner.compute_meta_gradients) if compiled \
        else learner.compute_meta_gradients
    for step, first_order in ((0, True), (9, True), (10, False), (500, False)):
        learner.optimizer.iterations.assign(step)
        grads, _, _ = compute(batch)
        assert_unrolled(grads, kernel, bias, batch, first_order, f"step {step}")


def test_regression_loss_is_the_mean_squared_error():
    # Targets (1, 3), predictions (0, 0): ((1 - 0)^2 + (3 - 0)^2) / 2 = 5.
    maml = MAMLRegression(linear_model(1, 1))
    assert float(maml.loss_fn(tf.constant([[1.0], [3.0]]), tf.zeros((2, 1)))) == 5.0

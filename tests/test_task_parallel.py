"""The MAML family's task loop in each of its forms (`tfmeta.algorithms.task_forms`, resolved
once from the settings) gives the loop's numbers: every task in one pass
(`task_parallel="vectorized"`, `tfmeta.task_batch`) and unrolled under XLA;
meta-gradients first and second order, to 1e-5 of their scale; on the real backbones
(Conv4, ResNet-12), with the grouped convolution and with a convolution per task (what
runs where the kernels cannot differentiate a grouped convolution, e.g. oneDNN off)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import task_batch, weights
from tfmeta.algorithms import task_loop
from tfmeta.algorithms.anil import ANIL
from tfmeta.algorithms.lstm_meta import LSTMMetaLearner
from tfmeta.algorithms.maml import MAML
from tfmeta.algorithms.maml_plusplus import MAMLPlusPlus
from tfmeta.algorithms.metasgd import MetaSGD
from tfmeta.algorithms.task_forms import LoopedTasks, UnrolledTasks, VectorizedTasks
from tfmeta.models import conv4, resnet12
from tfmeta.models.mlp import mlp

TASKS, WAYS, SHOTS, QUERIES = 3, 3, 2, 2
CASES = {
    "maml_second_order": (MAML, {"inner_steps": 2}),
    "maml_first_order": (MAML, {"inner_steps": 2, "first_order": True}),
    "proto_maml": (MAML, {"inner_steps": 2, "head": "prototypes"}),
    "zeros_head": (MAML, {"inner_steps": 1, "head": "zeros"}),
    "metasgd": (MetaSGD, {"inner_steps": 2}),
    "anil": (ANIL, {"inner_steps": 2}),
    "maml_plusplus": (MAMLPlusPlus, {"inner_steps": 2, "msl_annealing_steps": 10}),
}


@pytest.fixture(scope="module")
def episodes():
    """Three 3-way 2-shot tasks of random 28x28 images, 2 queries per class."""
    rng = np.random.default_rng(0)

    def labels(per_class):
        return tf.constant(np.tile(np.repeat(np.arange(WAYS), per_class), (TASKS, 1)), tf.int32)

    return {"support_images": tf.constant(rng.normal(size=(TASKS, WAYS * SHOTS, 28, 28, 1)),
                                          tf.float32),
            "support_labels": labels(SHOTS),
            "query_images": tf.constant(rng.normal(size=(TASKS, WAYS * QUERIES, 28, 28, 1)),
                                        tf.float32),
            "query_labels": labels(QUERIES)}


def build(cls, kwargs, task_parallel, jit_compile=False, **extra):
    keras.utils.set_random_seed(1)
    head = {} if kwargs.get("head") in ("prototypes", "zeros") else {"num_classes": WAYS}
    learner = cls(conv4((28, 28, 1), filters=4, **head), task_parallel=task_parallel,
                  **kwargs, **extra)
    learner.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile)
    return learner


def run(learner, episodes, jit_compile=False):
    """(meta-gradients, loss, query outputs while training, query outputs at test)."""
    grads, loss, logits = tf.function(learner.compute_meta_gradients,
                                      jit_compile=jit_compile)(episodes)
    test = tf.function(lambda e: learner.query_logits(e, training=False),
                       jit_compile=jit_compile)(episodes)
    return grads, loss, logits, test


def assert_same(got, want, what):
    """Equal to 1e-5 of the reference's scale: the larger of 1 and its largest magnitude
    over all its tensors (float32 sums in another order differ by ~1e-7 of it; a wrong
    task, step or batch statistic by far more)."""
    scale = max(1.0, max(float(np.abs(np.asarray(w)).max()) for w in want))
    for g, w in zip(got, want, strict=True):
        difference = float(np.abs(np.asarray(g) - np.asarray(w)).max())
        assert difference <= 1e-5 * scale, (what, difference, scale)


def assert_same_run(got, want):
    assert_same(got[0], want[0], "meta-gradients")
    assert_same([got[1], got[2], got[3]], [want[1], want[2], want[3]],
                "loss and query outputs")


@pytest.mark.parametrize("case", sorted(CASES))
def test_vectorized_equals_the_loop(case, episodes):
    cls, kwargs = CASES[case]
    loop, vectorized = build(cls, kwargs, "loop"), build(cls, kwargs, "vectorized")
    assert not loop.vectorized and vectorized.vectorized
    reference = run(loop, episodes)
    # The meta-gradient is not zero, and second order differs from first (what is compared
    # is the computation, not two ways of getting nothing).
    assert max(float(np.abs(g).max()) for g in reference[0]) > 1e-3
    assert_same_run(run(vectorized, episodes), reference)


@pytest.mark.parametrize("case", ["maml_second_order", "proto_maml", "metasgd", "anil",
                                  "maml_plusplus"])
def test_recomputed_inner_steps_give_the_same_meta_gradients(case, episodes, monkeypatch):
    """`recompute=True` (each inner step's activations computed again in the backward pass)
    changes memory, not numbers: second order, through Meta-SGD's and MAML++'s variables
    read inside the recomputed step, and on the vectorized pass."""
    cls, kwargs = CASES[case]

    def build_apart(task_parallel, **extra):
        """The learner with every variable moved by the same noise: MAML++'s per-step copies
        and rates start equal, which would hide a step recomputed with another's."""
        learner = build(cls, kwargs, task_parallel, **extra)
        rng = np.random.default_rng(2)
        for variable in learner.trainable_variables:
            variable.assign(variable + 0.1 * rng.normal(size=variable.shape))
        return learner

    want = run(build_apart("loop"), episodes)
    recomputed = []
    real = weights.recomputed_in_backward
    monkeypatch.setattr(weights, "recomputed_in_backward",
                        lambda fn, tensors: recomputed.append(1) or real(fn, tensors))
    assert_same_run(run(build_apart("loop", recompute=True), episodes), want)
    assert recomputed, "recompute=True did not take the recomputed path"
    if case == "maml_second_order":
        assert_same_run(run(build_apart("vectorized", recompute=True), episodes), want)


def test_recompute_is_refused_where_there_is_nothing_to_recompute_or_it_would_count_twice():
    model = conv4((28, 28, 1), filters=4, num_classes=WAYS)
    with pytest.raises(ValueError, match=r"recompute=True .*first_order=True"):
        MAML(model, first_order=True, recompute=True)
    with pytest.raises(ValueError, match=r"moving averages twice; use "
                                         r"learner.batch_norm=batch_stats"):
        MAML(model, batch_norm="running_stats", recompute=True)


@pytest.mark.parametrize("case, batch_norm", [("maml_second_order", "batch_stats"),
                                              ("maml_second_order", "running_stats"),
                                              ("maml_plusplus", "running_stats")])
def test_unrolled_loop_equals_the_while_loop(case, batch_norm, episodes):
    """The form XLA gets (compiled with `jit_compile`: B copies of the task in the graph),
    run here without XLA so that only the form is compared; XLA's own numbers are checked
    against the hand-unrolled meta-gradient in tests/test_maml.py (on a conv net they also
    differ by max-pool ties broken otherwise). With batch_norm=running_stats the moving
    averages (MAML++'s per-step copies) are threaded from task to task in both, and come
    out the same after the step."""
    cls, kwargs = CASES[case]
    unrolled = build(cls, kwargs, "loop", jit_compile=True, batch_norm=batch_norm)
    looped = build(cls, kwargs, "loop", batch_norm=batch_norm)
    assert isinstance(unrolled.task_form, UnrolledTasks)
    assert type(looped.task_form) is LoopedTasks
    assert "unrolled" in unrolled.task_loop_form()
    before = [v.numpy() for v in looped.loop_state_variables]
    assert_same_run(run(unrolled, episodes), run(looped, episodes))
    after = weights.values(looped.loop_state_variables)
    assert_same(weights.values(unrolled.loop_state_variables), after, "moving averages")
    moved = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(after, before, strict=True))
    assert moved > 1e-4 if batch_norm == "running_stats" else moved == 0.0


@pytest.mark.parametrize("name", ["conv4", "resnet12", "mlp", "conv4_features"])
@pytest.mark.parametrize("training", [True, False])
def test_one_pass_equals_each_task_through_stateless_call(name, training):
    models = {"conv4": lambda: (conv4((28, 28, 1), num_classes=5, filters=8), (28, 28, 1)),
              "resnet12": lambda: (resnet12((16, 16, 3), num_classes=4, widths=(4, 4, 8, 8)),
                                   (16, 16, 3)),
              "mlp": lambda: (mlp((1,), num_classes=1, hidden_units=(8, 8)), (1,)),
              "conv4_features": lambda: (conv4((28, 28, 1), filters=8), (28, 28, 1))}
    model, shape = models[name]()
    assert task_batch.unsupported_layers(model) == []
    rng = np.random.default_rng(0)
    params = [tf.constant(0.3 * rng.normal(size=(TASKS, *v.shape)), tf.float32)
              for v in model.trainable_variables]
    # Moving averages away from (0, 1), so a test-mode pass that ignored them would show.
    state = [tf.constant(rng.uniform(0.5, 1.5, size=v.shape), tf.float32)
             for v in model.non_trainable_variables]
    inputs = tf.constant(rng.normal(size=(TASKS, 6, *shape)), tf.float32)
    got = task_batch.call(model, params, state, inputs, training)
    want = tf.stack([model.stateless_call([p[t] for p in params], state, inputs[t],
                                          training=training)[0] for t in range(TASKS)])
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_vectorized_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="running_stats.*task_parallel=loop"):
        MAML(conv4((28, 28, 1), num_classes=5, filters=4), batch_norm="running_stats",
             task_parallel="vectorized")
    with pytest.raises(ValueError, match="LSTMMetaLearner's inner loop runs on one task"):
        LSTMMetaLearner(conv4((28, 28, 1), num_classes=5, filters=4),
                        task_parallel="vectorized")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.LayerNormalization(
        name="norm")(inputs)))
    with pytest.raises(ValueError, match=r"cannot run task by task in one pass: norm \(a Layer"):
        MAML(model, task_parallel="vectorized")
    with pytest.raises(ValueError, match="task_parallel must be one of"):
        MAML(model, task_parallel="threads")


def test_the_form_is_resolved_once_from_the_settings_and_again_in_compile(episodes,
                                                                            monkeypatch):
    """`task_form`: "loop" loops, "vectorized" vectorizes, "auto" loops on CPUs and
    vectorizes with a GPU where nothing refuses it (batch_norm=running_stats, MAML's fast
    head: read after MAML's constructor has set it); `compile(jit_compile=True)` unrolls
    the loop and leaves the vectorized pass. Resolved when built and in compile, never
    again: the learner runs the form it resolved though the settings it read change."""

    def form(jit_compile=None, backbone=None, **kwargs):
        learner = MAML(backbone or conv4((28, 28, 1), num_classes=5, filters=4), **kwargs)
        if jit_compile is not None:
            learner.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile)
        return type(learner.task_form)

    monkeypatch.setattr(task_loop, "vectorize_by_default", lambda: False)  # a CPU
    assert form(task_parallel="loop") is LoopedTasks
    assert form(task_parallel="vectorized") is VectorizedTasks
    assert form(task_parallel="auto") is LoopedTasks
    assert not MAML(conv4((28, 28, 1), num_classes=5, filters=4)).vectorized
    assert form(task_parallel="loop", jit_compile=True) is UnrolledTasks
    assert form(task_parallel="auto", jit_compile=True) is UnrolledTasks
    assert form(task_parallel="loop", jit_compile=False) is LoopedTasks
    assert form(task_parallel="vectorized", jit_compile=True) is VectorizedTasks
    monkeypatch.setattr(task_loop, "vectorize_by_default", lambda: True)  # a GPU
    assert form(task_parallel="auto") is VectorizedTasks
    assert MAML(conv4((28, 28, 1), num_classes=5, filters=4)).vectorized
    assert form(task_parallel="auto", batch_norm="running_stats") is LoopedTasks
    assert form(task_parallel="auto", head="prototypes",
                backbone=conv4((28, 28, 1), filters=4)) is LoopedTasks
    assert form(task_parallel="loop") is LoopedTasks
    running = MAML(conv4((28, 28, 1), num_classes=5, filters=4), batch_norm="running_stats")
    assert not running.vectorized  # auto falls back to the loop, and says why
    assert "running_stats" in running.task_loop_form()

    # Compiled again without XLA, the unrolled loop is the while_loop again; and the form
    # is not resolved again where it runs (a refusal now would raise, and "auto" vectorize).
    monkeypatch.setattr(task_loop, "vectorize_by_default", lambda: False)
    inputs = keras.Input((28, 28, 1))
    learner = MAML(keras.Model(inputs, keras.layers.Dense(WAYS)(keras.layers.Flatten()(inputs))))
    learner.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
    assert type(learner.task_form) is UnrolledTasks
    learner.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    assert type(learner.task_form) is LoopedTasks

    def refuse(*_):
        raise AssertionError("the form was resolved again")

    monkeypatch.setattr(task_loop, "vectorize_by_default", lambda: True)
    monkeypatch.setattr(MAML, "vectorized_refusal", refuse)
    monkeypatch.setattr(MAML, "resolve_task_form", refuse)
    assert not learner.vectorized and type(learner.task_form) is LoopedTasks
    assert learner.query_logits(episodes).shape == (TASKS, WAYS * QUERIES, WAYS)
    learner.compute_meta_gradients(episodes)


# ------------------------------------------------------------- the real backbones
BACKBONES = {
    "conv4": lambda: conv4((28, 28, 1), num_classes=WAYS, filters=8),
    "resnet12": lambda: resnet12((16, 16, 3), num_classes=WAYS, widths=(4, 4, 8, 8)),
}


def random_episodes(image_shape, seed=0):
    """TASKS 3-way 2-shot tasks of random images `image_shape`, 2 queries per class."""
    rng = np.random.default_rng(seed)
    labels = {n: tf.constant(np.tile(np.repeat(np.arange(WAYS), n), (TASKS, 1)), tf.int32)
              for n in (SHOTS, QUERIES)}
    return {"support_images": tf.constant(rng.normal(size=(TASKS, WAYS * SHOTS, *image_shape)),
                                          tf.float32),
            "support_labels": labels[SHOTS],
            "query_images": tf.constant(rng.normal(size=(TASKS, WAYS * QUERIES, *image_shape)),
                                        tf.float32),
            "query_labels": labels[QUERIES]}


def meta_step(backbone, task_parallel, episodes, first_order=False):
    """(meta-gradients, loss) of one-inner-step MAML on `BACKBONES[backbone]`, run eagerly
    (the same ops as under tf.function, which `test_vectorized_equals_the_loop` runs, without
    its tracing time)."""
    keras.utils.set_random_seed(1)
    learner = MAML(BACKBONES[backbone](), inner_steps=1, first_order=first_order,
                   task_parallel=task_parallel)
    learner.compile(optimizer=keras.optimizers.SGD(0.1))
    assert learner.vectorized == (task_parallel == "vectorized")
    grads, loss, _ = learner.compute_meta_gradients(episodes)
    return [g.numpy() for g in grads], float(loss)


def assert_close(got, want):
    """Meta-gradients and loss equal to rtol 1e-4 and atol 2e-5 of the reference's scale (the
    larger of 1 and its largest magnitude). Float32 sums in another order move ResNet-12's
    second-order meta-gradient, through batch norm over six images, by up to 7e-6 of its scale
    (the loop under tf.function against the loop run eagerly too); a missing second-order
    term, or a task run with another's weights, by about 1."""
    (got_grads, got_loss), (want_grads, want_loss) = got, want
    scale = max(1.0, max(float(np.abs(w).max()) for w in want_grads))
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5 * scale)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-4, atol=1e-5)


def task_by_task(monkeypatch):
    """The vectorized pass with a convolution per task, as on a device whose kernels cannot
    differentiate a grouped convolution."""
    monkeypatch.setattr(task_batch, "grouped_convolution_gradients", lambda: False)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_vectorized_equals_the_loop_on_real_backbones(backbone, monkeypatch):
    """Second-order MAML, one inner step, three tasks: the vectorized pass's meta-gradients
    and loss are the loop's, with grouped convolutions (where the kernels take them) and with
    a convolution per task; and the tolerance tells second order from first."""
    episodes = random_episodes(BACKBONES[backbone]().input_shape[1:])
    want = meta_step(backbone, "loop", episodes)
    if backbone == "conv4":
        # What is compared is the second-order computation: its terms exceed the tolerance
        # (on ResNet-12 too: there first order is 5.5 off, the tolerance 1.1e-4).
        with pytest.raises(AssertionError):
            assert_close(meta_step(backbone, "loop", episodes, first_order=True), want)
    if task_batch.grouped_convolution_gradients():
        assert_close(meta_step(backbone, "vectorized", episodes), want)
    task_by_task(monkeypatch)
    assert_close(meta_step(backbone, "vectorized", episodes), want)


def test_convolutions_task_by_task_with_an_unknown_number_of_tasks(monkeypatch):
    """Tasks of unknown number (e.g. evaluation's last meta-batch) map the per-task
    convolutions over the tasks (`tf.map_fn`): outputs under tf.function, and gradients first
    and second order (eagerly, the mapped form forced), are each task's through
    `stateless_call`."""
    task_by_task(monkeypatch)
    static_tasks = []  # the number of tasks each convolution was given (None: unknown)
    real = task_batch.convolve_task_by_task
    monkeypatch.setattr(task_batch, "convolve_task_by_task",
                        lambda *args: static_tasks.append(args[3]) or real(*args))
    model = conv4((28, 28, 1), num_classes=WAYS, filters=4)
    rng = np.random.default_rng(0)
    params = [tf.constant(0.3 * rng.normal(size=(TASKS, *v.shape)), tf.float32)
              for v in model.trainable_variables]
    state = weights.values(model.non_trainable_variables)
    inputs = tf.constant(rng.normal(size=(TASKS, 6, 28, 28, 1)), tf.float32)

    def one_pass(params, inputs=inputs):
        return task_batch.call(model, params, state, inputs, True)

    def task_by_task_through_stateless_call(params):
        return tf.stack([model.stateless_call([p[t] for p in params], state, inputs[t],
                                              training=True)[0] for t in range(TASKS)])

    def second_order(forward, params):
        """(outputs, g = d|outputs|^2/dparams, d|g|^2/dparams)."""
        with tf.GradientTape() as outer:
            outer.watch(params)
            with tf.GradientTape() as inner:
                inner.watch(params)
                outputs = forward(params)
                loss = tf.reduce_sum(tf.square(outputs))
            grads = inner.gradient(loss, params)
            norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        return [outputs, *grads, *outer.gradient(norm, params)]

    outputs = tf.function(one_pass, input_signature=[
        [tf.TensorSpec([None, *p.shape[1:]]) for p in params],
        tf.TensorSpec([None, *inputs.shape[1:]])])(params, inputs)
    assert static_tasks == [None] * 4  # Conv4's four convolutions, mapped over the tasks
    want = second_order(task_by_task_through_stateless_call, params)
    assert_same([outputs], want[:1], "outputs")
    monkeypatch.setattr(task_batch, "convolve_task_by_task",
                        lambda convolve, x, kernel, _, tasks: real(convolve, x, kernel, None,
                                                                    tasks))
    assert_same(second_order(one_pass, params), want, "outputs and gradients")


# Where the kernels cannot differentiate a grouped convolution (TensorFlow's own CPU kernels,
# oneDNN off), the grouped convolution crashed the vectorized pass on every convolutional
# backbone (issue 34: "Conv2DBackpropFilter: filter_size does not have enough elements,
# requested 147456, got 73728", Conv4-64's second block with two tasks).
ONEDNN_OFF = """
from tests.test_task_parallel import BACKBONES, assert_close, meta_step, random_episodes
from tfmeta import task_batch
from tfmeta.algorithms.maml import MAML
assert not task_batch.grouped_convolution_gradients()
assert "convolutions apart" in MAML(BACKBONES["conv4"](),
                                    task_parallel="vectorized").task_loop_form()
episodes = random_episodes((28, 28, 1))
assert_close(meta_step("conv4", "vectorized", episodes), meta_step("conv4", "loop", episodes))
"""


def test_vectorized_runs_where_the_kernels_cannot_differentiate_a_grouped_convolution():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", CUDA_VISIBLE_DEVICES="", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", ONEDNN_OFF], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("form", [LoopedTasks, VectorizedTasks, UnrolledTasks])
def test_weight_penalties_are_added_once_and_whole(episodes, form):
    """The meta-loss is the mean task loss plus `regularization_loss` once, whole (Keras's
    `model.losses`; what `EpisodicClassifier.meta_loss` adds), in every form of the task
    loop (the unrolled one run eagerly, without XLA). Before (issue 35), the MAML family
    divided it by the meta-batch: the gradient of an L2 penalty c * |W|^2 came out 2cW / B."""
    penalty = 0.05

    def learner(c):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((28, 28, 1))
        outputs = keras.layers.Dense(WAYS, kernel_regularizer=keras.regularizers.L2(c))(
            keras.layers.Flatten()(inputs))
        maml = MAML(keras.Model(inputs, outputs), inner_steps=1,
                    task_parallel="vectorized" if form is VectorizedTasks else "loop")
        maml.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=form is UnrolledTasks)
        assert type(maml.task_form) is form
        return maml

    with_penalty, without = learner(penalty), learner(0.0)
    grads, loss, _ = with_penalty.compute_meta_gradients(episodes)
    plain_grads, plain_loss, _ = without.compute_meta_gradients(episodes)
    kernel = with_penalty.backbone.layers[-1].kernel
    index = [id(v) for v in with_penalty.trainable_variables].index(id(kernel))
    np.testing.assert_allclose(grads[index] - plain_grads[index], 2 * penalty * kernel.numpy(),
                               atol=1e-6)
    expected = penalty * float(np.sum(kernel.numpy() ** 2))
    np.testing.assert_allclose(float(loss) - float(plain_loss), expected, rtol=1e-4)

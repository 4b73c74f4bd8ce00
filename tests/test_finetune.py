"""Fine-tuning at test time (P>M>F, tfmeta/algorithms/finetune.py): one step against
hand-worked numbers, today's logits where it is off, the learner left untouched, frozen
layers kept, the export, a problem where it helps, and bin/evaluate.py's flags."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import weights
from tfmeta.algorithms.finetune import (
    LEARNING_RATE_GRID,
    augment,
    color,
    flip,
    translate,
    translation_pad,
)
from tfmeta.algorithms.matching import MatchingNetwork
from tfmeta.algorithms.pretrain import Pretrain
from tfmeta.algorithms.prototypical import PrototypicalNetwork
from tfmeta.algorithms.relation import RelationNetwork
from tfmeta.config import apply_overrides, get_config, load_config, save_config
from tfmeta.data.base import TaskSource
from tfmeta.models import conv4
from tfmeta.tensors import accuracy
from tfmeta.training import evaluation, preflight, trainer
from tfmeta.training.export import export_learner

SEED = tf.constant([0, 1], tf.int64)


def linear_backbone(kernel, frozen=None):
    """2-d inputs -> features `x @ kernel` (one Dense layer without bias); with `frozen`, a
    first Dense layer of that kernel with `trainable = False` before it."""
    inputs = keras.Input((2,))
    x = inputs
    if frozen is not None:
        first = keras.layers.Dense(2, use_bias=False, name="frozen",
                                   kernel_initializer=keras.initializers.Constant(frozen))
        first.trainable = False
        x = first(x)
    x = keras.layers.Dense(2, use_bias=False, name="tuned",
                           kernel_initializer=keras.initializers.Constant(kernel))(x)
    return keras.Model(inputs, x)


def episode(support, labels, query, query_labels=None):
    batch = {"support_images": tf.constant([support], tf.float32),
             "support_labels": tf.constant([labels], tf.int32),
             "query_images": tf.constant([query], tf.float32)}
    if query_labels is not None:
        batch["query_labels"] = tf.constant([query_labels], tf.int32)
    return batch


def squared_distance_logits(queries, prototypes):
    return -((queries[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)


# ------------------------------------------------------------- (a) the arithmetic
# One shot of each class, x0 = [1, 0] (class 0) and x1 = [0, 1] (class 1); the backbone is
# f(x) = x W with W = I; no augmentation, so the pseudo-queries are x0 and x1 themselves.
# Prototypes c_n = f(x_n), so pseudo-query x0 has logits [0, -D] and x1 [-D, 0] with
#   D = |x0 W - x1 W|^2 = |d W|^2,  d = x0 - x1 = [1, -1],  D = 2 at W = I.
# Both pseudo-queries lose log(1 + e^-D), so L(W) = log(1 + exp(-|d W|^2)) and
#   dL/dW = -sigmoid(-D) * dD/dW = -sigmoid(-D) * 2 d^T d W,   sigmoid(-2) = 1 / (1 + e^2).
# One SGD step at rate lr (W moves through the prototypes and the pseudo-queries alike):
#   W' = W + 2 lr sigmoid(-2) d^T d,   d^T d = [[1, -1], [-1, 1]].
# Adam's first step is lr * m / (sqrt(v) + eps) with m = 0.1 g and v = 0.001 g^2 bias-
# corrected: lr * sign(g) up to eps, so W' = W + lr * [[1, -1], [-1, 1]].
SUPPORT, LABELS = [[1.0, 0.0], [0.0, 1.0]], [0, 1]
QUERY = [[0.8, 0.3], [0.1, 0.9], [0.5, 0.5]]
D_OUTER = np.array([[1.0, -1.0], [-1.0, 1.0]])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_step_against_hand_worked_numbers(optimizer):
    rate = 0.5
    learner = PrototypicalNetwork(linear_backbone(np.eye(2)), finetune_steps=1,
                                  finetune_lr=rate, finetune_augment="none",
                                  finetune_optimizer=optimizer)
    (fast,) = learner.finetune(weights.values(learner.backbone.trainable_variables), [],
                               tf.constant(SUPPORT), tf.constant(LABELS), SEED)
    step = 2 * rate / (1 + np.exp(2.0)) if optimizer == "sgd" else rate
    expected_kernel = np.eye(2) + step * D_OUTER
    np.testing.assert_allclose(fast.numpy(), expected_kernel, rtol=1e-5)

    # The queries are then classified by the fine-tuned copy: prototypes x_n W', -|q W' - c|^2.
    logits = learner.test_logits(episode(SUPPORT, LABELS, QUERY))[0].numpy()
    expected = squared_distance_logits(np.array(QUERY) @ expected_kernel,
                                       np.array(SUPPORT) @ expected_kernel)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    # ... which are not the logits of W = I: the step did something.
    assert not np.allclose(logits, squared_distance_logits(np.array(QUERY), np.array(SUPPORT)))


def test_padding_of_variable_episodes_is_left_out():
    """A padded episode (label -1 after the real examples, here with images that would move
    the weights) gives its real queries the logits of the unpadded one, 0 in padding rows."""
    learner = PrototypicalNetwork(linear_backbone(np.eye(2)), finetune_steps=2,
                                  finetune_lr=0.5, finetune_augment="none",
                                  finetune_optimizer="sgd")
    plain = learner.test_logits(episode(SUPPORT, LABELS, QUERY, [0, 1, 0]))[0].numpy()
    padded = learner.test_logits(episode(
        SUPPORT + [[5.0, -3.0]], LABELS + [-1], QUERY + [[7.0, 7.0]], [0, 1, 0, -1]))[0]
    np.testing.assert_allclose(padded[:3].numpy(), plain, rtol=1e-6)
    np.testing.assert_array_equal(padded[3].numpy(), [0.0, 0.0])


# ------------------------------------------------------------- the augmentations
def test_augmentations_are_seeded_draws_within_the_papers_bounds():
    images = np.arange(1, 3 * 6 * 6 + 1, dtype=np.float32).reshape(3, 6, 6, 1)
    # The paper's largest shift, int(side / 8 + 0.5): 4 px on 28x28 Omniglot, 11 on 84x84.
    assert [translation_pad((s, s)) for s in (6, 14, 28, 84)] == [1, 2, 4, 11]
    shifted = translate(tf.constant(images), 1, SEED).numpy()
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)])
    for image, out in zip(padded, shifted):  # a 6x6 window of the zero-padded image
        assert any(np.array_equal(out, image[r:r + 6, c:c + 6]) for r in range(3)
                   for c in range(3))
    for image, out in zip(images, flip(tf.constant(images), SEED).numpy()):
        assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
    # One channel: saturation is the identity, and brightness then contrast scale each
    # image about its mean by a factor in [0.5, 1.5).
    jittered = color(tf.constant(images), SEED).numpy()
    centred = images - images.mean(axis=(1, 2, 3), keepdims=True)
    factors = (jittered - jittered.mean(axis=(1, 2, 3), keepdims=True)) / centred
    assert np.allclose(factors, factors[:, :1, :1], rtol=1e-4)
    assert (factors >= 0.5).all() and (factors < 1.5).all()
    # Stateless: the same seed draws the same pseudo-queries, another seed others.
    draws = [augment(tf.constant(images), "color_translate_flip", tf.constant(seed, tf.int64))
             .numpy() for seed in ([0, 1], [0, 1], [0, 2])]
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    np.testing.assert_array_equal(augment(tf.constant(images), "none", SEED).numpy(), images)


# ---------------------------------------------------------- (b) off is today's
def random_episodes(shape, ways=3, shots=2, queries=2, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.tile(np.repeat(np.arange(ways), shots), (batch, 1))
    return {"support_images": tf.constant(rng.random((batch, ways * shots, *shape)),
                                          tf.float32),
            "support_labels": tf.constant(labels, tf.int32),
            "query_images": tf.constant(rng.random((batch, ways * queries, *shape)),
                                        tf.float32),
            "query_labels": tf.constant(np.tile(np.repeat(np.arange(ways), queries),
                                                (batch, 1)), tf.int32)}


@pytest.mark.parametrize("make", [
    lambda **kw: PrototypicalNetwork(conv4((6, 6, 1), filters=2, num_blocks=1), **kw),
    lambda **kw: Pretrain(conv4((6, 6, 1), filters=2, num_blocks=1), num_classes=5,
                          classifier="logistic", logistic_steps=5, **kw),
], ids=["protonet", "pretrain"])
def test_without_finetuning_the_logits_are_todays_bit_for_bit(make):
    keras.utils.set_random_seed(1)
    batch = random_episodes((6, 6, 1))
    for arguments in ({}, {"finetune_steps": 0, "finetune_lr": 0.1},
                      {"finetune_steps": 5, "finetune_lr": 0.0}):
        learner = make(**arguments)
        today = learner.query_logits(batch, training=False).numpy()
        np.testing.assert_array_equal(learner.test_logits(batch).numpy(), today)
        served = learner.adapt_and_predict(batch["support_images"][0],
                                           batch["support_labels"][0], batch["query_images"][0])
        first = learner.query_logits({k: v[:1] for k, v in batch.items()}, training=False)
        np.testing.assert_array_equal(served.numpy(), first[0].numpy())


# ------------------------------------------ (c) the learner's variables never change
def snapshot(learner):
    return [v.numpy().copy() for v in learner.variables]


def assert_unchanged(learner, before):
    for old, variable in zip(before, learner.variables, strict=True):
        np.testing.assert_array_equal(variable.numpy(), old, err_msg=variable.path)


def test_evaluation_leaves_the_learner_unchanged():
    """Batch-norm statistics included; serving: the export test below."""
    keras.utils.set_random_seed(2)
    learner = PrototypicalNetwork(conv4((6, 6, 1), filters=2, num_blocks=1),
                                  finetune_steps=3, finetune_lr=0.05)
    batch = random_episodes((6, 6, 1))
    before = snapshot(learner)
    tuned = tf.function(learner.test_logits)(batch).numpy()
    assert_unchanged(learner, before)
    # The fine-tuning did move the copy: its logits are not the frozen learner's.
    plain = learner.query_logits(batch)
    assert np.abs(tuned - plain.numpy()).max() > 1e-4
    # fit's validation after each epoch (test_step) does not fine-tune: it pays no such cost.
    learner.compile(optimizer="sgd")
    validation_loss = float(learner.test_step(batch)["loss"])
    np.testing.assert_allclose(validation_loss,
                               float(tf.reduce_mean(learner.query_loss(batch, plain))), rtol=1e-6)


# ----------------------------------------------- (d) only trainable variables move
def test_a_frozen_layer_keeps_its_value_in_the_finetuned_copy():
    frozen = np.array([[2.0, 0.0], [0.0, 1.0]])
    learner = PrototypicalNetwork(linear_backbone(np.eye(2), frozen=frozen), finetune_steps=1,
                                  finetune_lr=0.5, finetune_augment="none",
                                  finetune_optimizer="sgd")
    assert [v.path for v in learner.backbone.trainable_variables] == ["tuned/kernel"]
    (fast,) = learner.finetune(weights.values(learner.backbone.trainable_variables),
                               weights.values(learner.backbone.non_trainable_variables),
                               tf.constant(SUPPORT), tf.constant(LABELS), SEED)
    # As the hand-worked step with inputs x F (F the frozen kernel): d F = [2, -1], D = 5,
    # dL/dW = -sigmoid(-5) * 2 (dF)^T (dF) W at W = I.
    d = np.array([[1.0, -1.0]]) @ frozen
    expected_kernel = np.eye(2) + 2 * 0.5 / (1 + np.exp(5.0)) * d.T @ d
    np.testing.assert_allclose(fast.numpy(), expected_kernel, rtol=1e-5)
    logits = learner.test_logits(episode(SUPPORT, LABELS, QUERY))[0].numpy()
    transform = frozen @ expected_kernel  # the frozen layer as it was, then the tuned one
    np.testing.assert_allclose(logits, squared_distance_logits(
        np.array(QUERY) @ transform, np.array(SUPPORT) @ transform), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(learner.backbone.get_layer("frozen").kernel.numpy(), frozen)


def test_a_backbone_without_trainable_weights_is_refused_in_one_line():
    backbone = linear_backbone(np.eye(2))
    backbone.trainable = False
    with pytest.raises(ValueError, match=r"^learner.finetune_steps=3 fine-tunes the backbone's "
                       r"trainable weights, but this backbone has none \(model.trainable=none\)"
                       r"; use model.trainable=all or last:K, or finetune_steps=0.$"):
        PrototypicalNetwork(backbone, finetune_steps=3, finetune_augment="none")
    PrototypicalNetwork(backbone)  # without fine-tuning it is a fine learner
    with pytest.raises(ValueError, match="learner.finetune_augment=translate augments images"):
        PrototypicalNetwork(linear_backbone(np.eye(2)), finetune_steps=1,
                            finetune_augment="translate")
    with pytest.raises(ValueError, match=r"^finetune_lr must be a number >= 0; got -1"):
        PrototypicalNetwork(linear_backbone(np.eye(2)), finetune_lr=-1)


# --------------------------------------------------------------- (e) the export
class SixBySixImages(TaskSource):
    """What an export reads of a dataset: 6x6 grey images in [0, 1], scaled to [-1, 1]."""

    name, raw_shape, value_range = "six_by_six", (6, 6, 1), (0.0, 1.0)

    @staticmethod
    def preprocess(images):
        return 2.0 * images - 1.0


def test_the_export_serves_the_finetuned_logits_of_any_episode_size(tmp_path):
    keras.utils.set_random_seed(3)
    dataset = SixBySixImages()
    learner = PrototypicalNetwork(conv4((6, 6, 1), filters=2, num_blocks=1),
                                  finetune_steps=2, finetune_lr=0.05)  # the paper's augmentation
    before = snapshot(learner)
    loaded = tf.saved_model.load(export_learner(learner, dataset, str(tmp_path / "export")))
    images = tf.TensorSpec([None, 6, 6, 1], tf.float32)  # one trace for every episode size
    in_process = tf.function(learner.adapt_and_predict).get_concrete_function(
        images, tf.TensorSpec([None], tf.int32), images)
    rng = np.random.default_rng(3)
    for ways, shots, queries in ((3, 1, 4), (2, 2, 1)):
        support = rng.random((ways * shots, 6, 6, 1)).astype(np.float32)
        labels = np.repeat(np.arange(ways), shots).astype(np.int32)
        query = rng.random((queries, 6, 6, 1)).astype(np.float32)
        served = loaded.adapt_and_predict(support_images=support, support_labels=labels,
                                          query_images=query)["logits"].numpy()
        expected = in_process(tf.constant(dataset.preprocess(support)), tf.constant(labels),
                              tf.constant(dataset.preprocess(query))).numpy()
        assert served.shape == (queries, ways)
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)
        unchanged = learner.query_logits(
            {"support_images": tf.constant(dataset.preprocess(support)[None]),
             "support_labels": tf.constant(labels[None]),
             "query_images": tf.constant(dataset.preprocess(query)[None])})[0].numpy()
        assert np.abs(served - unchanged).max() > 1e-4  # it was fine-tuned
    assert_unchanged(learner, before)  # by exporting and serving


# ---------------------------------------------------------------- (f) it helps
def test_finetuning_raises_accuracy_on_held_out_queries():
    """Two classes apart along x (means -1 and +1, spread 0.5) with noise 3.0 along y; the
    frozen backbone shrinks x by 20, so its features see mostly noise (chance). Ten Adam steps
    on each 5-shot support set find the x direction; the queries are fresh draws."""
    rng = np.random.default_rng(0)
    batch, shots, queries = 20, 5, 20

    def draw(count):
        points = rng.normal(size=(batch, 2, count, 2)) * [0.5, 3.0]
        points[:, :, :, 0] += np.array([-1.0, 1.0])[None, :, None]
        return points.reshape(batch, 2 * count, 2).astype(np.float32)

    episodes = {"support_images": tf.constant(draw(shots)),
                "support_labels": tf.constant(np.tile(np.repeat([0, 1], shots), (batch, 1))),
                "query_images": tf.constant(draw(queries)),
                "query_labels": tf.constant(np.tile(np.repeat([0, 1], queries), (batch, 1)))}
    scores = {}
    for steps in (0, 10):
        learner = PrototypicalNetwork(linear_backbone(np.diag([0.05, 1.0])), finetune_steps=steps,
                                      finetune_lr=0.1, finetune_augment="none")
        logits = tf.function(learner.test_logits)(episodes)
        scores[steps] = float(tf.reduce_mean(accuracy(episodes["query_labels"], logits)))
    assert scores[0] < 0.6 and scores[10] > 0.85, scores


@pytest.mark.parametrize("make", [
    lambda **kw: MatchingNetwork(conv4((6, 6, 1), filters=2, num_blocks=1), **kw),
    lambda **kw: RelationNetwork(conv4((6, 6, 1), filters=2, num_blocks=1, flatten=False),
                                 relation_filters=2, relation_units=2, **kw),
], ids=["matching", "relation"])
def test_other_heads_finetune_their_backbone_only(make):
    keras.utils.set_random_seed(4)
    learner = make(finetune_steps=2, finetune_lr=0.05)
    batch = random_episodes((6, 6, 1))
    before = snapshot(learner)
    tuned = tf.function(learner.test_logits)(batch).numpy()
    assert tuned.shape == (2, 6, 3) and np.isfinite(tuned).all()
    assert np.abs(tuned - learner.query_logits(batch).numpy()).max() > 1e-5
    assert_unchanged(learner, before)  # the relation module's too


# --------------------------------------------------------- (g) bin/evaluate.py
def write_config(workdir, algo, *overrides):
    os.makedirs(workdir, exist_ok=True)
    save_config(apply_overrides(get_config(algo, "omniglot"), list(overrides)),
                os.path.join(workdir, "config.json"))
    return str(workdir)


def test_the_finetuning_flags_are_refused_in_one_line_where_they_cannot_apply(tmp_path):
    """Each refusal comes before the run is opened: config.json is all it reads."""
    plain = write_config(tmp_path / "proto", "protonet")
    cases = [
        (dict(workdir=plain, select_finetune_lr=True), r"--select_finetune_lr chooses the "
         r"learning rate of fine-tuning, but this run has learner.finetune_steps=0 and no "
         r"--finetune_steps; pass --finetune_steps=N"),
        (dict(workdir=plain, select_finetune_lr=True, finetune_steps=0),
         r"but --finetune_steps=0; pass --finetune_steps=N"),
        (dict(workdir=plain, select_finetune_lr=True, finetune_steps=5, finetune_lr=0.01),
         r"--finetune_lr=0.01 and --select_finetune_lr both set"),
        (dict(workdir=plain, finetune_steps=-1), r"finetune_steps must be an integer >= 0; "
         r"got -1"),
        (dict(workdir=write_config(tmp_path / "maml", "maml"), finetune_steps=5),
         r"--finetune_steps: this run's --algo=maml does not fine-tune a backbone at test "
         r"time; the learners that do: matching, pretrain, protonet, relation, siamese\.$"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            evaluation.evaluate_workdir(**arguments)
        assert "\n" not in str(error.value)


def tiny_protonet(*overrides):
    return apply_overrides(get_config("protonet", "omniglot"), [
        "model.filters=2", "data.image_size=14", "model.num_blocks=2", "data.train_on_val=False",
        "ways=5", "queries=2", "num_steps=2", "log_every=2", "val_episodes=2",
        "eval_episodes=4", "eval_meta_batch_size=4", *overrides])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A ProtoNet trained two steps on 14x14 Omniglot."""
    workdir = str(tmp_path_factory.mktemp("finetune") / "proto")
    trainer.train(tiny_protonet(), workdir, verbose=0)
    return workdir


@pytest.mark.slow
def test_select_finetune_lr_records_its_choice_and_rewrites_the_export(trained_run,
                                                                        monkeypatch):
    # Two of the paper's rates keep the test short: 0 (no fine-tuning) and one that tunes.
    grid = (LEARNING_RATE_GRID[0], LEARNING_RATE_GRID[-1])
    monkeypatch.setattr(evaluation, "LEARNING_RATE_GRID", grid)
    os.makedirs(os.path.join(trained_run, "export"))  # an export to rewrite (empty: cheap)
    result = evaluation.evaluate_workdir(trained_run, num_episodes=2, select_finetune_lr=True,
                                         finetune_steps=2, select_episodes=2)
    selection = result["finetune_selection"]
    rates = [c["finetune_lr"] for c in selection["candidates"]]
    assert rates == list(grid) and selection["split"] == "val"
    accuracies = [c["accuracy"] for c in selection["candidates"]]
    assert selection["chosen"] == rates[int(np.argmax(accuracies))]  # the first of the best
    assert result["finetune_lr"] == selection["chosen"] and result["finetune_steps"] == 2
    recorded = load_config(os.path.join(trained_run, "config.json")).learner
    assert (recorded.finetune_lr, recorded.finetune_steps) == (selection["chosen"], 2)
    with open(os.path.join(trained_run, "eval.json")) as f:
        assert json.load(f)["finetune_selection"] == selection
    with open(os.path.join(trained_run, "export", "tfmeta.json")) as f:
        assert json.load(f)["learner"] == "PrototypicalNetwork"
    assert os.path.isfile(os.path.join(trained_run, "export", "saved_model.pb"))
    # Fine-tuning is not the experiment: the training command still resumes the run (as
    # the trainer checks it, with the data it found), a change of what training computes not.
    for overrides, resumes in (((), True), (("learner.distance=cosine",), False)):
        command = tiny_protonet(*overrides)
        command.data_source.update(load_config(os.path.join(trained_run, "config.json"))
                                   .data_source)
        if resumes:  # and keeps the chosen fine-tuning, which the command does not say
            preflight.check_workdir_config(command, trained_run)
            assert (command.learner.finetune_lr, command.learner.finetune_steps) == (
                selection["chosen"], 2)
        else:
            with pytest.raises(ValueError, match="holds a run with learner="):
                preflight.check_workdir_config(command, trained_run)


@pytest.mark.slow
def test_finetune_flags_override_the_run_for_one_evaluation(trained_run):
    config_file = os.path.join(trained_run, "config.json")
    recorded = open(config_file).read()
    result = evaluation.evaluate_workdir(trained_run, num_episodes=2, finetune_steps=1,
                                         finetune_lr=0.02)
    assert (result["finetune_steps"], result["finetune_lr"]) == (1, 0.02)
    assert "finetune_selection" not in result
    assert open(config_file).read() == recorded  # an override is for this evaluation only

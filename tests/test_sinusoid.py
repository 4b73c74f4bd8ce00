"""Sinusoid regression (MAML paper, section 5.1): tasks drawn in the graph as a pure
function of (seed, step), the MLP, the config's input-kind check, the learner it builds
(MAMLRegression), and MAML end to end: trained, meta-tested against the pretrained
baseline, exported and served."""

import json
import os
import re

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib
from tfmeta.algorithms import (
    ALGORITHMS,
    MAML,
    REGRESSION_RECIPES,
    build_learner,
    learner_class,
    recipe_of,
    regression_plots,
    regression_protocol,
)
from tfmeta.algorithms.maml_regression import MAMLRegression
from tfmeta.data import from_arrays, input_kind, load_dataset
from tfmeta.migrate import migrate
from tfmeta.models import mlp


@pytest.fixture(scope="module")
def tasks():
    return load_dataset("sinusoid")


def test_episodes_follow_the_paper_and_are_a_function_of_seed_and_step(tasks):
    stream = list(tasks.episodes(10, 5, 4, seed=3, with_parameters=True).take(3))
    batch = stream[0]
    assert batch["support_images"].shape == (4, 10, 1)
    assert batch["query_labels"].shape == (4, 5, 1)
    amplitude, phase = batch["amplitude"].numpy(), batch["phase"].numpy()
    assert np.all((amplitude >= 0.1) & (amplitude <= 5.0))
    assert np.all((phase >= 0) & (phase <= np.pi))
    x = np.concatenate([batch["support_images"], batch["query_images"]], 1)
    y = np.concatenate([batch["support_labels"], batch["query_labels"]], 1)
    assert np.all(np.abs(x) <= 5.0)
    np.testing.assert_allclose(y, amplitude[:, None, None] * np.sin(x - phase[:, None, None]),
                               rtol=1e-5, atol=1e-5)
    # The same seed gives the same stream; a stream resumed at step 2 is its third batch.
    again = next(iter(tasks.episodes(10, 5, 4, seed=3)))
    np.testing.assert_array_equal(again["support_images"], batch["support_images"])
    resumed = next(iter(tasks.episodes(10, 5, 4, seed=3, start_step=2)))
    np.testing.assert_array_equal(resumed["query_labels"], stream[2]["query_labels"])
    other = next(iter(tasks.episodes(10, 5, 4, seed=4)))
    assert not np.allclose(other["support_images"], batch["support_images"])


def test_dataset_interface_and_errors(tasks):
    assert (tasks.input_shape, tasks.raw_shape, tasks.data_dir) == ((1,), (1,), None)
    assert tasks.fingerprint() == ""
    assert input_kind("sinusoid") == "regression"
    with pytest.raises(ValueError, match="no class splits"):
        tasks.split("train")
    with pytest.raises(ValueError, match="amplitude_max"):
        load_dataset("sinusoid", amplitude_min=2.0, amplitude_max=1.0)
    with pytest.raises(ValueError, match="Leave --data_dir unset"):
        load_dataset("sinusoid", data_dir="/tmp")
    # A regression learner takes generators of regression tasks (by type), nothing else: an
    # environment has episodes of its own, and images are refused too.
    regression_protocol.check_tasks(tasks)
    images = from_arrays(np.zeros([6, 4, 4, 1], np.float32), np.repeat(np.arange(3), 2))
    for other in (load_dataset("navigation_2d"), images):
        with pytest.raises(ValueError, match="MAMLRegression learns regression tasks, but "
                                             f"--dataset='{other.name}' has none"):
            regression_protocol.check_tasks(other)


def test_mlp_is_the_papers_network():
    model = mlp((1,), num_classes=1)
    assert [layer.units for layer in model.layers[1:]] == [40, 40, 1]
    assert model.count_params() == (1 * 40 + 40) + (40 * 40 + 40) + (40 + 1)


def test_config_admits_maml_and_refuses_protonet():
    config = config_lib.get_config("maml", "sinusoid")
    config_lib.validate_config(config)
    assert (config.shots, config.queries, config.meta_batch_size) == (10, 10, 25)
    assert config.learner.inner_lr == 0.01
    with pytest.raises(ValueError, match="regression tasks need a learner of them"):
        config_lib.validate_config(config_lib.get_config("protonet", "sinusoid"))
    # MAML's variants regress too: their inner loop with MAMLRegression's overrides.
    for algo, variant in (("metasgd", "MetaSGD"), ("anil", "ANIL"),
                          ("maml_plusplus", "MAMLPlusPlus")):
        config = config_lib.get_config(algo, "sinusoid")
        config_lib.validate_config(config)
        learner = build_learner(config, (1,))
        assert isinstance(learner, MAMLRegression)
        assert type(learner).__name__ == f"{variant}Regression"
        assert learner.num_outputs == 1


def test_regression_is_a_learner_type_not_a_mode():
    # --algo=maml on the sinusoid config is MAMLRegression with one output; on images, MAML.
    learner = build_learner(config_lib.get_config("maml", "sinusoid"), (1,))
    assert type(learner) is MAMLRegression and learner.num_outputs == 1
    assert type(build_learner(config_lib.get_config("maml", "omniglot"), (28, 28, 1))) is MAML
    # learner_class chooses by the dataset's input kind; a learner of no regression stays
    # itself (its recipe's check_input_kind refuses the dataset).
    assert learner_class("maml", "regression") is MAMLRegression
    assert learner_class("maml", "images") is learner_class("maml") is MAML
    assert learner_class("protonet", "regression") is learner_class("protonet")
    # ... and says which learners take regression tasks: those REGRESSION_RECIPES lists.
    with pytest.raises(ValueError, match="gives regression") as refusal:
        recipe_of("protonet", "regression").check_input_kind("regression", "sinusoid")
    hint = str(refusal.value).split("; ", 1)[1]
    named = {a for a in ALGORITHMS if re.search(rf"(?<![\w=]){a}\b|--algo={a}\b", hint)}
    assert named == set(REGRESSION_RECIPES), hint
    # A config.json of a run recorded before MAMLRegression (learner.loss="mse") still builds.
    recorded = config_lib.get_config("maml", "sinusoid").to_dict()
    recorded["learner"]["loss"] = "mse"
    assert type(build_learner(ml_collections.ConfigDict(migrate(recorded)),
                              (1,))) is MAMLRegression
    # MAML has no regression mode, and no learner shadows keras.Model.loss (Keras's compiled
    # loss: None, since learners compile without one).
    with pytest.raises(ValueError, match="Unrecognized keyword arguments .*loss"):
        MAML(mlp((1,), num_classes=1), loss="mse")
    assert recipe_of("maml").input_kinds == ("images",)
    assert recipe_of("maml", "regression").input_kinds == ("regression",)
    for each in (learner, MAML(mlp((1,), num_classes=2))):
        each.compile(optimizer=keras.optimizers.SGD(0.0))
        assert each.loss is None
    with pytest.raises(ValueError, match="needs head='learned'"):
        MAMLRegression(mlp((1,)), head="prototypes")


def test_regression_metrics_have_no_accuracy(tasks):
    learner = MAMLRegression(mlp((1,), num_classes=1), inner_lr=0.01)
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = learner.train_on_batch(next(iter(tasks.episodes(5, 5, 2))), return_dict=True)
    assert set(logs) == {"loss"} and np.isfinite(logs["loss"])


def test_curve_panel_draws_each_curve():
    grid = np.linspace(-5, 5, 64)
    image = regression_plots.draw_panel(grid, [((255, 0, 0), np.zeros(64))],
                                        [((0, 0, 255), [0.0], [2.0])], y_limit=4.0, height=41)
    assert image.shape == (41, 64, 3)
    assert np.all(image[20, :, 0] == 255) and np.all(image[20, :, 1] == 0)  # y = 0: row 20
    assert tuple(image[10, 32]) == (0, 0, 255)  # the point (0, 2): row 10, column ~32


@pytest.mark.slow
def test_sinusoid_end_to_end(tmp_path):
    from tfmeta.training import evaluation, trainer
    from tfmeta.training.export import export_workdir

    config = config_lib.apply_overrides(config_lib.get_config("maml", "sinusoid"), [
        "num_steps=300", "checkpoint_every=300", "val_episodes=20", "eval_episodes=40"])
    workdir = str(tmp_path / "run")
    trainer.train(config, workdir, verbose=0)
    result = evaluation.evaluate_workdir(workdir)
    for name in ("mse_1_step", "mse_10_steps", "baseline_mse_1_step", "baseline_mse_10_steps"):
        assert np.isfinite(result[name]) and result[name + "_ci95"] > 0, name
    assert "accuracy" not in result
    # Adapting helps on unseen tasks: 10 steps beat the meta-learned start.
    assert result["mse_10_steps"] < result["mse_by_step"][0], result
    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f)["mse_1_step"] == result["mse_1_step"]
    events = [f for _, _, files in os.walk(os.path.join(workdir, "logs", "eval")) for f in files]
    assert events, "no TensorBoard image of the adapted curves"

    loaded = tf.saved_model.load(export_workdir(workdir))
    x = np.linspace(-4, 4, 10, dtype=np.float32)[:, None]
    served = loaded.adapt_and_predict(support_x=x, support_y=np.sin(x),
                                      query_x=x[:3])["predictions"].numpy()
    assert served.shape == (3, 1) and np.all(np.isfinite(served))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one target per support_x"):
        loaded.adapt_and_predict(support_x=x, support_y=np.sin(x[:4]), query_x=x[:3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be finite"):
        loaded.adapt_and_predict(support_x=x * np.nan, support_y=np.sin(x), query_x=x[:3])

"""The training run: configs and overrides, checkpoints and resume (also after SIGKILL),
the NaN guard, TensorBoard logs, and the command-line tools (train, evaluate and the served
export end to end: tests/test_own_data_integration.py)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from tfmeta import config as config_lib
from tfmeta.training import optimizer as optimizer_lib
from tfmeta.training import preflight, trainer
from tfmeta.training import run as run_lib

# A MAML run small enough for a test: 8-filter Conv4, 2 tasks per meta-batch, first order.
TINY = ["model.filters=8", "meta_batch_size=2", "learner.first_order=True",
        "val_episodes=4", "eval_meta_batch_size=2", "eval_episodes=20"]


def tiny_config(*overrides):
    config = config_lib.get_config("maml", "omniglot")
    return config_lib.apply_overrides(config, TINY + list(overrides))


def checkpoint_steps(workdir):
    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


def all_checkpoints_readable(workdir):
    state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
    for path in state.all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), (path, name)


def test_overrides_keep_types_and_reject_unknown_fields():
    config = tiny_config("ways=20", "learner.inner_lr=1", "optimizer.clipnorm=5")
    assert config.ways == 20 and config.learner.inner_lr == 1.0
    assert isinstance(config.learner.inner_lr, float) and config.optimizer.clipnorm == 5.0
    with pytest.raises(ValueError, match=r"Unknown config field 'wayz'.*'ways'"):
        config_lib.apply_overrides(config, ["wayz=5"])
    with pytest.raises(ValueError, match="An override is key=value"):
        config_lib.apply_overrides(config, ["ways"])
    with pytest.raises(ValueError, match="Bad value for ways"):
        config_lib.apply_overrides(config, ["ways='five'"])
    # A text field takes the text: --set=jit_compile=True reaches compile() as True.
    jit = tiny_config("jit_compile=True")
    assert jit.jit_compile == "True" and config_lib.jit_compile_flag(jit.jit_compile) is True
    assert config_lib.jit_compile_flag("auto") == "auto" and config_lib.jit_compile_flag("false") is False
    with pytest.raises(ValueError, match="jit_compile must be auto, true or false; got 'fast'"):
        config_lib.jit_compile_flag("fast")


def test_unknown_algo_and_dataset_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown --algo 'mamal'; valid algorithms: \[.*'maml'"):
        config_lib.get_config("mamal", "omniglot")
    with pytest.raises(ValueError, match=r"Unknown --dataset 'omniglott'.*'omniglot'"):
        config_lib.get_config("maml", "omniglott")


def test_paper_settings_per_dataset():
    five = config_lib.get_config("maml", "omniglot", "5w1s")
    assert (five.meta_batch_size, five.learner.inner_lr, five.learner.inner_steps) == (32, 0.4, 1)
    twenty = config_lib.get_config("maml", "omniglot", "20w1s")
    assert (twenty.ways, twenty.meta_batch_size, twenty.learner.inner_lr) == (20, 16, 0.1)


def test_learning_rate_schedules_follow_the_step_count_and_reject_bad_settings():
    def rate_at(optimizer, step):
        optimizer.iterations.assign(step)
        return float(optimizer.learning_rate)

    # Prototypical Networks' halving every 2000 episodes: 1e-3 until step 1999, then 5e-4...
    halving = tiny_config("optimizer.schedule='step'", "optimizer.decay_steps=2000",
                          "optimizer.decay_rate=0.5")
    optimizer = optimizer_lib.make_optimizer(halving.optimizer)
    assert [rate_at(optimizer, s) for s in (0, 1999, 2000, 4000, 6500)] == pytest.approx(
        [1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4])
    # Cosine to 0 over num_steps: lr * (1 + cos(pi * t / T)) / 2.
    cosine = tiny_config("optimizer.schedule='cosine'", "optimizer.learning_rate=0.002")
    optimizer = optimizer_lib.make_optimizer(cosine.optimizer, num_steps=400)
    assert [rate_at(optimizer, s) for s in (0, 100, 200, 400)] == pytest.approx(
        [2e-3, 2e-3 * (1 + np.cos(np.pi / 4)) / 2, 1e-3, 0.0], abs=1e-9)
    assert float(optimizer_lib.make_optimizer(tiny_config().optimizer).learning_rate) == pytest.approx(1e-3)

    with pytest.raises(ValueError, match=r"decay_steps >= 1.*decay_rate=None"):
        optimizer_lib.make_optimizer(tiny_config("optimizer.schedule='step'",
                                           "optimizer.decay_steps=10").optimizer)
    with pytest.raises(ValueError, match=r"one of \('step', 'cosine'\).*'linear'"):
        optimizer_lib.make_optimizer(tiny_config("optimizer.schedule='linear'").optimizer)
    with pytest.raises(ValueError, match="Unknown optimizer 'adamm'"):
        optimizer_lib.make_optimizer(tiny_config("optimizer.name='adamm'").optimizer)


def scalar_tags(logdir):
    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_train_checkpoints_logs_and_resumes(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    halving = ["optimizer.schedule='step'", "optimizer.decay_steps=2", "optimizer.decay_rate=0.5"]
    trainer.train(tiny_config("num_steps=6", "checkpoint_every=3", *halving), workdir, verbose=0)
    assert checkpoint_steps(workdir) == [3, 6]
    saved = config_lib.load_config(os.path.join(workdir, "config.json"))
    assert saved.algo == "maml" and saved.model.filters == 8
    train_tags = scalar_tags(os.path.join(workdir, "logs", "train"))
    assert {"epoch_loss", "epoch_accuracy", "epoch_steps_per_second"} <= train_tags
    assert "epoch_accuracy" in scalar_tags(os.path.join(workdir, "logs", "validation"))

    caplog.set_level("INFO")
    learner = trainer.train(tiny_config("num_steps=9", "checkpoint_every=3", *halving), workdir,
                            verbose=0)
    assert "Resuming" in caplog.text and "from step 6" in caplog.text
    assert int(learner.optimizer.iterations.numpy()) == 9
    # The schedule continues from the restored step: 1e-3 * 0.5 ** (9 // 2), not 1e-3.
    assert float(learner.optimizer.learning_rate) == pytest.approx(1e-3 * 0.5 ** 4)
    assert checkpoint_steps(workdir) == [3, 6, 9]
    all_checkpoints_readable(workdir)


def test_workdir_of_another_experiment_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    trainer.train(tiny_config("num_steps=1", "checkpoint_every=1"), workdir, verbose=0)
    with pytest.raises(ValueError, match=r"holds a run with ways=5, but this run has ways=4"):
        trainer.train(tiny_config("num_steps=2", "ways=4"), workdir, verbose=0)
    def saved(*overrides):
        config = config_lib.load_config(os.path.join(workdir, "config.json"))
        return config_lib.apply_overrides(config, list(overrides))

    with pytest.raises(ValueError, match=r"holds a run with learner=.*'inner_lr': 0.4"):
        preflight.check_workdir_config(saved("learner.inner_lr=0.1"), workdir)
    # The variable sampler's bounds are not a fixed-episode run's experiment; its name is.
    preflight.check_workdir_config(saved("episode_sampler.max_ways=8"), workdir)
    with pytest.raises(ValueError, match=r"holds a run with episode_sampler=\{'name': 'fixed'\}, "
                                         r"but this run has episode_sampler=\{.*'name': 'variable'"):
        preflight.check_workdir_config(saved("episode_sampler.name=variable"), workdir)
    # How a step runs is not the experiment: these resume.
    preflight.check_workdir_config(saved(
        "learner.task_parallel=vectorized", "learner.parallel_tasks=2",
        "learner.recompute=True"), workdir)


def test_configs_recorded_by_earlier_versions_are_read_in_the_current_form(tmp_path):
    """A run's config.json from before regression was its own learner (loss="mse"), before
    ANIL's layer was `head_layer` (head="head"), before episode_sampler and
    episode_grouping existed, and before the sampler's settings were its section, is read (`load_config`, through `tfmeta.migrate`) as this
    version writes it, so it builds and resumes as the same experiment."""
    from tfmeta.migrate import migrate

    def recorded(algo, **learner):
        return {"algo": algo, "dataset": "omniglot", "learner": learner}

    assert migrate(recorded("maml", loss="mse", inner_lr=0.01))["learner"] == {"inner_lr": 0.01}
    assert migrate(recorded("anil", head="head"))["learner"] == {"head_layer": "head"}
    assert migrate(recorded("anil", head="zeros"))["learner"] == {"head": "zeros"}  # a mode
    assert migrate(recorded("protonet", loss="x"))["learner"] == {"loss": "x"}  # not MAML's
    old = recorded("maml", loss="mse")
    assert (migrate(old)["episode_sampler"], migrate(old)["episode_grouping"]) == (
        {"name": "fixed"}, "any")
    variable = {**old, "episode_sampler": "variable", "variable_episodes": {"max_ways": 8}}
    assert migrate(variable)["episode_sampler"] == {"name": "variable", "max_ways": 8}
    assert "variable_episodes" not in migrate(variable)
    assert old == recorded("maml", loss="mse")  # (the recorded dict is left as it was)
    current = config_lib.get_config("anil", "omniglot").to_dict()
    assert migrate(current) == current
    path = tmp_path / "config.json"
    path.write_text(json.dumps(recorded("anil", head="head")))
    assert config_lib.load_config(str(path)).learner.to_dict() == {"head_layer": "head"}
    identity = preflight.learner_identity
    assert identity({"inner_lr": 0.01, "task_parallel": "loop"}) == {"inner_lr": 0.01}


def small_learner(algo, seed):
    """A compiled learner of `algo` on a small Conv4 backbone (8x8 grey images, batch norm,
    whose moving statistics a checkpoint keys under the backbone's attribute alone), every
    weight drawn from `seed`, and its optimizer built, as the trainer builds it before
    restoring."""
    import keras

    from tfmeta.algorithms.maml import MAML
    from tfmeta.algorithms.mann import MANN
    from tfmeta.algorithms.prototypical import PrototypicalNetwork
    from tfmeta.models import conv4

    keras.utils.set_random_seed(seed)
    backbone = conv4((8, 8, 1), num_classes=2 if algo == "maml" else None, filters=3,
                     num_blocks=2)
    learner = {"maml": lambda: MAML(backbone, inner_lr=0.1),
               "protonet": lambda: PrototypicalNetwork(backbone),
               "mann": lambda: MANN(backbone, num_classes=2, units=4, memory_slots=3,
                                    slot_size=2, heads=1)}[algo]()
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    learner.optimizer.build(learner.trainable_variables)
    rng = np.random.default_rng(seed)
    for variable in learner.weights:
        if variable.dtype == "float32":
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32))
    return learner


@pytest.mark.parametrize("algo, old_name", [("maml", "model"), ("protonet", "encoder"),
                                            ("mann", "encoder")])
def test_checkpoints_of_the_backbone_under_its_old_name_restore(tmp_path, algo, old_name):
    """A checkpoint written before the wrapped network was `backbone` everywhere (the MAML
    family's `model`, the metric learners' and MANN's `encoder`) restores every weight into
    a fresh learner (`restore_latest`, through `tfmeta.migrate.checkpoint_learner`); read
    as it is, its batch-norm statistics would be left out, silently (`expect_partial`).
    A checkpoint of the current form still round-trips."""
    from tfmeta.migrate import checkpoint_learner
    from tfmeta.training.checkpoints import (
        checkpoint_manager,
        learner_checkpoint,
        restore_latest,
        untracked_variables,
    )

    def values(learner):
        return [v.numpy() for v in learner.weights]

    def same(learner, expected):
        return all(np.array_equal(a, b) for a, b in zip(values(learner), expected))

    saved = small_learner(algo, seed=1)
    saved.optimizer.iterations.assign(7)
    expected = values(saved)
    children = tf.train.TrackableView(saved).children(saved)
    assert "backbone" in children and old_name not in children
    stand_in = tf.Module()  # the learner as earlier versions tracked it
    for name, child in children.items():
        setattr(stand_in, old_name if name == "backbone" else name, child)
    old = str(tmp_path / "old")
    tf.train.Checkpoint(learner=stand_in, optimizer=saved.optimizer,
                        variables=untracked_variables(saved)).write(
        os.path.join(old, "checkpoints", "ckpt-7"))
    keys = [name for name, _ in tf.train.list_variables(os.path.join(old, "checkpoints",
                                                                     "ckpt-7"))]
    assert any(k.startswith(f"learner/{old_name}/") for k in keys)
    assert not any(k.startswith("learner/backbone/") for k in keys)

    fresh = small_learner(algo, seed=2)
    assert not same(fresh, expected)
    assert checkpoint_learner(fresh, keys) is not fresh
    assert restore_latest(fresh, old) == 7
    assert same(fresh, expected)
    for restored, original in zip(fresh.backbone.weights, saved.backbone.weights, strict=True):
        np.testing.assert_array_equal(restored.numpy(), original.numpy(), restored.path)

    unmigrated = small_learner(algo, seed=2)  # what restoring without the migration gives
    learner_checkpoint(unmigrated).restore(
        os.path.join(old, "checkpoints", "ckpt-7")).expect_partial()
    assert not same(unmigrated, expected)

    current = str(tmp_path / "current")
    checkpoint_manager(saved, os.path.join(current, "checkpoints")).save(checkpoint_number=7)
    again = small_learner(algo, seed=3)
    assert checkpoint_learner(again, [name for name, _ in tf.train.list_variables(
        os.path.join(current, "checkpoints", "ckpt-7"))]) is again
    assert restore_latest(again, current) == 7
    assert same(again, expected)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    trainer.train(tiny_config("num_steps=2", "checkpoint_every=2"), workdir, verbose=0)
    # A learning rate that overflows float32 turns the weights, then the loss, non-finite.
    diverging = tiny_config("num_steps=20", "checkpoint_every=1", "optimizer.learning_rate=1e39")
    with pytest.raises(FloatingPointError, match=r"NaN or infinite at step \d+.*last good "
                                                 r"checkpoint \(step \d+\)"):
        trainer.train(diverging, workdir, verbose=0)
    all_checkpoints_readable(workdir)
    assert max(checkpoint_steps(workdir)) >= 2


def run_cli(script, *args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(ROOT, "bin", script), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def cli_train_args(workdir, steps, every):
    return [f"--workdir={workdir}", f"--num_steps={steps}", "--export=false",
            *[f"--set={o}" for o in TINY + [f"checkpoint_every={every}"]]]


def test_cli_unknown_algo_lists_the_valid_ones():
    proc = run_cli("train.py", "--algo=nope")
    assert proc.returncode != 0
    assert "Unknown --algo 'nope'; valid algorithms:" in proc.stderr


@pytest.mark.slow
def test_sigkill_mid_training_resumes_and_finishes(tmp_path):
    workdir = str(tmp_path / "run")
    args = cli_train_args(workdir, 60, 4)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "train.py"), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not any(s >= 8 for s in checkpoint_steps(workdir)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(checkpoint_steps(workdir))
    assert 8 <= killed_at < 60
    all_checkpoints_readable(workdir)

    rerun = run_cli("train.py", *args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"Resuming {workdir} from step {killed_at}" in rerun.stderr
    assert max(checkpoint_steps(workdir)) == 60
    all_checkpoints_readable(workdir)


def test_a_learner_and_a_dataset_that_do_not_fit_are_refused_before_building(tmp_path):
    maml_on_embeddings = config_lib.apply_overrides(
        config_lib.get_config("maml", "embeddings"), ["num_steps=1"])
    with pytest.raises(ValueError, match=r"MAML takes images, but --dataset=embeddings with "
                                         r"these options gives embeddings"):
        trainer.train(maml_on_embeddings, str(tmp_path / "run"), verbose=0)
    leo_on_images = config_lib.get_config("leo", "omniglot")
    with pytest.raises(ValueError, match=r"LEO takes embeddings, but --dataset=omniglot .* "
                                         r"gives images; write embeddings"):
        config_lib.validate_config(leo_on_images)
    assert not os.path.exists(tmp_path / "run")


def test_jit_compile_auto_keeps_xla_off_where_it_is_a_trap(monkeypatch, caplog):
    """As if on a GPU, where Keras's "auto" turns XLA on: the MAML family declines it (its
    task loop compiles 33x slower under XLA) and says why; ProtoNet takes it; an explicit
    true is obeyed."""
    import keras

    monkeypatch.setattr(keras.Model, "_resolve_auto_jit_compile", lambda self: True)
    caplog.set_level("INFO")
    maml = run_lib.build_compiled_learner(tiny_config(), (28, 28, 1))
    assert maml.jit_compile is False
    assert "XLA off for MAML: XLA was measured slower for this family" in caplog.text
    forced = run_lib.build_compiled_learner(tiny_config("jit_compile=true"), (28, 28, 1))
    assert forced.jit_compile is True
    protonet = config_lib.apply_overrides(config_lib.get_config("protonet", "omniglot"),
                                          ["model.filters=4"])
    assert run_lib.build_compiled_learner(protonet, (28, 28, 1)).jit_compile is True

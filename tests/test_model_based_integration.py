"""End to end on Omniglot: train each of issue 6's learners with the library trainer on a
shrunken config (14x14 images, small nets, CI-sized step counts), then evaluate 5-way
1-shot on the test alphabets, which training never sees. One run goes through the CLI.
MANN's longer run is in test_mann_integration.py (its own file, so that the two test
processes share the load).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfmeta.config import apply_overrides, get_config
from tfmeta.data import EpisodeShape, load_dataset
from tfmeta.evaluation import evaluate
from tfmeta.training.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["data.image_size=14", "model.filters=16", "model.num_blocks=3", "meta_batch_size=8",
         "val_episodes=20", "eval_meta_batch_size=20"]
# (algo, steps, extra overrides): sized for ~30-60 s of training on two idle CPU cores.
RUNS = {
    "metasgd": (150, ["queries=5", "learner.inner_steps_test=1", "optimizer.learning_rate=0.003"]),
    "anil": (150, ["queries=5", "optimizer.learning_rate=0.003"]),
    "lstm_meta": (150, ["queries=5", "learner.inner_steps=3", "learner.inner_steps_test=3",
                        "optimizer.learning_rate=0.003"]),
    "metanet": (150, ["queries=5", "optimizer.learning_rate=0.002"]),
}
CHANCE = 0.2


def shrunk_config(algo, steps, extra):
    config = get_config(algo, "omniglot", "5w1s")
    small = [o for o in SMALL if config.model.name != "none" or not o.startswith("model.")]
    return apply_overrides(config, small + extra + [f"num_steps={steps}",
                                                    f"checkpoint_every={steps}"])


@pytest.fixture(scope="module")
def test_alphabets():
    return load_dataset("omniglot", image_size=14).split("test")


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(RUNS))
def test_trains_above_chance_on_held_out_alphabets(algo, tmp_path, test_alphabets):
    steps, extra = RUNS[algo]
    config = shrunk_config(algo, steps, extra)
    learner = train(config, str(tmp_path / algo), verbose=0)
    result = evaluate(learner, test_alphabets, EpisodeShape(5, 1, 5), num_episodes=200, seed=1234)
    print(f"{algo}: 5-way 1-shot on test alphabets {result['accuracy']:.3f} "
          f"+- {result['ci95']:.3f}")
    assert_above_chance(result)


def assert_above_chance(result):
    """Above chance by the 95% interval and a margin."""
    assert result["accuracy"] - result["ci95"] > CHANCE + 0.05, result


@pytest.mark.slow
def test_cli_train_evaluate_and_serve(tmp_path):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    flags = [f"--set={item}" for item in SMALL + ["queries=2", "val_episodes=8"]]
    subprocess.run([sys.executable, os.path.join(ROOT, "bin", "train.py"), "--algo=anil",
                    f"--workdir={workdir}", "--num_steps=4", "--set=checkpoint_every=4",
                    *flags], check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "evaluate.py"),
                           f"--workdir={workdir}", "--episodes=20"], check=True, env=env,
                          capture_output=True, text=True, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["algo"] == "anil" and result["split"] == "test" and result["episodes"] == 20
    # What the command printed is what it wrote, over exactly 20 x 5 x 2 scored queries.
    with open(os.path.join(workdir, "eval.json")) as f:
        assert json.load(f) == result
    correct = result["accuracy"] * 20 * 5 * 2
    assert result["queries"] == 2 and abs(correct - round(correct)) < 1e-3, correct
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(workdir, "export"))
    raw = np.random.default_rng(0).uniform(size=(10, 105, 105, 1)).astype(np.float32)
    logits = loaded.signatures["adapt_and_predict"](
        support_images=tf.constant(raw[:5]), support_labels=tf.range(5),
        query_images=tf.constant(raw[5:]))["logits"]
    assert logits.shape == (5, 5)

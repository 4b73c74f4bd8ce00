"""Every learner's exported SavedModel, driven with a few hundred random malformed requests
in a fresh process: each call returns finite outputs of the right shape or raises an error
Python can catch, and the serving process never dies (before issue 12, an empty support
set aborted MAML's serving process in C++, rc 134)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfmeta.algorithms import ALGORITHMS, build_learner, recipe_of
from tfmeta.config import apply_overrides, get_config, tiny_overrides, validate_config
from tfmeta.data import ClassImages, FewShotDataset
from tfmeta.data.leo_embeddings import l2_normalize
from tfmeta.training.export import export_learner

# Each algorithm is built from its own config shrunk by the config's TINY overrides
# (`tiny_overrides`), for the dataset below of the kind of input its learner takes
# (`recipe_of(algo).input_kinds`); no list here names a learner.
# Exports that take episodes of examples: fuzzed by the first test.
EPISODE_KINDS = {"images": "omniglot", "embeddings": "mini_imagenet"}
# Exports that serve another signature, fuzzed by the last test: MAML-RL's adapt_and_act.
OTHER_KINDS = {"environment": "navigation_2d"}
CALLS_PER_EXPORT = 30

FUZZ = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf

    exports = json.loads(sys.argv[1])
    calls = int(sys.argv[2])
    rng = np.random.default_rng(0)
    # Each request is a valid episode with, 70% of the time, one thing wrong with it.
    VALUES = ["nan", "inf", "255", "negative"]
    LABELS = ["gap", "negative label", "count", "int64", "too many ways"]
    SHAPES = ["empty support", "empty query", "small", "rank", "float64", "zero samples"]
    summary = {}

    for name, (path, raw_shape, bounded, max_ways) in exports.items():
        loaded = tf.saved_model.load(path)
        generator = "adapt_and_generate" in loaded.signatures
        served = {"ok": 0, "rejected": 0, "valid_rejected": [], "faults": {}}
        for call in range(calls):
            fault = "none" if rng.uniform() < 0.3 else str(rng.choice(VALUES + LABELS + SHAPES))
            top = max_ways or 7
            ways = top + 1 if fault == "too many ways" else int(rng.integers(1, top + 1))
            shots, queries = int(rng.integers(1, 3)), int(rng.integers(1, 4))
            if fault == "empty support":
                shots = 0
            if fault == "empty query":
                queries = 0
            shape = tuple(raw_shape)
            if fault == "small":
                shape = tuple(max(1, s // 2) for s in shape)
            elif fault == "rank":
                shape = shape[:-1]
            support = rng.uniform(0, 1, size=(ways * shots, *shape)).astype(np.float32)
            query = rng.uniform(0, 1, size=(queries, *shape)).astype(np.float32)
            if fault == "nan":
                support.flat[0] = np.nan
            elif fault == "inf":
                query.flat[-1] = np.inf
            elif fault == "255":
                support = support * 255
            elif fault == "negative":
                query.flat[0] = -0.5
            elif fault == "float64":
                support = support.astype(np.float64)
            labels = np.repeat(np.arange(ways), shots).astype(np.int32)
            if fault == "gap":
                labels = np.where(labels == labels.max(), labels.max() + 1, labels)
            elif fault == "negative label":
                labels[0] = -1
            elif fault == "count":
                labels = labels[:-1]
            elif fault == "int64":
                labels = labels.astype(np.int64)
            count = np.int32(0 if fault == "zero samples" else 3)
            if generator:  # it is sent the support images and a sample count only
                valid = fault not in ("nan", "255", "float64", "small", "rank",
                                      "empty support", "zero samples")
            else:
                valid = fault in ("none", "zero samples") or (
                    fault in ("255", "negative") and not bounded) or (
                    fault == "too many ways" and max_ways is None)
            try:
                if generator:
                    out = loaded.signatures["adapt_and_generate"](
                        images=tf.constant(support), num_samples=tf.constant(count))[
                            "samples"].numpy()
                    expected = (int(count), *raw_shape)
                else:
                    out = loaded.signatures["adapt_and_predict"](
                        support_images=tf.constant(support), support_labels=tf.constant(labels),
                        query_images=tf.constant(query))["logits"].numpy()
                    expected = (queries, ways)
            except Exception as error:  # a request error the client can catch
                served["rejected"] += 1
                served["faults"][fault] = served["faults"].get(fault, 0) + 1
                if valid:
                    served["valid_rejected"].append(f"{fault}: {type(error).__name__}: "
                                                    f"{error}"[:300])
                continue
            assert not (not valid and fault != "none"), (name, "served a faulty request", fault)
            assert out.shape == expected, (name, out.shape, expected)
            assert np.all(np.isfinite(out)), (name, "non-finite outputs")
            served["ok"] += 1
        summary[name] = served
    print("FUZZ " + json.dumps(summary))
""")


def kind_of(algo, kinds):
    """The first kind of input in `kinds` that `algo`'s learner takes (None: none)."""
    return next((k for k in recipe_of(algo).input_kinds if k in kinds), None)


def test_every_algorithm_shrinks_and_is_fuzzed():
    """Every algorithm's config declares tiny overrides that apply and validate, and its
    learner takes a kind of input one of the tests here fuzzes."""
    kinds = {**EPISODE_KINDS, **OTHER_KINDS}
    for algo in sorted(ALGORITHMS):
        kind = kind_of(algo, kinds)
        assert kind is not None, (
            f"{algo} takes {recipe_of(algo).input_kinds}; no test here fuzzes its exports")
        validate_config(apply_overrides(get_config(algo, kinds[kind]), tiny_overrides(algo)))


def embedding_dataset():
    rng = np.random.default_rng(0)
    classes = ClassImages.from_dense(rng.normal(size=(8, 6, 16)).astype(np.float32))
    return FewShotDataset("embeddings", {"train": classes, "val": classes, "test": classes},
                          (16,), l2_normalize, value_range=None)


@pytest.mark.slow
def test_every_export_survives_malformed_requests(omniglot, tmp_path):
    data = {"images": omniglot, "embeddings": embedding_dataset()}
    exports = {}
    for algo in sorted(a for a in ALGORITHMS if kind_of(a, EPISODE_KINDS)):
        kind = kind_of(algo, EPISODE_KINDS)
        config = apply_overrides(get_config(algo, EPISODE_KINDS[kind]), tiny_overrides(algo))
        dataset = data[kind]
        keras.utils.set_random_seed(0)
        learner = build_learner(config, dataset.input_shape)
        path = export_learner(learner, dataset, str(tmp_path / algo))
        exports[algo] = (path, list(dataset.raw_shape), dataset.value_range is not None,
                         getattr(learner, "max_ways", None))  # a classifier's
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", FUZZ, json.dumps(exports),
                           str(CALLS_PER_EXPORT)], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-4000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1][len("FUZZ "):])
    print(json.dumps(summary, indent=1))
    for name, served in summary.items():
        assert served["ok"] + served["rejected"] == CALLS_PER_EXPORT, name
        assert served["ok"] > 0 and served["rejected"] > 0, (name, served)
        assert not served["valid_rejected"], (name, served["valid_rejected"])
    assert sum(served["rejected"] for served in summary.values()) >= 150


FUZZ_TASKS = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf

    paths = json.loads(sys.argv[1])
    rng = np.random.default_rng(0)
    summary = {}
    SCALES = [1.0, 1e3, 1e6, 1e30]
    for name, path in paths.items():
        loaded = tf.saved_model.load(path)
        served = {"ok": 0, "rejected": 0, "valid_rejected": []}
        for call in range(int(sys.argv[2])):
            fault = str(rng.choice(["none", "scale", "nan", "empty", "shape"]))
            scale = float(rng.choice(SCALES)) if fault == "scale" else 1.0
            try:
                if name == "regression":
                    k, m = int(rng.integers(1, 6)), int(rng.integers(1, 4))
                    x = rng.uniform(-5, 5, (k, 1)).astype(np.float32) * scale
                    y = np.sin(x) * scale
                    q = rng.uniform(-5, 5, (0 if fault == "empty" else m, 1)).astype(np.float32)
                    if fault == "nan":
                        x[0, 0] = np.nan
                    if fault == "shape":
                        y = y[:, :0]
                    out = loaded.signatures["adapt_and_predict"](
                        support_x=tf.constant(x), support_y=tf.constant(y, tf.float32),
                        query_x=tf.constant(q * scale))["predictions"].numpy()
                    expected = (q.shape[0], 1)
                else:
                    goal = (rng.uniform(-0.5, 0.5, 2) * scale).astype(np.float32)
                    n = 0 if fault == "empty" else int(rng.integers(1, 4))
                    obs = rng.uniform(-0.5, 0.5, (n, 3 if fault == "shape" else 2))
                    if fault == "nan":
                        goal[0] = np.nan
                    out = loaded.signatures["adapt_and_act"](
                        goal=tf.constant(goal), observations=tf.constant(obs, tf.float32))[
                            "actions"].numpy()
                    expected = (n, 2)
            except Exception as error:  # a request error the client can catch
                served["rejected"] += 1
                if fault == "none":
                    served["valid_rejected"].append(f"{type(error).__name__}: {error}"[:300])
                continue
            assert out.shape == expected, (name, fault, out.shape, expected)
            assert np.all(np.isfinite(out)), (name, fault, scale, "non-finite outputs")
            served["ok"] += 1
        summary[name] = served
    print("FUZZ " + json.dumps(summary))
""")


@pytest.mark.slow
def test_regression_and_rl_exports_answer_finite_or_refuse(tmp_path):
    """The sinusoid and 2D-navigation exports under random requests, scaled up to 1e30:
    finite outputs of the right shape, or an error the client can catch. Before: inputs
    x 1000 gave all-NaN predictions, and a huge goal "matrix is not invertible"."""
    from tfmeta.data import load_dataset

    exports = {}
    tasks = [("regression", "maml", "sinusoid", [])] + [
        (algo, algo, OTHER_KINDS[kind_of(algo, OTHER_KINDS)], tiny_overrides(algo))
        for algo in sorted(ALGORITHMS) if kind_of(algo, OTHER_KINDS)]
    for name, algo, dataset, overrides in tasks:
        config = apply_overrides(get_config(algo, dataset), overrides)
        data = load_dataset(dataset, **config.data)
        keras.utils.set_random_seed(0)
        learner = build_learner(config, data.input_shape)
        exports[name] = export_learner(learner, data, str(tmp_path / name))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", FUZZ_TASKS, json.dumps(exports), "40"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-4000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1][len("FUZZ "):])
    for name, served in summary.items():
        assert served["ok"] > 0 and served["rejected"] > 0, (name, served)
        assert not served["valid_rejected"], (name, served["valid_rejected"])

"""End to end: a briefly trained MAML backbone writes Omniglot embeddings in the LEO
layout (bin/write_embeddings.py); LEO meta-trains on them and, on the held-out test
alphabets, is well above chance; the exported model serves raw embeddings."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT


@pytest.mark.slow
def test_leo_on_omniglot_embeddings_of_a_trained_maml_backbone(tmp_path):
    from tfmeta.config import apply_overrides, get_config
    from tfmeta.training import evaluation, export, trainer

    maml_dir, leo_dir, embeddings_dir = (str(tmp_path / d) for d in ("maml", "leo", "emb"))
    maml = apply_overrides(get_config("maml", "omniglot", "5w1s"), [
        "model.filters=32", "meta_batch_size=8", "num_steps=100", "checkpoint_every=100",
        "val_episodes=8", "eval_meta_batch_size=8"])
    trainer.train(maml, maml_dir, verbose=0)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "write_embeddings.py"),
         f"--workdir={maml_dir}", f"--output_dir={embeddings_dir}", "--name=Omniglot",
         # The last feature map before pooling: 3x3x32 = 288 features (the 1x1x32 of
         # the head's input are too few for a useful embedding).
         "--layer=block3_pool"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test_pickle = os.path.join(embeddings_dir, "Omniglot", "center", "test_embeddings.pkl")
    with open(test_pickle, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert raw["embeddings"].shape == (59 * 20, 288)

    leo = apply_overrides(get_config("leo", "embeddings", "5w1s"), [
        "num_steps=500", "checkpoint_every=500", "val_episodes=20",
        "optimizer.learning_rate=1e-3"])
    trainer.train(leo, leo_dir, data_dir=embeddings_dir, verbose=0)
    result = evaluation.evaluate_workdir(leo_dir, data_dir=embeddings_dir, num_episodes=200)
    print(f"LEO on Omniglot test alphabets, 5-way 1-shot: {result}")
    assert result["queries"] == 19  # every remaining drawing of each character
    # Chance is 0.2; nearest-neighbour on these features gets about 0.5.
    assert result["accuracy"] > 0.45, result

    # The export serves raw (unnormalized) embeddings of held-out characters.
    loaded = tf.saved_model.load(export.export_workdir(leo_dir, embeddings_dir))
    order = np.argsort([k.split("-")[1] for k in raw["keys"]], kind="stable")
    per_class = raw["embeddings"][order].reshape(59, 20, -1)[:5]
    support, query = per_class[:, 0], per_class[:, 1:].reshape(-1, per_class.shape[-1])
    logits = loaded.signatures["adapt_and_predict"](
        support_images=tf.constant(support), support_labels=tf.range(5),
        query_images=tf.constant(query))["logits"].numpy()
    assert logits.shape == (5 * 19, 5)
    assert np.mean(logits.argmax(-1) == np.repeat(np.arange(5), 19)) > 0.3

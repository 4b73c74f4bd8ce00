"""The meta-step under MirroredStrategy on two logical CPU devices.

Logical devices must be configured before TensorFlow initializes, so the check runs
in a fresh process: one meta-step on 2 replicas (each takes half the meta-batch) must
give the same weights as the same step on one device, and the trainer's fit path
must run under the mirrored strategy.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

SCRIPT = textwrap.dedent("""
    import sys, tempfile
    sys.path.insert(0, {root!r})
    from tfmeta.training.strategy import make_strategy, split_cpu
    split_cpu(2)
    import keras, numpy as np, tensorflow as tf
    from tfmeta import config as config_lib
    from tfmeta.algorithms import MAML
    from tfmeta.data import EpisodeShape, episode_dataset, load_dataset
    from tfmeta.models import conv4
    from tfmeta.training import trainer

    data = load_dataset("omniglot")
    batch = next(iter(episode_dataset(data.split("train"), EpisodeShape(5, 1, 2), 4, seed=0)))

    def one_step(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            learner = MAML(conv4((28, 28, 1), num_classes=5, filters=8), inner_lr=0.4)
            learner.compile(optimizer=keras.optimizers.SGD(0.5))
        initial = [v.numpy() for v in learner.trainable_variables]
        learner.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False)
        after = [v.numpy() for v in learner.trainable_variables]
        assert max(np.abs(a - b).max() for a, b in zip(initial, after)) > 1e-3  # it did move
        return after

    mirrored = make_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
    single = one_step(tf.distribute.get_strategy())
    double = one_step(mirrored)
    for a, b in zip(single, double):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    config = config_lib.apply_overrides(config_lib.get_config("maml", "omniglot"), [
        "model.filters=8", "meta_batch_size=4", "num_steps=2", "checkpoint_every=2",
        "val_episodes=4", "eval_meta_batch_size=4", "strategy='mirrored'"])
    learner = trainer.train(config, tempfile.mkdtemp(), verbose=0)
    assert int(learner.optimizer.iterations.numpy()) == 2
    try:
        trainer.train(config_lib.apply_overrides(config, ["meta_batch_size=3"]),
                      tempfile.mkdtemp(), verbose=0)
        raise SystemExit("an odd meta-batch on 2 replicas was accepted")
    except ValueError as error:
        assert "does not split over 2 replicas" in str(error), error
    try:  # Pretrain's training batches are batch_size examples, not meta_batch_size episodes
        trainer.train(config_lib.apply_overrides(config_lib.get_config("pretrain", "omniglot"), [
            "model.filters=8", "batch_size=3", "meta_batch_size=4", "strategy='mirrored'"]),
            tempfile.mkdtemp(), verbose=0)
        raise SystemExit("an odd pre-training batch on 2 replicas was accepted")
    except ValueError as error:
        assert "--set=batch_size=3 does not split over 2 replicas" in str(error), error
    print("DISTRIBUTED OK")
""")


@pytest.mark.distributed
@pytest.mark.slow
def test_mirrored_meta_step_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(root=ROOT)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "DISTRIBUTED OK" in proc.stdout, proc.stderr[-4000:]

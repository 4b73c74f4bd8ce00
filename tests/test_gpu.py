"""On a GPU (skipped where TensorFlow sees none): the one_device strategy places the
learner's variables and the meta-step on the GPU, and mixed precision trains there with
float16 compute, float32 variables and a finite loss. CPU-only machines run everything
else; nothing in tfmeta assumes a GPU."""

import keras
import pytest
import tensorflow as tf

from tests.test_trainer import tiny_config
from tfmeta.episode_spec import DataSpec
from tfmeta.training import trainer


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("mixed_precision", [False, True])
def test_training_runs_on_the_gpu(tmp_path, omniglot, mixed_precision):
    try:
        config = tiny_config("num_steps=3", "checkpoint_every=3", "strategy='one_device'",
                             f"mixed_precision={mixed_precision}")
        learner = trainer.train(config, str(tmp_path / "run"), verbose=0)
        assert all("GPU" in v.value.device.upper() for v in learner.trainable_variables)
        assert all(v.dtype == "float32" for v in learner.trainable_variables)
        _, validation = learner.training_episodes(omniglot, DataSpec.from_config(config))
        logits = learner.query_logits(next(iter(validation)), training=False)
        assert bool(tf.reduce_all(tf.math.is_finite(logits)))
        if mixed_precision:
            assert keras.mixed_precision.global_policy().compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")

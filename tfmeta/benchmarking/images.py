"""Image-benchmark backbones at mini-ImageNet's size (84x84x3), each case built from its
config at the mini-ImageNet settings, on synthetic data:

  protonet_resnet12_5w5s    ProtoNet with ResNet-12 (configs/protonet.py, 5w5s: 20-way
                            training episodes, 15 queries): meta-step time, and latency of
                            the exported `adapt_and_predict` on one 5-way 5-shot episode
                            with 75 queries.
  maml_conv4_5w1s           MAML's mini-ImageNet model (configs/maml.py, 5w1s): meta-step.
  maml_{conv4,resnet12}_5w5s[_recompute]  the same at 5w5s (5 inner steps, second
                            order; Conv4, or ResNet-12 64-160-320-640), without and with
                            `learner.recompute`: meta-step and peak memory.
  pretrain_resnet12         supervised pre-training (configs/pretrain.py): training images
                            per second (batch 64, ResNet-12 with DropBlock).

Synthetic `ClassImages` (64 training classes of 20 uniform-noise images) stand in for
mini-ImageNet's pixels: the timings do not depend on the pixels, and the cases run without
the dataset. Memory is the process's peak resident size (bin/benchmark.py reports it).
"""

from __future__ import annotations

import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfmeta.benchmarking.common import time_function, time_train_steps
from tfmeta.data import ClassImages, FewShotDataset
from tfmeta.episode_spec import DataSpec

SHAPE = (84, 84, 3)
# The paper-width ResNet-12 (64-160-320-640).
RESNET12 = ("model.name=resnet12", "model.filters=64")


def synthetic_dataset(classes: int = 64, per_class: int = 20) -> FewShotDataset:
    """uint8 noise images, decoded to [0, 1] floats by the split's transform."""
    rng = np.random.default_rng(0)

    def split(count):
        pixels = rng.integers(0, 256, size=(count, per_class, *SHAPE), dtype=np.uint8)
        return ClassImages.from_dense(pixels, transform=lambda x: tf.cast(x, tf.float32) / 255.0)

    return FewShotDataset("synthetic_84", {"train": split(classes), "val": split(16),
                                           "test": split(16)}, SHAPE, lambda x: x,
                          "synthetic 84x84x3 noise")


def build_case(algo: str, setting: str, overrides=()):
    """(config, learner) of `configs/<algo>.py` at its mini-ImageNet settings with
    `overrides`, built for 84x84x3 inputs as the trainer builds it (with its CPU threads)."""
    from tfmeta.config import apply_overrides, get_config
    from tfmeta.training import cpu_threads
    from tfmeta.training.run import build_compiled_learner

    config = apply_overrides(get_config(algo, "mini_imagenet", setting), list(overrides))
    cpu_threads.configure(config)
    keras.utils.set_random_seed(0)
    return config, build_compiled_learner(config, SHAPE)


def _train_timing(algo, setting, overrides, steps):
    config, learner = build_case(algo, setting, overrides)
    dataset = synthetic_dataset()
    train, _ = learner.training_episodes(dataset, DataSpec.from_config(config))
    return config, learner, dataset, time_train_steps(learner, train, steps)


def protonet_resnet12(steps: int) -> dict:
    config, learner, dataset, result = _train_timing(
        "protonet", "5w5s", RESNET12, steps)
    result.update(train_ways=config.ways, train_queries=config.queries)
    rng = np.random.default_rng(0)
    args = dict(support_images=tf.constant(rng.uniform(size=(25, *SHAPE)), tf.float32),
                support_labels=tf.constant(np.repeat(np.arange(5), 5), tf.int32),
                query_images=tf.constant(rng.uniform(size=(75, *SHAPE)), tf.float32))
    from tfmeta.training.export import export_learner

    with tempfile.TemporaryDirectory() as path:
        export_learner(learner, dataset, path)
        serve = tf.saved_model.load(path).signatures["adapt_and_predict"]
        timing = time_function(lambda: serve(**args), (), max(steps, 5))
    result.update(serve_5w5s_first_call_s=timing["first_call_s"],
                  serve_5w5s_median_ms=timing["median_ms"])
    return result


def maml_conv4(steps: int) -> dict:
    config, _, _, result = _train_timing("maml", "5w1s", [], steps)
    result.update(meta_batch_size=config.meta_batch_size,
                  inner_steps=config.learner.get("inner_steps"))
    return result


def maml_5w5s(recompute: bool, overrides=()):
    """Second-order MAML at its mini-ImageNet 5-shot settings (5 inner steps), each inner
    step's activations kept for the meta-gradient or recomputed (`learner.recompute`)."""
    def run(steps: int) -> dict:
        config, _, _, result = _train_timing(
            "maml", "5w5s", [f"learner.recompute={recompute}", *overrides], steps)
        result.update(meta_batch_size=config.meta_batch_size,
                      inner_steps=config.learner.get("inner_steps"), recompute=recompute)
        return result

    return run


def pretrain_resnet12(steps: int) -> dict:
    config, _, _, result = _train_timing("pretrain", "5w1s", [], steps)
    result["images_per_s"] = config.batch_size / (result["median_ms_per_step"] / 1000)
    result["batch_size"] = config.batch_size
    return result


CASES = {"protonet_resnet12_5w5s": protonet_resnet12, "maml_conv4_5w1s": maml_conv4,
         "maml_conv4_5w5s": maml_5w5s(False),
         "maml_conv4_5w5s_recompute": maml_5w5s(True),
         # A task per core, which cpu_threads="auto" does not take for a meta-batch of 2.
         "maml_conv4_5w5s_tasks_threads": maml_5w5s(False, ("cpu_threads=tasks",)),
         # Over 24 GB without recompute (docs/performance.md).
         "maml_resnet12_5w5s": maml_5w5s(False, RESNET12),
         "maml_resnet12_5w5s_recompute": maml_5w5s(True, RESNET12),
         "pretrain_resnet12": pretrain_resnet12}

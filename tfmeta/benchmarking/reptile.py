"""Reptile at the paper's Omniglot 5-way 1-shot training settings (meta-batch 5, 10 training
shots, 5 Adam steps with batch 10, Conv4 with 64 filters and strided convolutions), and
Reptile-GAN at FIGR's settings (4 images per task, 10 inner steps) on synthetic 28x28 tasks
(no MNIST file needed)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmeta.algorithms.reptile import Reptile
from tfmeta.algorithms.reptile_gan import ReptileGAN
from tfmeta.benchmarking.common import time_function, time_train_steps
from tfmeta.data import episode_dataset, load_dataset
from tfmeta.models import conv4
from tfmeta.models.resnet_gan import resnet_critic, resnet_generator

WAYS, TRAIN_SHOTS, META_BATCH = 5, 10, 5


def _reptile_case(transductive: bool = True):
    def run(steps: int) -> dict:
        dataset = load_dataset("omniglot")
        episodes = episode_dataset(dataset.split("train"), WAYS, TRAIN_SHOTS, 1, META_BATCH)
        learner = Reptile(conv4(dataset.input_shape, num_classes=WAYS, downsample="strided"),
                          inner_steps=5, inner_batch_size=10, inner_steps_test=50,
                          transductive=transductive)
        learner.compile(optimizer=keras.optimizers.SGD())
        result = time_train_steps(learner, episodes, steps)
        test = next(iter(episode_dataset(dataset.split("test"), WAYS, 1, 1, 20, seed=1)))
        evaluate = tf.function(lambda batch: learner.query_logits(batch, training=False))
        timing = time_function(evaluate, (test,), max(2, steps // 5))
        result["eval_50_steps_ms_per_20_episodes"] = timing["median_ms"]
        return result

    return run


def _reptile_gan_case(filters: int):
    def run(steps: int) -> dict:
        shape = (28, 28, 1)
        learner = ReptileGAN(resnet_generator(shape, filters=filters),
                             resnet_critic(shape, filters=filters), inner_steps=10)
        learner.compile(optimizer=keras.optimizers.Adam(1e-4))
        rng = np.random.default_rng(0)
        tasks = tf.data.Dataset.from_tensors(
            {"images": rng.uniform(size=(1, 4, *shape)).astype(np.float32)}).repeat()
        return time_train_steps(learner, tasks, steps)

    return run


CASES = {
    "reptile_omniglot_5w1s": _reptile_case(),
    "reptile_omniglot_5w1s_non_transductive": _reptile_case(transductive=False),
    "reptile_gan_figr_64": _reptile_gan_case(64),
    "reptile_gan_figr_16": _reptile_gan_case(16),
}

"""LEO at the paper's mini-ImageNet 5-way 1-shot settings (configs/leo.py): meta-batch 12,
15 queries per class, 640-d embeddings, 64 latents, 5 latent and 5 fine-tuning steps,
second order. Synthetic L2-normalized embeddings of the right shape stand in for the
released files (the timing depends only on shapes)."""

from __future__ import annotations

import numpy as np

from tfmeta.algorithms import leo
from tfmeta.benchmarking.common import time_train_steps
from tfmeta.config import get_config
from tfmeta.data import ClassImages, EpisodeShape, episode_dataset
from tfmeta.training.run import build_compiled_learner

EMBEDDING_DIM, CLASSES, PER_CLASS = 640, 64, 40


def synthetic_embeddings(seed: int = 0) -> ClassImages:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(CLASSES, PER_CLASS, EMBEDDING_DIM)).astype(np.float32)
    return ClassImages.from_dense(images / np.linalg.norm(images, axis=-1, keepdims=True))


def _leo_case(setting: str):
    def run(steps: int) -> dict:
        config = get_config("leo", "mini_imagenet", setting)
        episodes = episode_dataset(synthetic_embeddings(),
                                   EpisodeShape(config.ways, config.shots, config.queries),
                                   config.meta_batch_size)
        learner = build_compiled_learner(config, (EMBEDDING_DIM,))
        if not isinstance(learner, leo.LEO):
            raise TypeError(f"configs/leo.py built a {type(learner).__name__}")
        result = time_train_steps(learner, episodes, steps)
        result["meta_steps_per_s"] = 1000.0 / result["median_ms_per_step"]
        return result

    return run


CASES = {
    "leo_mini_imagenet_5w1s": _leo_case("5w1s"),
    "leo_mini_imagenet_5w5s": _leo_case("5w5s"),
}

"""A backbone from outside, frozen with cached features against trained (issue 31): ProtoNet
on the bundled Omniglot around keras.applications' MobileNetV3Small at 64x64 (random
weights: the cost does not depend on them), per episode.

  pretrained_frozen_cached   model.trainable=none: the features of every image computed
                             once (`feature_cache_s`, all 14,500 images), then episodes on
                             them; nothing trains (ProtoNet's metric has no weights)
  pretrained_last1           model.trainable=last:1: its last block trains
  pretrained_all             model.trainable=all: the whole backbone trains

Each reports `train_ms_per_episode` (5-way 1-shot, 15 queries per class: one meta-step of
one episode; none where nothing trains) and `test_ms_per_episode` (the same episodes
scored in meta-batches of 20, as `bin/evaluate.py` does), and the runner adds the
process's peak memory.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import tensorflow as tf

from tfmeta.benchmarking.common import _block, time_train_steps

BACKBONE = ("model.name=keras_applications:MobileNetV3Small", "model.weights=none",
            "model.image_size=64")
EPISODES = ("ways=5", "queries=15", "meta_batch_size=1")
TEST_BATCH = 20


def _case(trainable: str):
    def run(steps: int) -> dict:
        from tfmeta.config import apply_overrides, get_config, validate_config
        from tfmeta.data import EpisodeShape, episode_dataset, load_dataset
        from tfmeta.episode_spec import DataSpec
        from tfmeta.training import cpu_threads
        from tfmeta.training.run import build_compiled_learner, learner_dataset

        config = apply_overrides(get_config("protonet", "omniglot"),
                                 [*BACKBONE, f"model.trainable={trainable}", *EPISODES])
        validate_config(config)
        cpu_threads.configure(config)
        dataset = load_dataset("omniglot", **config.data)
        with tempfile.TemporaryDirectory() as cache:  # features computed, not read back
            previous = os.environ.get("TFMETA_CACHE")
            os.environ["TFMETA_CACHE"] = cache
            start = time.perf_counter()
            dataset = learner_dataset(config, dataset)
            feature_cache_s = time.perf_counter() - start
            if previous is None:
                del os.environ["TFMETA_CACHE"]
            else:
                os.environ["TFMETA_CACHE"] = previous
        learner = build_compiled_learner(config, dataset.input_shape)
        result = {"trainable": trainable, "trainable_weights": int(sum(
            v.numpy().size for v in learner.trainable_variables))}
        if trainable == "none":
            result["feature_cache_s"] = feature_cache_s
        if learner.trainable_variables:
            train, _ = learner.training_episodes(dataset, DataSpec.from_config(config))
            timed = time_train_steps(learner, train, steps)
            result.update(train_ms_per_episode=timed["median_ms_per_step"],
                          first_train_step_s=timed["first_step_s"])
        episodes = [batch for batch in episode_dataset(
            dataset.split("test"), EpisodeShape(5, 1, 15), TEST_BATCH, seed=1,
            num_episodes=TEST_BATCH * (steps + 1))]
        score = tf.function(lambda batch: learner.query_logits(batch, training=False))
        _block(score(episodes[0]))
        times = []
        for batch in episodes[1:]:
            start = time.perf_counter()
            _block(score(batch))
            times.append(time.perf_counter() - start)
        result["test_ms_per_episode"] = 1000 * statistics.median(times) / TEST_BATCH
        return result

    return run


CASES = {"pretrained_frozen_cached": _case("none"), "pretrained_last1": _case("last:1"),
         "pretrained_all": _case("all")}

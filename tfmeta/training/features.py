"""A frozen backbone's features, computed once (`model.trainable=none`).

A backbone frozen whole gives every image the same features in every episode, so they are
computed once per dataset, in inference mode, cached on disk beside the decoded images
(`$TFMETA_CACHE`), and the learner trains and evaluates on them:

    features = backbone(preprocess(images))           # once per image: [n, *F]
    learner = Learner(on_features(F))                 # ProtoNet: the features as they are;
                                                      # MAML, ANIL, Pretrain: a linear head

ProtoNet, the heads and LEO (through bin/write_embeddings.py) then train in seconds on a
CPU, and a 600-episode evaluation runs the backbone once per image, not per episode.

The dataset the learner sees (`frozen_features`) holds features in its splits; its
`preprocess` is the dataset's own followed by the backbone (`FrozenFeatures`, a tf.Module),
so the export still takes raw images and carries the backbone's weights. A run's checkpoint
holds only what trains, so config.json records a fingerprint of the frozen backbone's
weights (`data_source.backbone`), and a run whose backbone has changed since is refused
rather than scored with other features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import numpy as np
import tensorflow as tf

from tfmeta.data import EpisodeShape, episode_dataset
from tfmeta.data.base import load_cached_arrays
from tfmeta.data.classes import ClassImages
from tfmeta.errors import UserError
from tfmeta.models import backbone_from_config, copy_backbone_weights, is_frozen

FEATURES_BACKBONE = "on_features"
CACHE_VERSION = "v1"
BATCH_SIZE = 128


class FrozenFeatures(tf.Module):
    """`preprocess` then the frozen `backbone` (inference mode): raw images -> features."""

    def __init__(self, preprocess, backbone):
        super().__init__(name="frozen_features")
        self.preprocess = preprocess
        self.backbone = backbone

    def __call__(self, images):
        return tf.cast(self.backbone(self.preprocess(images), training=False), tf.float32)


def learner_config(config):
    """The config the learner is built from: `config`, or for a frozen backbone the same
    with `model` the backbone of its cached features (`tfmeta.models.heads.on_features`)."""
    if not is_frozen(config.model):
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model = type(config.model)({"name": FEATURES_BACKBONE})
    return config


def weights_fingerprint(model) -> str:
    """A key of a model's weights (every variable's name, shape and bytes)."""
    digest = hashlib.sha1()
    for variable in model.weights:
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{variable.path}|{value.shape}|{value.dtype}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _classes_key(classes) -> str:
    """A key of one split's examples: their bytes where they are in memory, else (records)
    the class names and counts (the dataset's files count through its fingerprint)."""
    digest = hashlib.sha1(repr((classes.class_names, list(map(int, classes.class_counts))))
                          .encode())
    if isinstance(classes, ClassImages):
        images = classes.images
        digest.update(f"{images.shape}|{images.dtype}".encode())
        digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def _split_features(classes, embed) -> list:
    """Per-class float32 features of one split, in its class order."""
    per_class = []
    for index in range(classes.num_classes):
        stored = classes.stored_examples(index)
        outputs = [embed(classes.inputs(stored[i:i + BATCH_SIZE]))
                   for i in range(0, len(stored), BATCH_SIZE)]
        per_class.append(np.concatenate(outputs).astype(np.float32))
    return per_class


def _with_features(classes, per_class):
    """The split `classes` with its examples replaced by their features (`per_class`)."""
    if isinstance(classes, ClassImages):
        return dataclasses.replace(classes, images=np.concatenate(per_class), transform=None)
    return ClassImages.from_lists(per_class, classes.class_names,  # records, streamed
                                  class_groups=classes.class_groups)


def starts_random(model_config) -> bool:
    """Whether a backbone section starts from random weights: one of tfmeta's own without
    `init_from`, or keras.applications with `weights=none`."""
    model_config = dict(model_config)
    if model_config.get("init_from"):
        return False
    name = str(model_config.get("name", ""))
    if name.startswith("keras_applications:"):
        return str(model_config.get("weights", "imagenet")).lower() in ("none", "")
    return ":" not in name


def frozen_backbone(config, input_shape, source=None):
    """The frozen backbone of `config` (no head), started from `source` (the backbone of the
    run `model.init_from` names) where given."""
    backbone = backbone_from_config(config.model, input_shape)
    if source is not None:
        copy_backbone_weights(source, backbone, config.model.init_from)
    elif starts_random(config.model):
        logging.warning("model.trainable=none freezes %s, which starts from random weights "
                        "(no model.init_from): its features are random projections.",
                        backbone.name)
    backbone.trainable = False
    return backbone


def frozen_features(config, dataset, source=None):
    """`dataset` as the learner of `config` sees it: itself, or for a frozen backbone
    (`model.trainable=none`) its features (see the module docstring). Records the
    backbone's fingerprint in `config.data_source.backbone`, or, where config.json
    recorded one, refuses a backbone whose weights differ."""
    if not is_frozen(config.model):
        return dataset
    backbone = frozen_backbone(config, dataset.input_shape, source)
    fingerprint = weights_fingerprint(backbone)
    recorded = (config.get("data_source") or {}).get("backbone")
    if recorded and recorded != fingerprint:
        raise UserError(
            f"The frozen backbone {config.model.name} has other weights than this run was "
            f"trained with (fingerprint {recorded}, now {fingerprint}): its checkpoint holds "
            "only the head, so it would be scored on other features. Restore that backbone "
            "(the file, preset or init_from run), or train a new run.")
    with config.data_source.unlocked():
        config.data_source["backbone"] = fingerprint
    embed = tf.function(lambda x: tf.cast(backbone(x, training=False), tf.float32),
                        reduce_retracing=True)
    key = hashlib.sha1(json.dumps([CACHE_VERSION, dataset.name, fingerprint,
                                   {k: v for k, v in sorted(dict(config.data).items())}],
                                  default=str).encode())
    for name in sorted(dataset.splits):
        key.update(_classes_key(dataset.splits[name]).encode())

    def build():
        logging.info("model.trainable=none: computing the features of every image once, "
                     "with the frozen %s.", backbone.name)
        arrays = {}
        for split, classes in dataset.splits.items():
            arrays[split] = np.concatenate(_split_features(classes, lambda x: embed(x).numpy()))
        return arrays

    arrays = load_cached_arrays("features-" + key.hexdigest()[:16], build)
    splits = {}
    for split, classes in dataset.splits.items():
        bounds = np.cumsum([0, *map(int, classes.class_counts)])
        per_class = [arrays[split][bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
        splits[split] = _with_features(classes, per_class)
    shape = next(iter(splits.values())).example_shape
    logging.info("model.trainable=none: training on cached features %s of the frozen %s.",
                 shape, backbone.name)
    return dataclasses.replace(
        dataset, splits=splits, preprocess=FrozenFeatures(dataset.preprocess, backbone),
        description=f"{dataset.description}; features {shape} of the frozen {backbone.name}")


# ------------------------------------------------- the training classes' mean feature
# Images the mean of the training classes' features is taken over (SimpleShot centres on
# the mean of every base image's feature; a sample of this size puts it within a few percent
# of the feature scale, and takes seconds on a CPU).
FEATURE_MEAN_IMAGES = 1000
FEATURE_MEAN_SEED = 0


def train_feature_mean(learner, dataset) -> np.ndarray:
    """The mean feature `[D]` (float32; a feature map flattened) of the learner's backbone,
    in inference mode, over `FEATURE_MEAN_IMAGES` images of the training split drawn as
    episodes of up to 20 classes (the same images every time, in memory or from records),
    for the heads that centre on it (`tfmeta.heads`, SimpleShot's CL2N) and the open-set
    distance."""
    classes = dataset.split("train")
    ways = min(20, classes.num_classes)
    shots = max(1, min(5, int(np.min(classes.class_counts)) - 1))
    per_episode = ways * (shots + 1)
    episodes = episode_dataset(classes, EpisodeShape(ways, shots, 1), meta_batch_size=1,
                               seed=FEATURE_MEAN_SEED, split="train",
                               num_episodes=-(-FEATURE_MEAN_IMAGES // per_episode))
    backbone = learner.feature_model()

    @tf.function
    def features(episode):
        images = tf.concat([episode["support_images"][0], episode["query_images"][0]], 0)
        values = tf.cast(backbone(images, training=False), tf.float32)
        return tf.reduce_sum(tf.reshape(values, [tf.shape(values)[0], -1]), 0)

    total = sum(features(e).numpy().astype(np.float64) for e in episodes)
    count = per_episode * -(-FEATURE_MEAN_IMAGES // per_episode)
    return (total / count).astype(np.float32)

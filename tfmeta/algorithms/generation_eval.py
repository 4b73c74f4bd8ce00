"""Measuring few-shot generation: do samples of an adapted generator look like the class?

A small classifier (Conv4) is trained on real images of the evaluated split's classes plus
training classes (up to `max_classes` classes in all; for MNIST's held-out 9 that is all
ten digits). Then, for each episode, the learner adapts to `shots` real images of one
evaluated class and generates `samples` images; the score
of the episode is the fraction of samples the classifier assigns to that class. The same
score for the unadapted meta generator is the baseline, and 1 / classes is chance. The
classifier's accuracy on real images it did not train on is reported as the ceiling.

    result = evaluate_generation(learner, dataset, split="test", num_episodes=100, seed=0,
                                 log_dir=f"{workdir}/logs/eval")

With `log_dir`, the scores and image grids (real images, adapted and unadapted samples)
go to TensorBoard.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmeta.algorithms.wgan_gp import image_grid
from tfmeta.errors import UserError
from tfmeta.evaluation import mean_and_ci95
from tfmeta.models import conv4
from tfmeta.ranges import EVAL_EPISODES


def _class_pool(dataset, split: str, max_classes: int, rng):
    """(evaluated class indices in `split`, list of per-class real image arrays, names)."""
    classes = dataset.split(split)
    evaluated = sorted(rng.choice(classes.num_classes, min(max_classes, classes.num_classes),
                                  replace=False).tolist())
    pool = [classes.class_examples(i) for i in evaluated]
    names = [f"{split}/{classes.class_names[i]}" for i in evaluated]
    if split != "train" and len(pool) < max_classes and "train" in dataset.splits:
        train = dataset.split("train")
        extra = rng.choice(train.num_classes, min(max_classes - len(pool), train.num_classes),
                           replace=False)
        pool += [train.class_examples(int(i)) for i in sorted(extra)]
        names += [f"train/{train.class_names[int(i)]}" for i in sorted(extra)]
    return evaluated, pool, names


def train_classifier(pool, steps: int, seed: int, max_per_class: int = 300):
    """Trains Conv4 on 3/4 of each class's images; returns (classifier, accuracy on the rest)."""
    rng = np.random.default_rng(seed)
    train_x, train_y, held_x, held_y = [], [], [], []
    for label, images in enumerate(pool):
        images = images[rng.permutation(len(images))[:max_per_class]]
        held = max(1, len(images) // 4) if len(images) > 1 else 0
        held_x.append(images[:held])
        train_x.append(images[held:])
        train_y.append(np.full(len(images) - held, label, np.int32))
        held_y.append(np.full(held, label, np.int32))
    train_x, train_y = np.concatenate(train_x), np.concatenate(train_y)
    keras.utils.set_random_seed(seed)
    classifier = conv4(train_x.shape[1:], num_classes=len(pool), filters=32,
                       downsample="strided", name="generation_classifier")
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = (tf.data.Dataset.from_tensor_slices((train_x, train_y)).shuffle(len(train_x), seed)
            .repeat().batch(64))
    classifier.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    held_x, held_y = np.concatenate(held_x), np.concatenate(held_y)
    real_accuracy = float(np.mean(np.argmax(classifier.predict(held_x, verbose=0), -1) == held_y)) \
        if len(held_x) else float("nan")
    return classifier, real_accuracy


def evaluate_generation(learner, dataset, split: str = "test", num_episodes: int = 100,
                        seed: int = 1234, shots: int = 4, samples: int = 16,
                        max_classes: int = 20, classifier_steps: int = 300,
                        log_dir: str | None = None, step: int = 0) -> dict:
    """Class accuracy of adapted vs unadapted samples on `split`'s classes (see module doc).

    Returns a dict with `accuracy`/`ci95` (adapted samples), `unadapted_accuracy`/
    `unadapted_ci95`, `improvement`/`improvement_ci95` (paired per episode),
    `classifier_real_accuracy`, `chance`, `ways` (classes the classifier tells apart),
    `shots`, `episodes` and `samples_per_episode`.
    """
    EVAL_EPISODES.check("num_episodes", num_episodes)
    rng = np.random.default_rng(seed)
    evaluated, pool, _ = _class_pool(dataset, split, int(max_classes), rng)
    classifier, real_accuracy = train_classifier(pool, int(classifier_steps), seed)
    shots, samples = int(shots), int(samples)
    if any(len(pool[i]) < shots for i in range(len(evaluated))):
        raise UserError(f"Some {split} classes have fewer than shots={shots} images; lower shots.")

    @tf.function
    def scores(images, label, episode_seed):
        adapted = learner.adapt_and_generate(images, samples, seed=episode_seed)
        unadapted = learner.generate(samples, seed=episode_seed)
        predicted = [tf.argmax(classifier(x, training=False), -1, output_type=tf.int32)
                     for x in (adapted, unadapted)]
        accuracies = [tf.reduce_mean(tf.cast(tf.equal(p, label), tf.float32)) for p in predicted]
        return accuracies, adapted, unadapted

    adapted_scores, unadapted_scores, grids = [], [], []
    for episode in range(num_episodes):
        label = episode % len(evaluated)
        examples = pool[label]
        images = examples[rng.choice(len(examples), shots, replace=False)]
        (adapted_acc, unadapted_acc), adapted, unadapted = scores(
            tf.constant(images), tf.constant(label, tf.int32),
            tf.constant([seed, episode], tf.int64))
        adapted_scores.append(float(adapted_acc))
        unadapted_scores.append(float(unadapted_acc))
        if len(grids) < 4:
            grids.append((images, adapted.numpy(), unadapted.numpy()))

    accuracy, ci95 = mean_and_ci95(adapted_scores)
    unadapted, unadapted_ci95 = mean_and_ci95(unadapted_scores)
    improvement, improvement_ci95 = mean_and_ci95(np.subtract(adapted_scores, unadapted_scores))
    result = {"accuracy": accuracy, "ci95": ci95, "unadapted_accuracy": unadapted,
              "unadapted_ci95": unadapted_ci95, "improvement": improvement,
              "improvement_ci95": improvement_ci95, "classifier_real_accuracy": real_accuracy,
              "chance": 1.0 / len(pool), "ways": len(pool), "shots": shots,
              "episodes": num_episodes, "samples_per_episode": samples,
              "metric": "fraction of samples a classifier assigns to the adapted class"}
    if log_dir:
        log_generation(log_dir, result, grids, step)
    return result


def log_generation(log_dir: str, result: dict, grids, step: int = 0) -> None:
    """Scalars of `result` and grids of real, adapted and unadapted images to TensorBoard."""
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for key in ("accuracy", "unadapted_accuracy", "improvement", "classifier_real_accuracy",
                    "chance"):
            tf.summary.scalar(f"generation/{key}", result[key], step=step)
        for i, (real, adapted, unadapted) in enumerate(grids):
            tf.summary.image(f"episode{i}/real", image_grid(real), step=step)
            tf.summary.image(f"episode{i}/adapted_samples", image_grid(adapted), step=step)
            tf.summary.image(f"episode{i}/unadapted_samples", image_grid(unadapted), step=step)
    writer.flush()

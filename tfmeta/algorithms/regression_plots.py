"""The TensorBoard image of adapted regression curves (Finn et al. 2017, figure 2): per
task, the true curve, a learner's predictions after 1 and 10 inner steps, the pretrained
baseline's after 10, and the support points, drawn as an RGB image with numpy
(`tfmeta.algorithms.regression_protocol.meta_test` writes it with `log_dir`)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmeta import weights

PLOTTED_STEPS = (1, 10)  # the figure's "1 step" and "10 steps" curves
PLOTTED_TASKS = 3
COLORS = {"true": (0, 160, 0), "1 step": (80, 80, 255), "10 steps": (220, 0, 0),
          "baseline 10 steps": (150, 150, 150), "support": (0, 0, 0)}


def adapted_curves(learner, episode, grid, steps=PLOTTED_STEPS):
    """Predictions `[len(steps), G]` on `grid [G, 1]` after each of `steps` inner steps."""
    params = weights.values(learner.params)
    state = weights.values(learner.loop_state_variables)
    trajectory, state = learner.adapt_trajectory(params, state, episode["support_images"],
                                                 episode["support_labels"], max(steps),
                                                 training=False)
    bn_training = learner.bn_training(False)
    return np.stack([learner.forward_at(trajectory[k], state, grid, bn_training, k)[0]
                     .numpy()[:, 0] for k in steps])


def draw_panel(grid, curves, points, y_limit, height=120):
    """An RGB uint8 image `[height, G, 3]`: each (color, ys) curve and (color, xs, ys) points."""
    width = len(grid)
    image = np.full((height, width, 3), 255, np.uint8)

    def rows(ys):
        return np.clip(((y_limit - np.asarray(ys)) / (2 * y_limit) * (height - 1)).round(),
                       0, height - 1).astype(int)

    image[rows(0.0), :] = 220
    for color, ys in curves:
        r = rows(ys)
        for offset in (0, 1):
            image[np.clip(r + offset, 0, height - 1), np.arange(width)] = color
    low, high = float(grid[0]), float(grid[-1])
    for color, xs, ys in points:
        columns = np.clip(((np.asarray(xs) - low) / (high - low) * (width - 1)).round(), 0,
                          width - 1).astype(int)
        for dr in (-2, -1, 0, 1, 2):
            for dc in (-2, -1, 0, 1, 2):
                image[np.clip(rows(ys) + dr, 0, height - 1),
                      np.clip(columns + dc, 0, width - 1)] = color
    return image


def log_curves(learners, dataset, shots, seed, log_dir, step):
    """TensorBoard image `adapted_curves`: per task, the true curve (green), MAML after 1
    (blue) and 10 (red) steps, the baseline after 10 (gray) and the support points.
    `learners`: {"": the meta-learned learner, "baseline_": the baseline's, if any}."""
    low, high = dataset.x_range
    grid = np.linspace(low, high, 256, dtype=np.float32)[:, None]
    panels = []
    tasks = dataset.episodes(shots, 1, None, seed=seed, num_episodes=PLOTTED_TASKS,
                             with_parameters=True)
    y_limit = 1.2 * dataset.amplitude_range[1]
    for episode in tasks:
        true = dataset.function(episode["amplitude"], episode["phase"], grid).numpy()[:, 0]
        maml = adapted_curves(learners[""], episode, tf.constant(grid))
        curves = [(COLORS["true"], true), (COLORS["1 step"], maml[0]),
                  (COLORS["10 steps"], maml[1])]
        if "baseline_" in learners:
            baseline = adapted_curves(learners["baseline_"], episode, tf.constant(grid))
            curves.insert(1, (COLORS["baseline 10 steps"], baseline[1]))
        support = (COLORS["support"], episode["support_images"].numpy()[:, 0],
                   episode["support_labels"].numpy()[:, 0])
        panels.append(draw_panel(grid[:, 0], curves, [support], y_limit))
    image = np.concatenate([np.concatenate([p, np.full((4, p.shape[1], 3), 128, np.uint8)])
                            for p in panels])
    with tf.summary.create_file_writer(log_dir).as_default():
        tf.summary.image("adapted_curves", image[None], step=step,
                         description="true (green), MAML 1 step (blue), 10 steps (red), "
                                     "pretrained baseline 10 steps (gray), support (black)")
    return image

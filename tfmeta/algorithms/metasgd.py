"""Meta-SGD: learning to learn quickly (Li, Zhou, Chen and Li, 2017).

https://arxiv.org/abs/1707.09835. MAML with a learned inner learning rate for every
parameter coordinate: `alpha` has the shape of `theta` and is meta-learned with it.

    for task in meta_batch:
        fast = theta - alpha * grad(loss(theta, task.support), theta)    # elementwise
        meta_loss += loss(fast, task.query) / len(meta_batch)
    theta, alpha = optimizer.apply(grad(meta_loss, (theta, alpha)), (theta, alpha))

Everything but the inner step is MAML's (`tfmeta.algorithms.maml`): this module only
overrides the `inner_update` hook. `alpha` is one trainable variable per adapted
parameter, initialised to `inner_lr`, so the outer optimizer trains it. The gradient
reaches `alpha` even with `first_order=True`, since `d fast / d alpha = -grad`.

`learned_rates` makes such variables; MAML++'s per-layer, per-step rates (LSLR,
`tfmeta.algorithms.maml_plusplus`) are the same with scalar shapes, one set per step.
"""

from __future__ import annotations

import keras

from tfmeta import weights
from tfmeta.algorithms.maml import MAML, MAMLRecipe


def learned_rates(layer, shapes, value: float, name: str) -> list:
    """Trainable learning rates of `layer`, one variable per shape, each initialised to
    `value`: `shapes` of the parameters for Meta-SGD's per-coordinate rates, `()` for
    per-tensor scalars (MAML++)."""
    return [layer.add_weight(shape=tuple(shape), initializer=keras.initializers.Constant(value),
                             trainable=True, name=f"{name}_{i}")
            for i, shape in enumerate(shapes)]


class MetaSGD(MAML):
    """MAML whose inner step size is a learned tensor per parameter (`alpha`, same shape).

    Example:

        learner = MetaSGD(tfmeta.models.conv4((28, 28, 1), num_classes=5), inner_lr=0.4)
        learner.compile(optimizer=keras.optimizers.Adam(1e-3))

    Args: as MAML's; `inner_lr` is the initial value of every coordinate of `alpha`.
    """

    fast_head_refusal = "Meta-SGD learns a rate per coordinate of fixed-shape parameters"

    def __init__(self, backbone: keras.Model, inner_lr: float = 0.4, **kwargs):
        super().__init__(backbone, inner_lr=inner_lr, **kwargs)
        self.alpha = learned_rates(self, [self.params[i].shape for i in self.adapted_indices],
                                   self.inner_lr, "alpha")

    def inner_update(self, params, grads, step):
        """`params - alpha * grads`, elementwise, with one learned `alpha` per parameter."""
        del step
        return weights.gradient_step(params, grads, weights.values(self.alpha))


RECIPE = MAMLRecipe(MetaSGD)

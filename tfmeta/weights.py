"""Weight arithmetic on lists of tensors, written once for every algorithm.

Fast weights, snapshots and meta-updates are plain lists of tensors (in the order of
a model's `trainable_variables`). MAML's inner step, Reptile's outer step and
Reptile-GAN's copies all go through these helpers.
"""

from __future__ import annotations

import tensorflow as tf


def values(variables) -> list:
    """Reads variables (or tensors) into a list of tensors; inside a tape, differentiably."""
    return [tf.convert_to_tensor(v) for v in variables]


def add(a, b) -> list:
    """a + b."""
    return [x + y for x, y in zip(a, b, strict=True)]


def subtract(a, b) -> list:
    """a - b."""
    return [x - y for x, y in zip(a, b, strict=True)]


def scale(a, factor) -> list:
    """factor * a."""
    return [factor * x for x in a]


def gradient_step(params, grads, learning_rate) -> list:
    """params - learning_rate * grads (learning_rate a scalar or one tensor per param).

    A `None` gradient (a parameter the loss does not touch) leaves the param unchanged.
    """
    if not isinstance(learning_rate, list | tuple):
        learning_rate = [learning_rate] * len(params)
    return [p if g is None else p - lr * g
            for p, g, lr in zip(params, grads, learning_rate, strict=True)]


def interpolate(old, new, epsilon) -> list:
    """old + epsilon * (new - old): epsilon=0 keeps old, epsilon=1 takes new."""
    return [o + epsilon * (n - o) for o, n in zip(old, new, strict=True)]


def average(weight_lists) -> list:
    """Element-wise mean over a list of weight lists (e.g. over tasks)."""
    return [tf.add_n(list(group)) / len(group) for group in zip(*weight_lists, strict=True)]


def assign(variables, new_values) -> None:
    """Writes values into variables (outer updates only, never inside an inner loop)."""
    for variable, value in zip(variables, new_values, strict=True):
        variable.assign(value)


def global_norm(tensors) -> tf.Tensor:
    return tf.linalg.global_norm([t for t in tensors if t is not None])


def flatten(tensors) -> tf.Tensor:
    """Concatenates a weight list into one vector `[P]` (P = total number of coordinates)."""
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unflatten(vector, like) -> list:
    """Splits a vector `[P]` back into tensors shaped like the list `like` (inverse of flatten)."""
    shapes = [tuple(t.shape) for t in like]
    sizes = [int(tf.TensorShape(s).num_elements()) for s in shapes]
    return [tf.reshape(part, shape) for part, shape in zip(tf.split(vector, sizes), shapes)]


def recomputed_in_backward(fn, tensors) -> list:
    """`fn(tensors)` (a list of tensors in, a list out) whose intermediate activations are
    not kept for the backward pass but computed again there from `tensors`: memory for
    compute (Chen et al. 2016, "Training deep nets with sublinear memory cost"), here one
    MAML inner step at a time. The gradient is exact, second-order terms included (`fn`
    may hold its own tape); variables `fn` reads get theirs too.

    The recomputation waits for the upstream gradients (a control dependency), so it
    neither runs early nor merges with the forward pass it repeats.
    """
    tensors = list(tensors)

    @tf.custom_gradient
    def run(*inputs):
        def grad(*upstream, variables=None):
            with tf.control_dependencies([u for u in upstream if u is not None]):
                again = [tf.identity(x) for x in inputs]
            watched = list(variables or [])
            with tf.GradientTape() as tape:
                tape.watch(again)
                outputs = fn(again)
            grads = tape.gradient(outputs, again + watched, output_gradients=list(upstream),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            if variables is None:
                return grads
            return grads[:len(again)], grads[len(again):]

        return list(fn(list(inputs))), grad

    return run(*tensors)

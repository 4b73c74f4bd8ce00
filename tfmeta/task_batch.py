"""One pass of a Keras model for T tasks at once, each task with its own weights.

MAML's inner loop gives each task of a meta-batch its own copy of the backbone's weights.
Run one task at a time, a Conv4 meta-batch of 32 Omniglot tasks is 32 passes over 5
images; here the tasks are folded into the channels and run as one pass:

    inputs [T, n, H, W, C]       -> [n, H, W, T*C]     channel t*C + c: task t's channel c
    conv kernel [T, kh, kw, C, O] -> [kh, kw, C, T*O]   a grouped convolution, T groups
    batch norm                     statistics over every axis but the last: each task's own
    dense kernel [T, D, O]         a batched matmul over the tasks
    flatten                        each task's features kept together: [n, T*(H*W*C)]
    outputs                      <- [T, n, O]

Layers that act on each channel alone (activations, pooling, dropout, residual adds) run as
they are. `unsupported_layers` names what cannot be folded; a learner refuses the vectorized
task loop for such a model (`tfmeta.algorithms.task_loop`).

Batch norm normalizes with the batch's statistics when `training`, else with the moving
averages in `state`; the moving averages are never updated here (the vectorized task loop
runs only with `batch_norm="batch_stats"`, which does not use them while training).

The grouped convolution's gradients need cuDNN or oneDNN kernels: TensorFlow's own CPU
kernels, which run wherever oneDNN is off (`TF_ENABLE_ONEDNN_OPTS=0`, or a CPU on which
TensorFlow does not turn it on), refuse them ("Gradients for grouped convolutions are not
supported on CPU", or Conv2DBackpropFilter's "filter_size does not have enough elements").
There (`grouped_convolution_gradients`) each task's convolution runs apart instead, with the
same numbers:

    y = concat([conv(x_t, kernel[t]) for t in tasks], channels)   # x_t: task t's channels
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf
from absl import logging

# Layers that act on each channel (the last axis) alone, run as they are on folded tensors.
CHANNELWISE = (keras.layers.InputLayer, keras.layers.ReLU, keras.layers.LeakyReLU,
               keras.layers.ELU, keras.layers.Activation, keras.layers.MaxPooling2D,
               keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
               keras.layers.GlobalMaxPooling2D, keras.layers.Add, keras.layers.Dropout,
               keras.layers.Identity, keras.layers.ZeroPadding2D)


def _foldable(layer) -> str | None:
    """Why `layer` cannot be folded, or None."""
    if isinstance(layer, keras.layers.Conv2D) and type(layer) is keras.layers.Conv2D:
        if layer.data_format != "channels_last" or layer.groups != 1:
            return "a Conv2D with channels_first data or groups > 1"
        return None
    if type(layer) is keras.layers.BatchNormalization:
        return None if layer.axis in (-1, len(layer.input.shape) - 1) else "batch norm off the last axis"
    if type(layer) in (keras.layers.Dense, keras.layers.Flatten):
        return None
    if isinstance(layer, keras.layers.GlobalAveragePooling2D | keras.layers.GlobalMaxPooling2D):
        return None if not layer.keepdims and layer.data_format == "channels_last" else \
            "global pooling with keepdims or channels_first data"
    if isinstance(layer, keras.layers.MaxPooling2D | keras.layers.AveragePooling2D):
        return None if layer.data_format == "channels_last" else "pooling of channels_first data"
    if type(layer) in CHANNELWISE:
        return None
    return f"a {type(layer).__name__} layer"


def _graph(model):
    """The functional graph `call` runs: the model's own, or a Sequential model's."""
    return getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model


def unsupported_layers(model: keras.Model) -> list[str]:
    """`"name (why)"` for each layer of `model` that `call` cannot fold; empty when it can."""
    if not isinstance(model, keras.Model) or not hasattr(_graph(model), "_run_through_graph"):
        return [f"{getattr(model, 'name', model)} (not a functional Keras model)"]
    problems = []
    for layer in model.layers:
        why = _foldable(layer)
        if why:
            problems.append(f"{layer.name} ({why})")
    return problems


@functools.cache
def grouped_convolution_gradients() -> bool:
    """Whether TensorFlow's kernels on the default device differentiate a grouped convolution
    (cuDNN's and oneDNN's do; TensorFlow's own CPU kernels do not). Tried once, eagerly: the
    two backward kernels of a two-group convolution of ones; where they fail, `call` runs each
    task's convolution apart and says so once in the log."""
    images, kernel = [1, 3, 3, 2], [3, 3, 1, 2]  # two groups of one channel
    options = {"strides": [1, 1, 1, 1], "padding": "SAME"}
    with tf.init_scope():  # (eagerly, also while a tf.function traces)
        try:
            tf.raw_ops.Conv2DBackpropInput(input_sizes=images, filter=tf.ones(kernel),
                                           out_backprop=tf.ones(images), **options)
            tf.raw_ops.Conv2DBackpropFilter(input=tf.ones(images), filter_sizes=kernel,
                                            out_backprop=tf.ones(images), **options)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            reason = error.message.split("}}")[-1].split(".")[0].strip()  # its first sentence
            logging.warning("This device's kernels cannot differentiate a grouped convolution "
                            "(%s); the vectorized task loop runs each task's convolutions "
                            "apart, with the same numbers.", reason)
            return False
    return True


def convolutions_task_by_task(model: keras.Model) -> bool:
    """Whether `call` runs `model`'s convolutions one task at a time (a model with a Conv2D,
    on a device without `grouped_convolution_gradients`)."""
    return (any(type(layer) is keras.layers.Conv2D for layer in model.layers)
            and not grouped_convolution_gradients())


def fold(inputs):
    """`[T, n, *dims, C]` -> `[n, *dims, T*C]`."""
    rank = inputs.shape.rank
    moved = tf.transpose(inputs, [*range(1, rank - 1), 0, rank - 1])
    shape = tf.shape(moved)
    return tf.reshape(moved, tf.concat([shape[:-2], [-1]], 0))


def unfold(outputs, tasks):
    """`[n, *dims, T*O]` -> `[T, n, *dims, O]`."""
    shape = tf.shape(outputs)
    split = tf.reshape(outputs, tf.concat([shape[:-1], [tasks, -1]], 0))
    rank = outputs.shape.rank + 1
    return tf.transpose(split, [rank - 2, *range(rank - 2), rank - 1])


def call(model: keras.Model, params, state, inputs, training: bool):
    """Outputs `[T, n, ...]` of `model` on `inputs [T, n, ...]`, task t run with weights
    `params[i][t]`.

    Args:
      model: a model with no `unsupported_layers`.
      params: one tensor per `model.trainable_variables`: `[T, *shape]` (one per task) or
        `[*shape]` (shared by every task).
      state: one tensor per `model.non_trainable_variables`, shared or per task alike.
      inputs: `[T, n, ...]`, the same n for every task.
      training: batch statistics and dropout on.
    """
    tasks, static_tasks = tf.shape(inputs)[0], inputs.shape[0]
    values = {id(v): p for v, p in zip(model.trainable_variables, params, strict=True)}
    values.update({id(v): s for v, s in zip(model.non_trainable_variables, state, strict=True)})

    def per_task(variable, dtype):
        """The variable's value for every task, `[T, *shape]`."""
        value = tf.cast(values[id(variable)], dtype)
        if value.shape.rank == len(variable.shape):
            value = tf.broadcast_to(value[None], tf.concat([[tasks], tf.shape(value)], 0))
        return value

    def folded_vector(variable, dtype):
        """A per-channel variable `[C]` as `[T*C]`, task-major like the folded channels."""
        return tf.reshape(per_task(variable, dtype), [-1])

    def run(layer):
        def conv(x):
            x = tf.cast(x, layer.compute_dtype)
            kernel = per_task(layer.kernel, x.dtype)                      # [T, kh, kw, C, O]

            def convolve(x, kernel):
                # (data_format given: eager second order reads it back)
                return tf.nn.convolution(x, kernel, strides=layer.strides,
                                         padding=layer.padding.upper(),
                                         dilations=layer.dilation_rate, data_format="NHWC")

            if grouped_convolution_gradients():
                kh, kw, channels, _ = layer.kernel.shape
                y = convolve(x, tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]),
                                           [kh, kw, channels, -1]))
            else:
                y = convolve_task_by_task(convolve, x, kernel, static_tasks, tasks)
            if layer.use_bias:
                y = y + folded_vector(layer.bias, y.dtype)
            return layer.activation(y)

        def dense(x):
            x = tf.cast(x, layer.compute_dtype)
            shape = tf.shape(x)
            x = tf.reshape(x, tf.concat([shape[:-1], [tasks, -1]], 0))   # [..., T, D]
            y = tf.einsum("...td,tdo->...to", x, per_task(layer.kernel, x.dtype))
            if layer.use_bias:
                y = y + per_task(layer.bias, y.dtype)
            y = tf.reshape(y, tf.concat([shape[:-1], [-1]], 0))
            return layer.activation(y)

        def flatten(x):
            rank = x.shape.rank
            if rank == 2:
                return x
            shape = tf.shape(x)
            split = tf.reshape(x, tf.concat([shape[:-1], [tasks, -1]], 0))  # [n, ..., T, C]
            split = tf.transpose(split, [0, rank - 1, *range(1, rank - 1), rank])
            return tf.reshape(split, [shape[0], -1])

        def batch_norm(x, training=training):
            dtype = x.dtype
            x32 = tf.cast(x, tf.float32)
            if training:
                mean, variance = tf.nn.moments(x32, list(range(x.shape.rank - 1)))
            else:
                mean = folded_vector(layer.moving_mean, tf.float32)
                variance = folded_vector(layer.moving_variance, tf.float32)
            scale = folded_vector(layer.gamma, tf.float32) if layer.scale else None
            offset = folded_vector(layer.beta, tf.float32) if layer.center else None
            y = tf.nn.batch_normalization(x32, mean, variance, offset, scale, layer.epsilon)
            return tf.cast(y, dtype)

        if type(layer) is keras.layers.Conv2D:
            return conv
        if type(layer) is keras.layers.Dense:
            return dense
        if type(layer) is keras.layers.Flatten:
            return flatten
        if type(layer) is keras.layers.BatchNormalization:
            return lambda x, **kwargs: batch_norm(x)
        if isinstance(layer, keras.layers.Dropout):
            return lambda x, **kwargs: layer.call(x, training=training)
        return lambda *args, **kwargs: layer.call(*args)

    outputs = _graph(model)._run_through_graph(fold(inputs), operation_fn=run)
    return unfold(outputs, tasks)


def convolve_task_by_task(convolve, inputs, kernel, static_tasks, tasks):
    """The grouped convolution of folded `inputs [n, H, W, T*C]` with `kernel [T, kh, kw, C,
    O]` as T plain convolutions `convolve(x_t [n, H, W, C], kernel[t])`, folded back to
    `[n, H', W', T*O]`: written out over a static T, else a `tf.map_fn` over the tasks."""
    if static_tasks is not None:
        return tf.concat([convolve(x, kernel[t]) for t, x in
                          enumerate(tf.split(inputs, static_tasks, axis=-1))], axis=-1)
    outputs = tf.map_fn(lambda task: convolve(*task), (unfold(inputs, tasks), kernel),
                        fn_output_signature=inputs.dtype)
    return fold(outputs)

"""Choosing a `tf.distribute` strategy by name; nothing here assumes a GPU."""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored")


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """default: TF's default strategy; one_device: the first GPU, else the CPU;
    mirrored: all GPUs, else all logical CPU devices (one replica per device)."""
    if name == "default":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    raise ValueError(f"Unknown strategy {name!r}; valid strategies: {list(STRATEGIES)}.")


def split_cpu(num_devices: int) -> None:
    """Splits the CPU into logical devices (call before TF initializes); for tests and CPU runs."""
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)

"""The errors tfmeta raises for a user to act on, beside the ValueErrors and OSErrors that
name a bad value or file. Light on purpose: `tfmeta.cli` prints every one of them as one
line (`error: ...`, status 2) without importing TensorFlow or the trainer to know them."""

from __future__ import annotations


class WorkdirLocked(RuntimeError):
    """Another live process holds the workdir."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (docker stop, Kubernetes, Slurm, `timeout`): training stops as on
    Ctrl-C, with a checkpoint of the current step."""

"""What training over several workers (`--strategy=multi_worker`) adds to a run on one
machine: telling a multi-worker strategy apart, checking that every worker restored the same
step, and the barriers by which the workers leave the cluster together. Which worker a
process is, and the strategy itself: `tfmeta.training.strategy`; who writes what:
docs/distributed.md.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from tfmeta.errors import UserError
from tfmeta.training.checkpoints import CHECKPOINTS
from tfmeta.training.strategy import SHUTDOWN_BARRIER_MS


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def check_same_step(strategy, step, workdir):
    """Raises a ValueError unless every worker restored the same step (they all read the
    chief's checkpoints, so the workdir must be storage every worker sees)."""
    steps = strategy.gather(strategy.run(lambda: tf.constant([step], tf.int64)), axis=0)
    steps = sorted(set(int(s) for s in steps.numpy()))
    if len(steps) > 1:
        raise UserError(
            f"The workers restored different steps {steps} from {workdir}/{CHECKPOINTS}; "
            "every worker must see the chief's checkpoints: put --workdir on storage all "
            "machines share (NFS, GCS), or start every worker from an empty workdir.")


def leave_cluster_together() -> None:
    """Returns once every worker has finished training (and the chief its export), so
    none exits while another still needs the cluster.

    Two barriers, because the last one of any protocol races with the exit: the chief
    hosts the coordination service, and once its own wait returns it may exit before the
    service's reply reaches another worker, which then sees `UnavailableError` although
    every worker had arrived. The first barrier is strict: passing it proves that every
    worker finished. A failure at the second comes after that proof, so it is logged and
    the run counts as complete.
    """
    wait_for_all_workers("tfmeta_train_end")
    try:
        wait_for_all_workers("tfmeta_exit")
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        logging.info("Every worker finished training; another left the cluster before "
                     "the exit barrier answered (%s).", type(error).__name__)


def wait_for_all_workers(name: str) -> None:
    """Returns once every worker has called this with `name` (or raises after the
    coordination service's shutdown timeout)."""
    from tensorflow.python.eager import context  # no public API for a barrier

    context.context().wait_at_barrier(name, SHUTDOWN_BARRIER_MS)

"""Choosing a `tf.distribute` strategy by name; nothing here assumes a GPU.

    default      TF's default strategy (one device)
    one_device   the first GPU, else the CPU
    mirrored     all GPUs of this machine, else all logical CPU devices
    multi_worker MultiWorkerMirroredStrategy over the machines `TF_CONFIG` lists: every
                 worker runs the same command; gradients are all-reduced (collective ops)
    tpu          TPUStrategy on the TPU `TPU_NAME` names (empty on a TPU VM)

A strategy must exist before TensorFlow initializes its runtime in the process (the
multi-worker one configures collective ops, which cannot be changed afterwards), so the
trainer builds it first, before any tensor is made. `worker_role()` reads `TF_CONFIG`
without touching TensorFlow: which worker this process is, and whether it is the chief,
the one that writes the run's files (see docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys

import tensorflow as tf
from absl import logging

from tfmeta.errors import UserError
from tfmeta.ranges import STRATEGY

STRATEGIES = STRATEGY.values
# How long a multi-worker task waits for the others to join (config.cluster_join_timeout).
DEFAULT_JOIN_TIMEOUT_S = 300

TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\' (index 1 on host2)')


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in a cluster: worker `index` of `count`, `task` its TF_CONFIG
    name (e.g. "worker_1"), `is_chief` whether it writes the run's files."""

    index: int = 0
    count: int = 1
    task: str = "chief"
    is_chief: bool = True


SINGLE_PROCESS = WorkerRole()


def _tf_config_error(problem: str) -> UserError:
    return UserError(f"--strategy=multi_worker reads the cluster from the TF_CONFIG "
                     f"environment variable, but {problem}. Set one per worker, e.g. "
                     f"{TF_CONFIG_EXAMPLE}; see docs/distributed.md.")


def worker_role(strategy_name: str = "multi_worker", environ=None) -> WorkerRole:
    """This process's `WorkerRole` from `TF_CONFIG` under `multi_worker`, else the single
    process. The chief is task `chief` if the cluster has one, else worker 0 (TF's rule);
    workers are numbered chief first, then `worker` by index.

    Raises a ValueError (one line, with an example) when TF_CONFIG is missing or malformed.
    """
    if strategy_name != "multi_worker":
        return SINGLE_PROCESS
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        raise _tf_config_error("it is not set")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise _tf_config_error(f"it is not JSON ({error}; got {text!r})") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise _tf_config_error(f"it needs a 'cluster' and a 'task' object (got {text!r})")
    chiefs, workers = cluster.get("chief", []), cluster.get("worker", [])
    if not all(isinstance(v, list) and all(isinstance(a, str) and ":" in a for a in v)
               for v in (chiefs, workers)) or not chiefs + workers or len(chiefs) > 1:
        raise _tf_config_error("its 'cluster' must list 'worker' (and at most one 'chief') as "
                               f"'host:port' strings (got {json.dumps(cluster)})")
    kind, index = task.get("type"), task.get("index", 0)
    members = {"chief": chiefs, "worker": workers}.get(kind)
    if members is None or not isinstance(index, int) or not 0 <= index < len(members):
        raise _tf_config_error(f"its 'task' {json.dumps(task)} is not a member of the cluster "
                               f"{json.dumps(cluster)}")
    position = index + (len(chiefs) if kind == "worker" else 0)
    return WorkerRole(index=position, count=len(chiefs) + len(workers), task=f"{kind}_{index}",
                      is_chief=position == 0)


def make_strategy(name: str = "default",
                  join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> tf.distribute.Strategy:
    """The strategy `name` names (see the module docstring). Build it before anything else
    touches TensorFlow in the process; `multi_worker` and `tpu` fail otherwise.

    Under `multi_worker` every task waits for the others to join the cluster for at most
    `join_timeout_s` seconds, logging whom it waits for; then one line names this task and
    the ones it waited for (a ValueError where TensorFlow gives up itself, else printed by
    `_join_watchdog`, which then kills the process)."""
    if name == "multi_worker":
        role = worker_role(name)  # a one-line error for a missing or malformed TF_CONFIG
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        try:
            _coordinate_exit(resolver.cluster_spec(), join_timeout_s)
        except (ImportError, AttributeError, TypeError) as error:  # private API moved
            logging.warning("Could not set the coordination service's timeouts (%s); "
                            "TensorFlow's defaults apply.", error)
        others = [f"{job}_{i} at {address}"
                  for job, addresses in resolver.cluster_spec().as_dict().items()
                  for i, address in (enumerate(addresses) if isinstance(addresses, list)
                                     else addresses.items())
                  if f"{job}_{i}" != role.task]
        failed = (f"--strategy=multi_worker: the cluster did not form within "
                  f"{join_timeout_s:g} s; this is {role.task}, waiting for {', '.join(others)}")
        fix = "Start the same command on every machine TF_CONFIG lists, or raise " \
              "cluster_join_timeout."
        with _join_watchdog(role, others, join_timeout_s, f"{failed}. {fix}"):
            try:
                return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
            except (tf.errors.OpError, RuntimeError) as error:
                reason = " ".join(str(getattr(error, "message", error)).split())[:300]
                raise UserError(f"{failed} ({reason}). {fix}") from None
    if name == "tpu":
        return _tpu_strategy(os.environ.get("TPU_NAME", "local"))
    if name == "default":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    raise UserError(f"Unknown strategy {name!r}; valid strategies: {list(STRATEGIES)}.")


# A worker that stops answering for this long fails the others (they would otherwise
# wait in the all-reduce for ever); at the end of training (the trainer's barrier) and at
# exit, a worker waits at most this long for the others.
HEARTBEAT_TIMEOUT_MS = 30_000
SHUTDOWN_BARRIER_MS = 120_000
WAITING_LOG_EVERY_S = 15.0


# Python code of the watchdog process `_join_watchdog` starts (argv: parent PID, timeout,
# grace, log interval, task, whom it waits for, the error line).
WATCHDOG = """
import os, select, signal, sys, time
parent, timeout, grace, every = int(sys.argv[1]), *map(float, sys.argv[2:5])
task, others, error = sys.argv[5:8]
start = time.monotonic()
while True:
    if select.select([sys.stdin], [], [], every)[0]:
        sys.exit(0)  # the parent closed the pipe: the cluster formed, or it exited
    elapsed = time.monotonic() - start
    print(f"{task} waiting {elapsed:.0f} s (of {timeout:g}) for the cluster to form: {others}",
          file=sys.stderr, flush=True)
    if elapsed > timeout + grace:
        print(f"error: {error}", file=sys.stderr, flush=True)
        os.kill(parent, signal.SIGKILL)  # TF's preemption notifier catches SIGTERM
        sys.exit(0)
"""


@contextlib.contextmanager
def _join_watchdog(role, others, timeout_s, error, every_s=WAITING_LOG_EVERY_S, grace_s=15.0):
    """While the cluster forms, TensorFlow blocks in C++ holding the GIL (no Python thread or
    signal handler runs), and the coordination service's own registration timeout does not
    apply to its leader. So a small child process logs every `every_s` seconds whom this
    task waits for and, `grace_s` past the timeout, prints `error` as one line and
    kills this process (SIGKILL: TensorFlow's preemption notifier catches SIGTERM under a
    multi-worker strategy). Leaving the context stops it."""
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(timeout_s), str(grace_s),
         str(every_s), role.task, ", ".join(others), error], stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def _coordinate_exit(cluster_spec, join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> None:
    """Configures the coordination service MultiWorkerMirroredStrategy starts (it keeps a
    configuration made before it) with the heartbeat timeout above and a shutdown barrier,
    which narrows a race at exit: a worker still shutting down after the chief has exited
    waits for the gone chief. TF has no public API for this, hence the private modules."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker") if job in cluster_spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT_MS,
        shutdown_barrier_timeout_in_ms=SHUTDOWN_BARRIER_MS,
        cluster_register_timeout_in_ms=int(join_timeout_s * 1000))


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    """TPUStrategy on `tpu` ("local" on a TPU VM, else a TPU name or grpc:// address)."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:  # OSError: GCE lookup
        message = " ".join(str(error).split())[:300]
        raise UserError(f"--strategy=tpu found no TPU at TPU_NAME={tpu!r} ({message}). Run on "
                        "a Cloud TPU VM (TPU_NAME unset or 'local'), set TPU_NAME to the TPU's "
                        "name or grpc://address, or use --strategy=mirrored.") from None
    return tf.distribute.TPUStrategy(resolver)


def split_cpu(num_devices: int) -> None:
    """Splits the CPU into logical devices (call before TF initializes); for tests and CPU runs."""
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)


def check_replica_split(batch: int, replicas: int, name: str = "meta_batch_size") -> None:
    """Refuses a meta-batch of `batch` episodes (the setting `name`) that does not split
    evenly over `replicas` (`num_replicas_in_sync`: each replica takes `batch / replicas`).

    The one check of that fact, and its message: the trainer calls it before it builds
    anything, `distribute_episodes` for every batch it distributes.
    """
    if batch % replicas:
        below = batch - batch % replicas
        multiples = f"{below} or {below + replicas}" if below else f"{below + replicas}"
        raise UserError(f"--set={name}={batch} does not split over {replicas} replicas; "
                        f"use a multiple of {replicas}: --set={name}={multiples}.")


def distribute_episodes(strategy: tf.distribute.Strategy, make_dataset, global_batch: int,
                        name: str = "meta_batch_size"):
    """The meta-batches of `make_dataset(worker, workers)` fed to each replica of `strategy`.

    `make_dataset(worker, workers)` returns worker `worker`'s share of every meta-batch of
    `global_batch` episodes (`global_batch / workers` each); this rebatches it to the
    per-replica size, so each local replica takes a distinct slice and the union over all
    replicas of all workers is exactly the meta-batch a single process trains on. Under a
    one-worker strategy this is Keras's usual split of the whole meta-batch. `name` is the
    setting `global_batch` comes from, for `check_replica_split`'s error.
    """
    check_replica_split(global_batch, strategy.num_replicas_in_sync, name)

    def worker_dataset(context: tf.distribute.InputContext):
        dataset = make_dataset(context.input_pipeline_id, context.num_input_pipelines)
        return dataset.rebatch(context.get_per_replica_batch_size(global_batch))

    return strategy.distribute_datasets_from_function(worker_dataset)

"""MAML's meta-step on one process and on two local workers (MultiWorkerMirroredStrategy) at
the same global meta-batch (`configs/maml.py`, Omniglot 5-way 1-shot: 32 episodes, Conv4
with 64 filters, second order), and what the all-reduce between the workers costs.

    scaling_efficiency = one_worker_ms / (2 * two_worker_ms)     # 1.0: perfect halving

Every step all-reduces one gradient per trainable variable (`allreduce_bytes`, float32);
`allreduce_ms` times that all-reduce alone across the two workers, so
`allreduce_fraction_of_step` is the share of a two-worker step spent communicating. On a
machine with fewer cores than workers x threads, the two workers also compete for the
CPU, which no cluster of separate machines does; read the numbers with that in mind.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time

import tensorflow as tf

from tfmeta.benchmarking.common import _block, build_config_case, time_train_steps
from tfmeta.episode_spec import DataSpec

OVERRIDES = ()  # configs/maml.py as it is: the paper's Omniglot 5w1s settings
ALLREDUCE_REPEATS = 20

WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from tfmeta.benchmarking.distributed import time_worker
    print("RESULT " + json.dumps(time_worker({overrides!r}, {steps})), flush=True)
""")


def time_worker(overrides, steps: int) -> dict:
    """In a worker process (TF_CONFIG set): times `steps` meta-steps under the multi-worker
    strategy after a first (traced) one, then an all-reduce of the gradients' sizes alone."""
    from tfmeta.training.strategy import distribute_episodes, make_strategy

    strategy = make_strategy("multi_worker")  # before anything else runs a TensorFlow op
    from tfmeta.config import apply_overrides, get_config
    from tfmeta.data import load_dataset
    from tfmeta.training.run import build_compiled_learner
    from tfmeta.training.trainer import fit_scope

    config = apply_overrides(get_config("maml", "omniglot", "5w1s"), list(overrides))
    dataset = load_dataset("omniglot", **config.data)
    learner = build_compiled_learner(config, dataset.input_shape, strategy)
    replicas = strategy.num_replicas_in_sync
    spec = DataSpec.from_config(config)
    episodes = distribute_episodes(
        strategy, lambda worker, workers: learner.training_episodes(
            dataset, spec, replicas, 0, worker, workers)[0], config.meta_batch_size)
    with fit_scope(learner, strategy):
        learner.make_train_function()
        iterator = iter(episodes)
        times = _times(lambda: learner.train_function(iterator), steps)

    variables = learner.trainable_variables

    @tf.function
    def all_reduce():
        def replica_fn():
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, [tf.ones_like(v) for v in variables])
        return strategy.run(replica_fn)

    reduce_times = _times(all_reduce, ALLREDUCE_REPEATS)
    return {"first_step_s": times[0], "median_ms_per_step": 1000 * statistics.median(times[1:]),
            "allreduce_ms": 1000 * statistics.median(reduce_times[1:]),
            "allreduce_bytes": sum(int(v.shape.num_elements()) * 4 for v in variables),
            "replicas": replicas}


def _times(function, repeats: int) -> list:
    """Wall-clock seconds of a first call and `repeats` more, each waited for."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        _block(function())
        times.append(time.perf_counter() - start)
    return times


def free_ports(count: int) -> list:
    """`count` TCP ports free on localhost right now (for a local cluster's TF_CONFIG)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def time_two_workers(overrides, steps: int, timeout: float = 1800) -> dict:
    """Starts two local workers running `time_worker`; returns the chief's measurements."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    addresses = [f"localhost:{port}" for port in free_ports(2)]
    script = WORKER.format(root=root, overrides=list(overrides), steps=steps)
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2")
        processes.append(subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [p.communicate(timeout=timeout) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        if process.returncode or "RESULT " not in out:
            raise RuntimeError(f"A benchmark worker failed (status {process.returncode}): "
                               f"{err[-3000:]}")
    return json.loads(outputs[0][0].split("RESULT ", 1)[1].splitlines()[0])


def maml_one_vs_two_workers(steps: int) -> dict:
    config, dataset, learner = build_config_case("maml", overrides=OVERRIDES)
    episodes, _ = learner.training_episodes(dataset, DataSpec.from_config(config))
    one = time_train_steps(learner, episodes, steps)
    two = time_two_workers(OVERRIDES, steps)
    return {
        "meta_batch_size": config.meta_batch_size,
        "one_worker_ms_per_step": one["median_ms_per_step"],
        "two_workers_ms_per_step": two["median_ms_per_step"],
        "speedup": one["median_ms_per_step"] / two["median_ms_per_step"],
        "scaling_efficiency": one["median_ms_per_step"] / (2 * two["median_ms_per_step"]),
        "allreduce_bytes": two["allreduce_bytes"],
        "allreduce_ms": two["allreduce_ms"],
        "allreduce_fraction_of_step": two["allreduce_ms"] / two["median_ms_per_step"],
        "two_workers_first_step_s": two["first_step_s"],
    }


CASES = {"maml_two_local_workers": maml_one_vs_two_workers}

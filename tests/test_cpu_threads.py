"""`config.cpu_threads`: how TensorFlow spends a CPU's cores (tfmeta.training.cpu_threads).
Thread pools are per process and fixed once TensorFlow's runtime starts, so the pools
themselves are checked in a fresh process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfmeta import config as config_lib
from tfmeta.training import cpu_threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(algo, *overrides):
    return config_lib.apply_overrides(config_lib.get_config(algo, "omniglot"), list(overrides))


@pytest.mark.parametrize("algo, overrides, form, why", [
    ("maml", (), "tasks", "MAML's task loop runs 10 tasks at once, at least two per core"),
    ("maml", ("learner.first_order=True",), "tasks", "runs 10 tasks at once"),
    ("maml", ("meta_batch_size=4",), "tasks", "runs 4 tasks at once"),
    ("maml_plusplus", (), "tasks", "MAMLPlusPlus's task loop"),
    ("lstm_meta", (), "tasks", "LSTMMetaLearner's task loop"),
    ("maml", ("meta_batch_size=3",), "ops", "runs 3 task(s) at once, fewer than two per core"),
    ("maml", ("learner.parallel_tasks=1",), "ops", "runs 1 task(s) at once"),
    ("maml", ("jit_compile=true",), "ops", "XLA runs the unrolled tasks' ops one after another"),
    ("maml", ("learner.task_parallel=vectorized",), "ops", "vectorized pass"),
    ("maml", ("cpu_threads=ops",), "ops", "as asked"),
    ("protonet", (), "ops", "PrototypicalNetwork's ops are split over the cores"),
    ("protonet", ("cpu_threads=tasks",), "tasks", "as asked"),
])
def test_auto_takes_a_task_per_core_where_the_loop_keeps_two_tasks_per_core(
        monkeypatch, algo, overrides, form, why):
    monkeypatch.setattr(cpu_threads, "cores", lambda: 2)  # as on the machine measured
    chosen, reason = cpu_threads.resolve(config(algo, *overrides))
    assert chosen == form and why in reason


def test_mini_imagenet_settings_keep_the_ops_on_every_core(monkeypatch):
    """MAML's mini-ImageNet 5-shot meta-batch of 2 fills no core twice: measured even."""
    monkeypatch.setattr(cpu_threads, "cores", lambda: 2)
    mini = config_lib.get_config("maml", "mini_imagenet", "5w5s")
    assert cpu_threads.resolve(mini)[0] == "ops"


def test_auto_leaves_the_ops_their_cores_where_a_gpu_runs_them(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert cpu_threads.resolve(config("maml")) == ("ops", "a GPU runs the task loop")


def test_a_form_outside_the_choices_is_refused_naming_them():
    with pytest.raises(ValueError, match=r"^cpu_threads must be one of \['auto', 'ops', "
                                         r"'tasks'\]; got 'threads'\.$"):
        config_lib.validate_config(config("maml", "cpu_threads=threads"))


SCRIPT = """
import json, sys
import numpy as np, keras, tensorflow as tf
from absl import logging
from configs.maml import TINY
from tfmeta import config as config_lib
from tfmeta.training import cpu_threads, trainer
logging.set_verbosity("info")
cpu_threads.cores = lambda: 2  # as on the 2-core machine measured: 4 tasks fill each twice
config = config_lib.apply_overrides(config_lib.get_config("maml", "omniglot"),
                                    list(TINY) + ["num_steps=1", "meta_batch_size=4"])
trainer.train(config, sys.argv[1], verbose=0)
pools = cpu_threads.current_pools()
# Later, with the runtime started: the pools stay, and the log says so.
kept = cpu_threads.configure(config_lib.apply_overrides(config, ["cpu_threads=ops"]))
from tests.test_cpu_threads import meta_gradients
np.savez(sys.argv[2], *meta_gradients())
print(json.dumps({"pools": pools, "kept": kept, "after": cpu_threads.current_pools()}))
"""


def meta_gradients():
    """Second-order meta-gradients of a tiny MAML on fixed episodes, tasks in the loop."""
    import keras

    from tfmeta.algorithms.maml import MAML
    from tfmeta.models.conv4 import conv4

    keras.utils.set_random_seed(3)
    learner = MAML(conv4((28, 28, 1), filters=4, num_classes=3), inner_steps=2,
                   task_parallel="loop", parallel_tasks=4)
    learner.compile(optimizer=keras.optimizers.SGD(0.1))
    rng = np.random.default_rng(0)
    episodes = {"support_images": rng.random((4, 6, 28, 28, 1), np.float32),
                "support_labels": np.tile(np.arange(3), (4, 2)).astype(np.int64),
                "query_images": rng.random((4, 6, 28, 28, 1), np.float32),
                "query_labels": np.tile(np.arange(3), (4, 2)).astype(np.int64)}
    grads, _, _ = tf.function(learner.compute_meta_gradients)(
        {k: tf.constant(v) for k, v in episodes.items()})
    return [g.numpy() for g in grads]


def test_train_sets_a_task_per_core_first_with_the_same_meta_gradients(tmp_path):
    """In a fresh process, `train()` gives MAML one thread per op and the cores to its
    tasks, and says so; a later call cannot change the pools and says that. The
    meta-gradients there equal this process's (its ops split over the cores) to 5e-5 of
    their scale: the same sums, taken in another order by other threads, differ in float32
    rounding (measured: at most 1.0e-5 of the scale, over two second-order inner steps)."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"),
                           str(tmp_path / "grads.npz")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pools"] == [1, 2]
    assert result["kept"] == "tasks" and result["after"] == [1, 2]
    assert ("cpu_threads=auto: each op on one core, independent ops (a meta-batch's tasks) "
            "side by side; MAML's task loop runs 4 tasks at once") in proc.stderr
    assert "cpu_threads=ops would take ops (as asked), but TensorFlow's runtime had " \
           "already started" in proc.stderr
    theirs = np.load(tmp_path / "grads.npz")
    ours = meta_gradients()
    assert len(theirs.files) == len(ours)
    for i, g in enumerate(ours):
        scale = np.abs(g).max() + 1e-12
        np.testing.assert_allclose(theirs[f"arr_{i}"] / scale, g / scale, atol=5e-5)

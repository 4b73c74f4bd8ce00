"""How TensorFlow spends a CPU's cores: `config.cpu_threads`.

  "ops" (TensorFlow's default): each op may split its work over every core (the intra-op
      pool); ops that do not wait on each other share the cores (the inter-op pool).
  "tasks": each op runs on one core, and ops that do not wait on each other run side by
      side, one per core. The MAML family's task loop runs up to `parallel_tasks` tasks of
      a meta-batch at once, and their ops are small (Omniglot's Conv4 on 5 images): split
      over the cores they leave them mostly waiting; a task per core keeps them busy
      (docs/performance.md has the measurement and its command).
  "auto" (the default): the learner's choice for its config
      (`Recipe.cpu_threads_auto`, tfmeta.algorithms.recipe), said in the log.

TensorFlow fixes its thread pools when its runtime starts (the first op a process runs),
so `configure` must come first: `tfmeta.training.trainer.train` and `open_run` (evaluation,
export) call it before anything else.
Called later, it leaves the threads as they are and says so. Where a GPU runs the ops,
this only touches the ops left on the CPU.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

FORMS = {
    "ops": "each op on every core (TensorFlow's default)",
    "tasks": "each op on one core, independent ops (a meta-batch's tasks) side by side",
}


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve(config) -> tuple[str, str]:
    """("ops" or "tasks", why) for `config.cpu_threads`."""
    requested = config.get("cpu_threads", "auto")
    if requested != "auto":
        return requested, "as asked"
    from tfmeta.algorithms import recipe_of
    from tfmeta.config import jit_compile_flag

    return recipe_of(config.algo).cpu_threads_auto(
        config, cores(), jit_compile_flag(config.get("jit_compile", "auto")))


def pools(form: str) -> tuple[int, int]:
    """(intra-op, inter-op) threads of `form`; 0 is TensorFlow's own choice (every core)."""
    return (1, cores()) if form == "tasks" else (0, 0)


def current_pools() -> tuple[int, int]:
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


def configure(config) -> str:
    """Sets TensorFlow's CPU thread pools as `config.cpu_threads` asks (before the runtime
    starts), logs what was chosen and why, and returns the form in force."""
    requested = config.get("cpu_threads", "auto")
    form, why = resolve(config)
    wanted = pools(form)
    if current_pools() != wanted:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(wanted[0])
            tf.config.threading.set_inter_op_parallelism_threads(wanted[1])
        except RuntimeError:  # the runtime has started: its pools are fixed
            kept = "tasks" if current_pools() == pools("tasks") else "ops"
            log = logging.warning if requested != "auto" else logging.info
            log("cpu_threads=%s would take %s (%s), but TensorFlow's runtime had already "
                "started in this process, which fixes its threads; they stay: %s. Set it "
                "before running any TensorFlow op.", requested, form, why, FORMS[kept])
            return kept
    logging.info("cpu_threads=%s: %s; %s.", requested, FORMS[form], why)
    return form

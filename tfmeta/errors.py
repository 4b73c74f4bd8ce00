"""The errors tfmeta raises for a user to act on. Light on purpose: `tfmeta.cli` prints
every one of them as one line (`error: ...`, status 2) without importing TensorFlow or the
trainer to know them; any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(ValueError):
    """A bad value a user gave (a flag, a setting, an argument of the Python API, data that
    is not what it should be), with a message that names it and says what to do. A
    ValueError, so code that catches ValueError still catches it; the CLI prints only
    these (and OSErrors such as a missing file) as one line, so a ValueError raised by a bug
    inside tfmeta, TensorFlow or Keras keeps its traceback."""


class WorkdirLocked(RuntimeError):
    """Another live process holds the workdir."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (docker stop, Kubernetes, Slurm, `timeout`): training stops as on
    Ctrl-C, with a checkpoint of the current step."""


# A user error found inside a tf.data pipeline (a corrupt record, say) reaches Python as a
# TensorFlow error whose message wraps ours in framework text; ours travels between these
# marks, so `tfmeta.cli` can print it as one line (`in_pipeline`).
PIPELINE_MARK, PIPELINE_END = "<<tfmeta: ", " :tfmeta>>"


def pipeline_message(text: str) -> str:
    """`text` marked to be found again in a TensorFlow error raised by a pipeline."""
    return f"{PIPELINE_MARK}{text}{PIPELINE_END}"


def in_pipeline(error: BaseException) -> str | None:
    """The marked user message inside `error` (see `pipeline_message`), or None."""
    text = str(error)
    start = text.find(PIPELINE_MARK)
    end = text.find(PIPELINE_END, start + 1)
    if start < 0 or end < 0:
        return None
    return text[start + len(PIPELINE_MARK):end]

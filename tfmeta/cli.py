"""What the `bin/` entry points share: user errors as one line, not a traceback.

    if __name__ == "__main__":
        tfmeta.cli.run(main)

A user error (a bad flag or config value, missing or corrupt data, a workdir in use, a
diverged run, a corrupt record found by a data pipeline: `tfmeta.errors.in_pipeline`)
prints `error: <what was wrong and what to do>` on one line and exits with status 2;
`--verbose_errors` shows the traceback instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from tfmeta.errors import Terminated, UserError, WorkdirLocked, in_pipeline

flags.DEFINE_bool("verbose_errors", False, "Show the Python traceback of an error.")

# Errors whose message is written for the user (tfmeta raises these with the value and the
# fix; OSErrors name a file). A plain ValueError is not one of them: raised by a bug (in
# tfmeta, TensorFlow or Keras), it keeps its traceback.
USER_ERRORS = (UserError, OSError, FloatingPointError, WorkdirLocked, KeyboardInterrupt)
EXIT_USER_ERROR = 2


def one_line(error: BaseException) -> str:
    if isinstance(error, Terminated):
        return ("terminated (SIGTERM) after checkpointing the current step; rerun the same "
                "command to resume.")
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; rerun the same command to resume from the last checkpoint."
    text = " ".join(str(error).split())
    return text or type(error).__name__


def user_message(error: BaseException) -> str | None:
    """The one line a user error prints (`USER_ERRORS`, or a TensorFlow error carrying a
    user message from a data pipeline: `tfmeta.errors.in_pipeline`); None for anything
    else, a bug, which keeps its traceback."""
    message = in_pipeline(error)
    if message is not None:
        return one_line(message)
    return one_line(error) if isinstance(error, USER_ERRORS) else None


def run(main, usage: str | None = None) -> None:
    """`absl.app.run(main)`, printing user errors as one line; `usage` (the command module's
    docstring) is what `--help` shows, however the command was started (bin/ wrapper or
    console script)."""
    if usage:
        sys.modules["__main__"].__doc__ = usage

    def guarded(argv):
        try:
            return main(argv)
        except BaseException as error:  # noqa: BLE001 - a bug is raised again, whole
            message = user_message(error)
            if message is None or flags.FLAGS.verbose_errors:
                raise
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    app.run(guarded, flags_parser=parse_flags)


def parse_flags(argv):
    """absl's flag parsing, with a bad or missing flag as one `error:` line and status 2
    (absl's own prints two lines and exits 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {one_line(error)}; run {os.path.basename(argv[0])} --help for the flags.",
              file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)

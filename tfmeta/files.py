"""Writing a file so that no reader, and no killed writer, ever sees half of it."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs):
    """Opens `<path>.part` for writing and, when the block succeeds, renames it over `path`
    (an atomic replace on one file system); when the block fails, the part file is
    removed and `path` keeps its old contents.

        with atomic_write(path) as f:
            json.dump(result, f)
    """
    partial = path + ".part"
    try:
        with open(partial, mode, **open_kwargs) as f:
            yield f
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise

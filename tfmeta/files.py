"""Writing a file or a folder so that no reader, and no killed writer, ever sees half of it.

Every atomic write of the package goes through `atomic_path` (`atomic_write` for a file
opened by Python).
"""

from __future__ import annotations

import contextlib
import os
import shutil


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".part"):
    """Yields `<path><suffix>` for the block to write (a file, or a folder) and, when the
    block succeeds, renames it over `path` (an atomic replace on one file system; a folder
    at `path` is removed first); when the block fails, what it wrote is removed and `path`
    keeps its old contents. A part left by a killed writer is removed before the block.

        with atomic_path(path) as partial:
            tf.saved_model.save(module, partial)
    """
    partial = path.rstrip("/") + suffix
    _remove(partial)
    try:
        yield partial
        if os.path.isdir(path) and os.path.isdir(partial):
            shutil.rmtree(path)
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", suffix: str = ".part", **open_kwargs):
    """`atomic_path` for a file opened with `open(..., mode, **open_kwargs)`.

        with atomic_write(path) as f:
            json.dump(result, f)
    """
    with atomic_path(path, suffix) as partial, open(partial, mode, **open_kwargs) as f:
        yield f


def check_output_file(path: str, example: str) -> None:
    """A ValueError naming `--output` unless a file can be written at `path`: not empty, not
    a folder, and no file where one of its parent folders would be (`example`: a file name
    to suggest inside a folder)."""
    if not path:
        raise ValueError("--output is empty; give the file to write (or leave the flag out).")
    if os.path.isdir(path):
        raise ValueError(f"--output={path} is a folder; name the file to write, e.g. "
                         f"{os.path.join(path, example)}.")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ValueError(f"--output={path} cannot be written: {parent} is a file, not a "
                         "folder; choose another path.")


def disk_size(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)

"""Writing a file or a folder so that no reader, and no killed writer, ever sees half of it,
and no file of the user's is touched on the way.

Every atomic write of the package goes through `atomic_path` (`atomic_write` for a file
opened by Python). The block writes to a temporary name of the writer's own beside the
target (`temporary_name`: `.<name>.<pid>.<random>.tfmeta-part`): hidden, unique to the
writer, and in the same folder, so that the final rename stays on one file system and is
atomic. No user file has such a name, and these are the only names ever removed: a failed
write removes its own, and a write first clears those of `<name>` whose process is no
longer running on this machine (what a killed writer left).

A folder that replaces a folder (an export) is exchanged with it in one system call, Linux
`renameat2(RENAME_EXCHANGE)`, so that a reader of the path finds the old folder or the new
one, complete, at every moment; the old one, swapped to the temporary name, is removed
after. This was chosen over a link to versioned folders (TF Serving's layout) because the
path stays a plain folder: `cp -r`, `rsync`, `tar` and `scp` copy it as it is (a relative
link copies as a dangling one), a folder an earlier version wrote is replaced without a
migration (a folder cannot be turned into a link atomically), and every reader stays as it
is. Where there is no exchange (a file system that lacks it, such as NFS; Linux before
3.15; macOS, Windows), the old folder is renamed aside, the new one renamed in, and only
then the old one removed: the path is missing for the moment between two renames, never
for a deletion. A reader that opens a folder's files one by one while it is exchanged may
read some of each version (TensorFlow loads a SavedModel by path); loading again gives the
new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import sys

from tfmeta.errors import UserError

# The end of every temporary name (`temporary_name`).
PART = ".tfmeta-part"
# The longest target name, in bytes, kept whole in a temporary name (a file name has at
# most 255 bytes; the temporary name adds a dot, the pid, 8 random digits and PART).
MAX_NAME_BYTES = 200
# renameat2's flag that swaps two paths, and its "relative to the working folder".
RENAME_EXCHANGE = 2
AT_FDCWD = -100
# What renameat2 fails with where the system or the file system has no exchange.
NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def _name(path: str) -> str:
    """The target's name as its temporary names begin with (cut to MAX_NAME_BYTES)."""
    name = os.path.basename(path)
    while len(os.fsencode(name)) > MAX_NAME_BYTES:
        name = name[:-1]
    return name


def temporary_name(path: str) -> str:
    """A new name beside `path` for this writer: `.<name>.<pid>.<random>.tfmeta-part`."""
    return os.path.join(os.path.dirname(path),
                        f".{_name(path)}.{os.getpid()}.{secrets.token_hex(4)}{PART}")


def _running(pid: int) -> bool:
    """Whether process `pid` may still be writing (this one, a live one, or one whose state
    this system does not tell)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # (alive, another user's)
    return True


def clear_leftovers(path: str) -> None:
    """Removes the temporary names of `path` (`temporary_name`) whose writer is no longer
    running: what a killed writer left. Nothing else is touched."""
    folder = os.path.dirname(path)
    pattern = re.compile(rf"\.{re.escape(_name(path))}\.(\d+)\.[0-9a-f]+{re.escape(PART)}")
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return  # (no folder yet: nothing left there)
    for name in names:
        match = pattern.fullmatch(name)
        if match and not _running(int(match[1])):
            _remove(os.path.join(folder, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@functools.cache
def _renameat2():
    """libc's renameat2 (Linux, glibc 2.28 or later), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(first: str, second: str) -> bool:
    """Swaps what the two paths name in one step (`renameat2(RENAME_EXCHANGE)`); False, with
    nothing changed, where this system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second),
                 RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), first, None, second)


def _move_in(partial: str, path: str) -> None:
    """Renames `partial` over `path`; a folder over a folder by `exchange`, the old one
    removed only once the new one is in."""
    if not (os.path.isdir(partial) and os.path.isdir(path)):
        os.replace(partial, path)  # (atomic for a file; a folder onto nothing)
        return
    old = partial
    if not exchange(partial, path):
        old = temporary_name(path)
        os.replace(path, old)
        try:
            os.replace(partial, path)
        except BaseException:
            os.replace(old, path)
            raise
    _remove(old)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str | None = None):
    """Yields a temporary name beside `path` (`temporary_name`) for the block to write (a
    file, or a folder) and, when the block succeeds, renames it over `path`: atomically for
    a file, by an exchange for a folder that replaces a folder (see the module docstring).
    When the block fails, what it wrote is removed and `path` keeps its old contents. What
    killed writers of `path` left is cleared first (`clear_leftovers`).

        with atomic_path(path) as partial:
            tf.saved_model.save(module, partial)

    `suffix`: write to `<path><suffix>` instead, removed first if there, for a caller that
    finds an unfinished write by that name (records conversion resumes by
    `dataset_spec.json.partial`) in a folder of its own.
    """
    path = path.rstrip("/") or path
    if suffix is None:
        clear_leftovers(path)
        partial = temporary_name(path)
    else:
        partial = path + suffix
        _remove(partial)
    try:
        yield partial
        _move_in(partial, path)
    except BaseException:
        _remove(partial)
        raise


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", suffix: str | None = None, **open_kwargs):
    """`atomic_path` for a file opened with `open(..., mode, **open_kwargs)`.

        with atomic_write(path) as f:
            json.dump(result, f)
    """
    with atomic_path(path, suffix) as partial, open(partial, mode, **open_kwargs) as f:
        yield f


def check_output_file(path: str, example: str, flag: str = "--output") -> None:
    """A ValueError naming `flag` unless a file can be written at `path`: not empty, not a
    folder, and no file where one of its parent folders would be (`example`: a file name to
    suggest inside a folder)."""
    if not path:
        raise UserError(f"{flag} is empty; give the file to write (or leave the flag out).")
    if os.path.isdir(path):
        raise UserError(f"{flag}={os.path.abspath(path)} is a folder; give a file name such "
                        f"as {os.path.join(os.path.abspath(path), example)}.")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise UserError(f"{flag}={os.path.abspath(path)} cannot be written: {parent} is a "
                        "file, not a folder; choose another path.")


def disk_size(path: str) -> int:
    """Bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)

"""The workdir lock: one trainer per workdir, released however the trainer exits."""

from __future__ import annotations

import errno
import fcntl
import os

from tfmeta.errors import WorkdirLocked

LOCK_FILE = ".lock"


class WorkdirLock:
    """An exclusive OS lock (`flock`) on `<workdir>/.lock`, released when the holder exits,
    however it exits (SIGKILL included). The file records the holder's PID for messages."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = None

    def acquire(self) -> WorkdirLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise WorkdirLocked(
                f"{os.path.dirname(self.path)} is in use by another trainer (PID {holder}); "
                "wait for it to finish or stop it, or use another --workdir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

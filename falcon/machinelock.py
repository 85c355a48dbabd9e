"""One measurement at a time on this machine, across processes: an advisory lock file.

Each app server keeps its own measurement queue (:class:`falcon.worker.MeasurementQueue`); two servers on one
shared machine (two users' ``streamlit run``, or one per course) would otherwise time their jobs at the same time
and spoil each other's numbers. Before a queue starts a job it takes this lock without waiting; when another
process holds it the job stays in line and says so. The lock is ``flock`` on a file of ours
(``$FALCON_MEASURE_LOCK``, default ``<temp dir>/falcon-explorer-measure.lock``); the kernel releases it when its
holder exits, however it exits. Where ``fcntl`` does not exist (Windows) the lock always succeeds.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None

ENV_VAR = "FALCON_MEASURE_LOCK"
FILE_NAME = "falcon-explorer-measure.lock"


def lock_path() -> Path:
    """Where the machine's measurement lock lives (read at each call, so tests and servers can set it)."""
    return Path(os.environ.get(ENV_VAR) or Path(tempfile.gettempdir()) / FILE_NAME)


class MachineLock:
    """``acquire()`` without waiting (True when this process now holds it); ``release()``. Not re-entrant."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else lock_path()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        if fcntl is None:
            self._fd = -1
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # an unwritable temp dir: measure rather than never
            self._fd = -1
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

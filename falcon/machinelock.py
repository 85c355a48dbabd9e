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
#: the experiments' lock (fine-tuning runs, one at a time per machine): its own file, so that a server's queue and
#: its experiment slot (two descriptors in one process) do not exclude each other
EXPERIMENT_ENV_VAR = "FALCON_EXPERIMENT_LOCK"
EXPERIMENT_FILE_NAME = "falcon-explorer-experiment.lock"


def lock_path(kind: str = "measure") -> Path:
    """Where the machine's ``measure`` or ``experiment`` lock lives (read at each call, so tests and servers can
    set it)."""
    env, name = (ENV_VAR, FILE_NAME) if kind == "measure" else (EXPERIMENT_ENV_VAR, EXPERIMENT_FILE_NAME)
    return Path(os.environ.get(env) or Path(tempfile.gettempdir()) / name)


class MachineLock:
    """``acquire()`` without waiting (True when this process now holds it); ``release()``. Not re-entrant."""

    def __init__(self, path: str | os.PathLike | None = None, kind: str = "measure"):
        self._path = Path(path) if path is not None else None
        self.kind = kind
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        """The given path, else the environment's at this moment."""
        return self._path if self._path is not None else lock_path(self.kind)

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

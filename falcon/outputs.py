"""Files written for the user (a CSV of runs, an ONNX or TorchScript model): checked before the work, written whole
or not at all.

:func:`check_target` refuses a target that is a directory, a device (``/dev/full``, ``/dev/null``), a pipe or a
socket, or whose folder is not a folder, with one line naming the flag to change. :func:`replacing` writes to a
temporary file beside the target and ``os.replace`` s it into place only when everything was written and synced, so
an interrupted or failed write (disk full, no permission) leaves the old file as it was and no partial file; an
``OSError`` becomes one :class:`~falcon.errors.FalconError` line.
"""
from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from falcon.errors import FalconError


def check_target(path: str | os.PathLike, flag: str = "--output") -> Path:
    """``path`` as a :class:`Path` (a symlink to a file: the file it points at), if a regular file can be written
    there; otherwise a :class:`FalconError` that says what to give ``flag`` instead. Nothing is created."""
    p = Path(path).expanduser()
    if p.is_symlink() and p.exists():
        p = Path(os.path.realpath(p))
    try:
        st = p.stat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise FalconError(f"cannot use {p} as {flag} ({e.strerror or e}); give another file") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FalconError(f"{flag} {p} is a directory; give a file name inside it, such as {p / 'out'}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise FalconError(f"{flag} {p} is not a regular file (a device, pipe or socket); give a file name")
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise FalconError(f"{flag} {p}: {parent} is not a folder; give another file name")
    return p


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextmanager
def replacing(path: str | os.PathLike, flag: str = "--output", mode: str = "w", **open_kw) -> Iterator[IO]:
    """``with replacing("runs.csv", "--csv", newline="") as f: f.write(...)``: ``f`` is a temporary file beside the
    target; when the block ends without an exception it is synced and renamed onto the target (its permissions those
    of the file it replaces, else the umask's); on any exception it is removed and the target is left as it was."""
    target = check_target(path, flag)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as e:
        raise FalconError(f"cannot write {flag} {target} ({e.strerror or e}); give another file") from None
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        perms = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask()
        os.chmod(tmp, perms)
        os.replace(tmp, target)
    except OSError as e:
        raise FalconError(f"cannot write {flag} {target} ({e.strerror or e}); nothing was written there") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes, flag: str = "--output") -> Path:
    """``data`` written to ``path`` through :func:`replacing`; returns the path written."""
    with replacing(path, flag, "wb") as f:
        f.write(data)
    return check_target(path, flag)

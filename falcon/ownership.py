"""Jobs owned by the session that started them (issue #20): others learn only that the machine is busy, cannot read
or stop the job, and a job whose session is gone is ended.

* :class:`Owners` — whether an owner (a session id) is still there: ``alive(owner)`` when the caller knows
  (the app asks Streamlit's runtime), else heartbeats (:meth:`Owners.seen`) within a timeout. The measurement
  queue (:class:`falcon.worker.MeasurementQueue`) and :class:`OwnedSlot` both decide with it.
* :class:`OwnedSlot` — one background :class:`falcon.jobs.Job` at a time on this machine (the Experiments page's
  sweep runner), owned: :meth:`~OwnedSlot.start` refuses a second one, :meth:`~OwnedSlot.job` and
  :meth:`~OwnedSlot.stop` answer only the owner, :meth:`~OwnedSlot.busy` tells the others "machine busy" and the
  time left; a watcher thread stops the job once its owner is gone.

No Streamlit here.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from falcon.errors import FalconError

log = logging.getLogger("falcon.ownership")

#: an owner whose liveness is unknown and who has not been seen for this long is gone
OWNER_TIMEOUT_S = 30.0
#: an owner reported not alive is gone once it has stayed so this long (a browser's websocket reconnects to its
#: session within a second or two; a closed tab never does)
ABSENT_GRACE_S = 5.0


class Owners:
    """Who is still there. ``alive(owner)``: True/False when the caller knows (False for ``grace`` seconds in a row:
    gone), None when it does not; then an owner is gone once it has not called :meth:`seen` for ``timeout`` seconds
    (one never seen counts from its first :meth:`seen` or :meth:`claim`)."""

    def __init__(self, alive: Callable[[str], bool | None] | None = None, timeout: float = OWNER_TIMEOUT_S,
                 grace: float = ABSENT_GRACE_S):
        self.alive = alive
        self.timeout = timeout
        self.grace = grace
        self._seen: dict[str, float] = {}
        self._absent: dict[str, float] = {}  # owner -> when alive() first said False (since its last True)

    def seen(self, owner: str) -> None:
        """The owner is still there (its page polled)."""
        self._seen[owner] = time.monotonic()

    claim = seen  # an owner that starts something is there now

    def forget(self, owner: str) -> None:
        self._seen.pop(owner, None)
        self._absent.pop(owner, None)

    def gone(self, owner: str) -> bool:
        now = time.monotonic()
        known = self.alive(owner) if self.alive is not None else None
        if known is None:
            return now - self._seen.get(owner, now) > self.timeout
        if known:
            self._absent.pop(owner, None)
            return False
        return now - self._absent.setdefault(owner, now) >= self.grace


def fmt_left(seconds: float) -> str:
    """``40 s``, ``3 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def left_seconds(job: Any) -> float | None:
    """Seconds a :class:`falcon.jobs.Job` still needs, from its progress (None before it has any)."""
    if job.done:
        return 0.0
    if job.progress < 0.02 or not job.seconds:
        return None
    return job.seconds * (1 - job.progress) / job.progress


class OwnedSlot:
    """One owned background job at a time (``what`` names it in messages: "an experiment").

    ``poll_s``: how often the watcher asks whether the running job's owner is gone (it stops the job then, with
    ``job.ended_because = "its session ended"``)."""

    def __init__(self, what: str = "a job", alive: Callable[[str], bool | None] | None = None,
                 owner_timeout: float = OWNER_TIMEOUT_S, poll_s: float = 1.0, grace: float = ABSENT_GRACE_S,
                 machine: Any = None):
        self.what = what
        self.machine = machine  # a falcon.machinelock.MachineLock: one job at a time across processes too
        self.owners = Owners(alive, owner_timeout, grace)
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._current: tuple[str, Any] | None = None  # (owner, job): running, or the last one until replaced
        self._last: dict[str, Any] = {}  # each owner's latest job

    def start(self, owner: str, job: Any) -> Any:
        """Start ``job`` (not yet started) for ``owner``; refused (FalconError, nothing started) while any job runs."""
        self._reap()
        with self._lock:
            if self._current is not None and not self._current[1].done:
                mine = self._current[0] == owner
                raise FalconError(f"you already have {self.what} running; stop it or wait for it" if mine else
                                  f"the machine is busy with {self.what} of another session; wait for it to finish")
            if self.machine is not None:
                self.machine.release()  # the previous job is done (its watcher may not have let go yet)
            if self.machine is not None and not self.machine.acquire():
                raise FalconError(f"the machine is busy with {self.what} of another FALCON Explorer process on "
                                  "this machine; wait for it to finish")
            self.owners.claim(owner)
            job.owner = owner
            try:
                job.start()
            except BaseException:
                if self.machine is not None:
                    self.machine.release()
                raise
            self._current = (owner, job)
            self._last[owner] = job
        threading.Thread(target=self._watch, args=(owner, job), name=f"falcon-watch-{job.name}", daemon=True).start()
        return job

    def seen(self, owner: str) -> None:
        self.owners.seen(owner)

    def job(self, owner: str) -> Any:
        """``owner``'s latest job (running or ended), never another owner's; None when it has none."""
        with self._lock:
            return self._last.get(owner)

    def stop(self, owner: str) -> None:
        """Stop ``owner``'s running job; a job of another owner is refused (FalconError)."""
        with self._lock:
            current = self._current
        if current is None or current[1].done:
            raise FalconError(f"no {self.what.split(' ', 1)[-1]} is running")
        if current[0] != owner:
            raise FalconError(f"that {self.what.split(' ', 1)[-1]} belongs to another session")
        current[1].stop()

    def running(self) -> bool:
        with self._lock:
            return self._current is not None and not self._current[1].done

    def foreign(self, owner: str) -> Any:
        """Another owner's running job, for the caller to leave its traces out of what ``owner`` is shown (e.g. the
        runs it has stored so far); never to be shown or stopped. None when no other owner's job runs."""
        with self._lock:
            current = self._current
        if current is None or current[0] == owner or current[1].done:
            return None
        return current[1]

    def busy(self, owner: str) -> str | None:
        """What ``owner`` may know of another session's running job: ``machine busy (an experiment by another
        session, ~3 min left)``; None when no other session's job runs."""
        with self._lock:
            current = self._current
        if current is None or current[0] == owner or current[1].done:
            return None
        left = left_seconds(current[1])
        when = f"~{fmt_left(left)} left" if left is not None else "just started"
        return f"machine busy ({self.what} by another session, {when})"

    def _watch(self, owner: str, job: Any) -> None:
        """Until ``job`` ends: stop it once its owner is gone; then forget the gone owner's result."""
        while not job.wait(self.poll_s):
            try:
                if not job.should_stop() and self.owners.gone(owner):
                    job.ended_because = "its session ended"
                    job.stop()
            except Exception:  # noqa: BLE001 - an alive() that fails must not leave the job unwatched
                log.exception("watching %s", job.name)
        self._release(job)
        self._reap()

    def _release(self, job: Any) -> None:
        """The machine lock goes with ``job``: let go unless a newer job holds it already."""
        with self._lock:
            if self.machine is not None and (self._current is None or self._current[1] is job):
                self.machine.release()

    def _reap(self) -> None:
        """Forget the latest jobs of owners that are gone (their results are nobody's to read)."""
        with self._lock:
            for o in [o for o, j in self._last.items() if j.done and self.owners.gone(o)]:
                del self._last[o]
                self.owners.forget(o)

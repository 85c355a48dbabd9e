"""Long work in a background thread that a page (or a test) polls: progress, a stop flag, the result.

One job API for the whole project: the calculator's benchmark, the EHP-fit page's gradient descent and
the experiments' sweep runner (:class:`falcon.experiments.sweep.SweepRunner` is a :class:`Job`).
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable

from falcon.errors import FalconError


class Job:
    """Run ``target(job)`` in a daemon thread; a page polls it and may ask it to stop.

    ``target`` reports with :meth:`report` (progress in [0, 1], a label), appends records to
    ``job.records`` (a list only the thread appends to) and asks :meth:`should_stop` between steps
    (pass ``job.should_stop`` where a library function takes a ``should_stop`` callable).
    Its return value lands in ``result``; a :class:`FalconError` in ``error`` (its message); any other
    exception in ``error`` too, with the traceback in ``trace`` (a page shows the message, not it).

    ``status`` is ``pending``, ``running``, then ``completed``, ``stopped`` (a stop was asked for and the
    target returned) or ``failed``.
    """

    def __init__(self, target: Callable[["Job"], Any], name: str = "job"):
        self.target = target
        self.name = name
        self.progress = 0.0
        self.label = ""
        self.records: list = []
        self.result: Any = None
        self.error: str | None = None
        self.trace: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Job({self.name!r}, {self.status}, progress={self.progress:.2f})"

    def start(self) -> "Job":
        if self._thread is not None:
            raise RuntimeError(f"job {self.name!r} has already been started")
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"falcon-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.target(self)
        except FalconError as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 - reported to the page, which shows the message
            self.error = f"{type(e).__name__}: {e}"
            self.trace = traceback.format_exc()
        finally:
            self.finished_at = time.perf_counter()

    def report(self, progress: float, label: str = "") -> None:
        self.progress = max(0.0, min(1.0, float(progress)))
        self.label = label

    def stop(self) -> None:
        """Ask the target to stop at its next check."""
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    @property
    def status(self) -> str:
        if self._thread is None:
            return "pending"
        if self._thread.is_alive():
            return "running"
        if self.error is not None:
            return "failed"
        return "stopped" if self.should_stop() else "completed"

    @property
    def seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.perf_counter()) - self.started_at

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

"""What the other processes on the machine did while a measurement ran, measured rather than inferred.

The 1-minute load average cannot say it: it also counts the measurement's own threads (which are not runnable
all the time: worker start, Python-only phases, the profiler), and the value before a run may still be decaying
from an earlier busy period. Linux counts CPU time directly: ``/proc/stat`` has the whole machine's busy time,
``/proc/<pid>/stat`` a process's own (its threads, and its children once waited for). A **sample** is
``[wall seconds (monotonic), machine busy CPU seconds, the measuring process's CPU seconds]``; over an interval the
other processes kept ``(Δmachine − Δown) / Δwall`` cores busy (:func:`others_cores`).

Samples are plain lists (they go into results' JSON as ``cpu_samples``). Where ``/proc`` is missing (not Linux)
:func:`cpu_sample` returns None and the callers keep only the load average. No torch, no Streamlit.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from itertools import pairwise

# /proc/stat's cpu line: user nice system idle iowait irq softirq steal guest guest_nice; busy = all but idle,
# iowait (waiting, not running) and guest/guest_nice (already counted in user/nice)
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
WINDOW_S = 5.0  # the shortest interval compared (reliability.py says why)


def _clock_tick() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


_TICK = _clock_tick()


def loadavg() -> float | None:
    """The 1-minute load average (2 decimals), or None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_busy_seconds(path: str = "/proc/stat") -> float | None:
    """CPU seconds all cores have spent busy since boot (user+nice+system+irq+softirq+steal), or None."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    return sum(values[i] for i in _BUSY_FIELDS if i < len(values)) / _TICK


def _stat(pid: int | str) -> tuple[int, float] | None:
    """(parent pid, utime+stime+cutime+cstime in seconds) from ``/proc/<pid>/stat``, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # the name in parentheses may hold spaces
    try:  # fields 4 (ppid) and 14-17 of the file, counted here from field 3 (state)
        return int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICK
    except (ValueError, IndexError):
        return None


def process_cpu_seconds(pid: int | None = None) -> float | None:
    """CPU seconds of a process (default: this one) and its live descendants (compile workers, say): each one's
    utime+stime+cutime+cstime (cutime: its children that ended), or None when it cannot be read (not Linux, the
    process is gone)."""
    root = pid or os.getpid()
    own = _stat(root)
    if own is None:
        return None
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        st = _stat(name) if name.isdigit() else None
        if st is not None:
            parents.setdefault(st[0], []).append(int(name))
    total, todo = own[1], list(parents.get(root, []))
    while todo:
        child = todo.pop()
        st = _stat(child)
        total += st[1] if st else 0.0
        todo.extend(parents.get(child, []))
    return total


def cpu_sample(pid: int | None = None) -> list[float] | None:
    """``[monotonic seconds, machine busy CPU seconds, process CPU seconds]`` (process: ``pid``, default this one),
    or None where Linux's counters cannot be read."""
    machine, own = machine_busy_seconds(), process_cpu_seconds(pid)
    if machine is None or own is None:
        return None
    return [round(time.monotonic(), 3), round(machine, 2), round(own, 2)]


def others_cores(a: Sequence[float], b: Sequence[float]) -> float:
    """The cores the other processes kept busy between samples ``a`` and ``b`` (never below 0)."""
    wall = b[0] - a[0]
    if wall <= 0:
        return 0.0
    return max((b[1] - a[1]) - (b[2] - a[2]), 0.0) / wall


def windows(samples: Sequence[Sequence[float]], window_s: float = WINDOW_S) -> list[tuple[float, float, float]]:
    """The samples cut into consecutive intervals of at least ``window_s`` seconds, each ``(start, end, others'
    cores)`` (start and end relative to the first sample); a shorter tail joins the last interval."""
    samples = [s for s in samples if s]
    if len(samples) < 2:
        return []
    cuts, t0 = [0], samples[0][0]
    for i, s in enumerate(samples[1:], 1):
        if s[0] - samples[cuts[-1]][0] >= window_s:
            cuts.append(i)
    if cuts[-1] != len(samples) - 1:
        if len(cuts) > 1:
            cuts[-1] = len(samples) - 1  # the short tail joins the last interval
        else:
            cuts.append(len(samples) - 1)
    return [(samples[i][0] - t0, samples[j][0] - t0, others_cores(samples[i], samples[j]))
            for i, j in pairwise(cuts)]


class Sampler:
    """Samples taken during a run (:func:`cpu_sample` of ``pid``, default this process) and the load average at its
    start and end. ``tick()`` adds a sample when ``every`` seconds have passed since the last; ``finish()`` adds the
    last ones and returns ``(load averages or None, CPU samples or None)``, as results store them."""

    def __init__(self, pid: int | None = None, every: float = 0.5):
        self.pid, self.every = pid, every
        self.samples: list[list[float]] = []
        self.loads: list[float] = []
        self._last = float("-inf")
        self.load()
        self.tick(force=True)

    def load(self) -> None:
        value = loadavg()
        if value is not None:
            self.loads.append(value)

    def tick(self, *_: object, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        sample = cpu_sample(self.pid)
        if sample is not None:
            self.samples.append(sample)
            self._last = now

    def finish(self) -> tuple[list[float] | None, list[list[float]] | None]:
        self.tick(force=True)
        self.load()
        return self.loads or None, self.cpu_samples

    @property
    def first_load(self) -> float | None:
        return self.loads[0] if self.loads else None

    @property
    def cpu_samples(self) -> list[list[float]] | None:
        return self.samples if len(self.samples) >= 2 else None

"""Measurements that respect the machine: estimated first, run one at a time in a worker process, owned by a session.

* **Estimate first.** :func:`estimate_layer` and :func:`estimate_model` predict the seconds and the peak memory
  of a layer or whole-model benchmark from its MACs and bytes, this machine's rate (:func:`machine_rate`: a
  tiny timed conv and a memory copy, once per process) and how busy it is now (:func:`busy_factor`: the same conv
  timed again, at most every few seconds). :meth:`Estimate.check` refuses one above the limits
  (:data:`MAX_SECONDS`, :data:`MAX_MEMORY_FRACTION` of the available memory; environment variables
  ``FALCON_MEASURE_MAX_S`` and ``FALCON_MEASURE_MEMORY_FRACTION``) with the estimate and what to change.
* **A worker process.** A :class:`WorkerJob` runs ``task.fn(**task.kwargs, progress=..., should_stop=...)``
  (:func:`falcon.bench.measure`, :func:`falcon.modelbench.measure_model`) in a process started with
  ``multiprocessing``'s ``spawn`` context; progress and the result come back through a pipe as plain data
  (dataclasses of numbers and strings). Stop asks the worker to stop after its current step and, when it has
  not answered within :data:`STOP_GRACE_S`, kills the process, whatever kernel it is in: the memory goes back
  to the system with it.
* **One at a time per machine.** A :class:`MeasurementQueue` (one per server process: the app keeps it in
  ``st.cache_resource``) runs one job at a time, in order; a waiting job says its place in the line.
* **Jobs belong to a session.** Each job has an ``owner`` (a session id); only the owner can stop it or read
  it through the queue (:meth:`MeasurementQueue.job`, :meth:`MeasurementQueue.stop`); others get
  :meth:`MeasurementQueue.busy` ("machine busy: a measurement by another session, ~N s left"). A job whose
  owner is gone (``alive(owner)`` is False, or, when that is unknown, the owner has not called
  :meth:`MeasurementQueue.seen` for :data:`OWNER_TIMEOUT_S`) is ended.

No Streamlit here.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import statistics
import threading
import time
import traceback
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from falcon.cpuload import cpu_sample
from falcon.cpuload import loadavg as _loadavg
from falcon.errors import FalconError
from falcon.machinelock import MachineLock
from falcon.ownership import OWNER_TIMEOUT_S, Owners, fmt_left

log = logging.getLogger("falcon.worker")

def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


#: the longest estimated measurement that is started (seconds; env FALCON_MEASURE_MAX_S)
MAX_SECONDS = _env_float("FALCON_MEASURE_MAX_S", 120.0)
#: the share of the available memory (RAM, or free GPU memory) a measurement may plan to use
#: (env FALCON_MEASURE_MEMORY_FRACTION)
MAX_MEMORY_FRACTION = _env_float("FALCON_MEASURE_MEMORY_FRACTION", 0.5)
#: after Stop, how long the worker may take to return what it has before it is killed
STOP_GRACE_S = 0.6
#: seconds a worker process takes to start (spawn, import torch) before it measures; refined by every start
WORKER_START_S = 4.0
LOAD_SAMPLE_S = 2.0
#: Python and dispatch cost of one call of a small block (seconds)
CALL_OVERHEAD_S = 5e-5


# ----------------------------------------------------------------------------------------------
# this machine's rate
@dataclass(frozen=True)
class MachineRate:
    """What this machine does per second: dense-conv MACs and copied bytes (at ``threads`` threads)."""

    device: str
    threads: int
    gmacs: float
    gbytes: float
    seconds: float  # how long the calibration took

    def scaled(self, threads: int | None) -> tuple[float, float]:
        """(MAC/s, bytes/s) at ``threads`` threads (CPU: linear in the threads up to the cores)."""
        if self.device != "cpu" or not threads:
            return self.gmacs * 1e9, self.gbytes * 1e9
        cores = os.cpu_count() or 1
        f = min(threads, cores) / max(min(self.threads, cores), 1)
        return self.gmacs * 1e9 * f, self.gbytes * 1e9 * max(min(f, 1.0), 0.5)


_RATES: dict[str, MachineRate] = {}
_RATE_LOCK = threading.Lock()
#: the calibration conv: 128→128 3×3 on a 1×128×48×48 input
CALIBRATION_MACS = 128 * 128 * 9 * 48 * 48
_CALIBRATION: dict[str, tuple] = {}  # device type -> (conv, input)


def _calibration(dev) -> tuple:
    import torch

    if dev.type not in _CALIBRATION:
        gen = torch.Generator().manual_seed(0)
        conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(dev).eval()
        _CALIBRATION[dev.type] = (conv, torch.randn(1, 128, 48, 48, generator=gen).to(dev))
    return _CALIBRATION[dev.type]


def machine_rate(device: str = "auto") -> MachineRate:
    """This machine's rate at its best, measured once per process and device (~0.1–0.3 s), improved by every
    faster :func:`busy_factor` probe: the fastest of seven runs of a 128→128 3×3 conv on a 1×128×48×48 input
    (340 M MACs, ~5 ms) and of a 64 MiB tensor copy. The fastest, not the median: on a shared 2-core machine one
    OpenMP barrier behind another process's burst makes a single run 100× slower, and a rate fixed for the
    process's life must not be one such moment; how busy the machine is now is :func:`busy_factor`'s."""
    import torch

    from falcon.bench import resolve_device

    dev = resolve_device(device)
    with _RATE_LOCK:
        if dev.type in _RATES:
            return _RATES[dev.type]
        t0 = time.perf_counter()
        conv, x = _calibration(dev)
        src = torch.empty(16 << 20, device=dev)
        dst = torch.empty_like(src)

        def timed(fn) -> float:
            times = []
            for _ in range(8):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                s = time.perf_counter()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(time.perf_counter() - s)
            return min(times[1:])  # the first is a warm-up

        with torch.inference_mode():
            t_conv = timed(lambda: conv(x))
            t_copy = timed(lambda: dst.copy_(src))
        rate = MachineRate(dev.type, torch.get_num_threads(), CALIBRATION_MACS / t_conv / 1e9,
                           2 * src.numel() * 4 / t_copy / 1e9, time.perf_counter() - t0)
        _RATES[dev.type] = rate
        return rate


#: a probe of how busy the machine is times the calibration conv for this long, at most every PROBE_EVERY_S
PROBE_S = 0.15
PROBE_EVERY_S = 10.0
_SLOWDOWN: dict[str, tuple[float, float]] = {}  # device type -> (monotonic time of the probe, its slowdown)


def _probe_times(dev, seconds: float) -> list[float]:
    """Seconds per call of the calibration conv, run now for ``seconds`` (at least three calls)."""
    import torch

    conv, x = _calibration(dev)
    times: list[float] = []
    end = time.perf_counter() + seconds
    with torch.inference_mode():
        while len(times) < 3 or time.perf_counter() < end:
            s = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - s)
    return times


def busy_factor(device: str = "auto") -> float:
    """How many times slower than at its best this machine runs a measurement now (≥ 1; CUDA: 1): the median of a
    :data:`PROBE_S` run of the calibration conv over the best time seen (:func:`machine_rate`, which a faster probe
    improves), probed at most every :data:`PROBE_EVERY_S`, never while a worker of this process measures (the last
    probe's answer then). Multiplied into the estimates. Measured, not the load
    average: at a 1-minute load of 3.3–4 on 2 cores, ``(load + threads) / cores`` said 2.7× where resnet18 ran
    1.5× slower than the rate that process calibrated (itself already slowed), and at a load of ~2 estimates made
    without any factor were half the 83–102 s measured."""
    from falcon.bench import resolve_device

    dev = resolve_device(device)
    if dev.type != "cpu":
        return 1.0
    now = time.monotonic()
    cached = _SLOWDOWN.get(dev.type)
    if cached is not None and now - cached[0] < PROBE_EVERY_S:
        return cached[1]
    if _LIVE:  # a measurement of ours runs: a probe would disturb its timings (and a job queued now runs after it)
        return cached[1] if cached is not None else 1.0
    rate = machine_rate(device)
    times = _probe_times(dev, PROBE_S)
    best = CALIBRATION_MACS / (rate.gmacs * 1e9)
    if min(times) < best:  # the machine at a quieter moment than the calibration saw
        best = min(times)
        with _RATE_LOCK:
            _RATES[dev.type] = dataclasses.replace(rate, gmacs=CALIBRATION_MACS / best / 1e9)
    slowdown = max(1.0, statistics.median(times) / best)
    _SLOWDOWN[dev.type] = (now, slowdown)
    return slowdown


# ----------------------------------------------------------------------------------------------
# estimates
@dataclass(frozen=True)
class Estimate:
    """Seconds and peak bytes a measurement is expected to take here, its limits, and what would shrink it."""

    what: str
    seconds: float
    peak_bytes: int
    max_seconds: float
    memory_limit: int | None
    memory_source: str
    advice: tuple[str, ...]
    detail: str = ""
    slowdown: float = 1.0  # how busy the machine was, already in ``seconds`` (:func:`busy_factor`)

    @property
    def too_long(self) -> bool:
        return self.seconds > self.max_seconds

    @property
    def too_big(self) -> bool:
        return self.memory_limit is not None and self.peak_bytes > self.memory_limit

    @property
    def refused(self) -> bool:
        return self.too_long or self.too_big

    def describe(self) -> str:
        """``about 40 s and 1.2 GiB at its peak``; on a busy machine ``about 80 s (2.0× for the load now) and ...``."""
        from falcon.bench import fmt_bytes

        load = f" ({self.slowdown:.1f}× for the load now)" if self.slowdown >= 1.1 else ""
        return f"about {_fmt_seconds(self.seconds)}{load} and {fmt_bytes(self.peak_bytes)} at its peak"

    def refusal(self) -> str | None:
        """One line saying why it is refused (the estimate, the limit, what to change), or None."""
        from falcon.bench import fmt_bytes

        if not self.refused:
            return None
        over = []
        if self.too_long:
            over.append(f"the limit is {_fmt_seconds(self.max_seconds)}")
        if self.too_big:
            over.append(f"the memory limit is {fmt_bytes(self.memory_limit)} ({self.memory_source})")
        return (f"{self.what} is refused: it would take {self.describe()} on this machine, and {' and '.join(over)}; "
                f"{'; '.join(self.advice) or 'use a smaller configuration'}")

    def check(self) -> "Estimate":
        """Raise a FalconError (:meth:`refusal`) when over a limit; return self otherwise."""
        message = self.refusal()
        if message:
            raise FalconError(message)
        return self


_fmt_seconds = fmt_left


def _memory_limit(device) -> tuple[int | None, str]:
    import torch

    from falcon.bench import _available_ram, fmt_bytes

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MAX_MEMORY_FRACTION), f"{MAX_MEMORY_FRACTION:.0%} of the free GPU memory ({fmt_bytes(free)})"
    available, source = _available_ram()
    if available is None:
        return None, "available memory unknown"
    return int(available * MAX_MEMORY_FRACTION), f"{MAX_MEMORY_FRACTION:.0%} of the {source} ({fmt_bytes(available)})"


def _busy_advice(busy: float) -> list[str]:
    if busy < 1.5:
        return []
    return [f"the machine is busy (it runs about {busy:.1f}× slower than when idle): try again when it is quieter"]


def _visit_seconds(t_call: float, min_run_time: float) -> float:
    """One ``blocked_autorange(min_run_time)`` visit: sizing a block (at least one call), then blocks until
    ``min_run_time`` has passed (at least one more call)."""
    return max(min_run_time, t_call) + t_call + 0.002


def estimate_layer(spec, convs: Sequence, batch_size: int = 1, memory_format: str = "auto", rounds: int = 5,
                   min_run_time: float = 0.2, device: str = "auto", threads: int | None = None,
                   dtype: str = "float32", max_seconds: float | None = None) -> Estimate:
    """Seconds and peak memory of :func:`falcon.bench.measure` with these arguments, here.

    Per (conv type, layout): a call takes its MACs at the calibrated conv rate plus the bytes its forward pass
    touches (input, weights, intermediates written and read, output: the meta-device estimate) at the copy rate;
    three warm-up calls, then ``rounds`` visits (:func:`_visit_seconds`). Plus the worker's start and the
    random input. The peak is :func:`falcon.bench.plan_memory`'s (an upper bound)."""
    from falcon.bench import (bench_entries, estimate_memory, plan_memory, resolve_device, resolve_dtype,
                              resolve_memory_formats)

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    layouts = resolve_memory_formats(memory_format)
    entries = bench_entries(spec, convs)
    mac_rate, byte_rate = machine_rate(device).scaled(threads)
    calls = []
    for entry in entries:
        m = estimate_memory(spec, entry, batch_size, torch_dtype)
        touched = m.input_bytes + m.weight_bytes + 2 * m.intermediate_bytes + m.output_bytes
        calls.append(entry.macs(spec, batch_size) / mac_rate + touched / byte_rate + CALL_OVERHEAD_S)
    plan = plan_memory(spec, entries, batch_size, torch_dtype, len(layouts))
    busy = busy_factor(device)
    calls = [busy * t for t in calls]  # the share of the machine it gets now (a visit's min run time is wall time)
    per_layout = sum(3 * t + rounds * _visit_seconds(t, min_run_time) for t in calls)
    setup = WORKER_START_S + busy * 4 * plan.inputs_bytes / byte_rate
    seconds = setup + len(layouts) * per_layout
    slowest = max(calls)
    advice = _busy_advice(busy)
    if slowest * (3 + 2 * rounds) * len(layouts) > 0.3 * seconds:
        advice.append(f"one call of the slowest block takes about {slowest:.2g} s: use a smaller input size H, batch "
                      "size or channel count")
    if len(layouts) > 1:
        advice.append("measure one memory layout instead of auto")
    if rounds > 1:
        advice.append("use fewer rounds")
    if min_run_time > 0.05 and rounds * min_run_time * len(calls) * len(layouts) > 0.3 * seconds:
        advice.append("use fewer seconds per visit")
    if len(entries) > 2:
        advice.append("measure fewer conv types")
    limit, source = _memory_limit(dev)
    return Estimate(f"measuring {spec.describe()} at batch {batch_size}", seconds, plan.total_bytes,
                    MAX_SECONDS if max_seconds is None else max_seconds, limit, source, tuple(advice),
                    f"{len(entries)} blocks × {len(layouts)} layouts; slowest call ~{slowest:.3g} s", busy)


#: a whole-model run, fitted on digits-vgg and resnet18 on a shared 2-core machine: loading, converting, the
#: deployable forms and their parity checks cost about this many passes of each model; a warm-up about this many
#: (the first calls create oneDNN's primitives); the profiler's own calibration about this long
MODEL_EXTRA_PASSES = 40
MODEL_WARMUP_PASSES = 6
MODEL_BASE_S = 3.0
PROFILER_CALIBRATION_S = 3.0
COMPILE_S = 40.0  # torch.compile with inductor, per model and layout
ONNX_S = 6.0  # export and session, per model


def estimate_model(model: Any, conv: Sequence, input_size: int | None = None, num_classes: int | None = None,
                   runtimes: Sequence[str] = ("eager",), memory_format: str = "auto", batch_size: int = 1,
                   threads: int | None = None, rounds: int = 10, min_run_time: float = 0.2, breakdown: bool = True,
                   device: str = "auto", max_seconds: float | None = None) -> Estimate:
    """Seconds and peak memory of :func:`falcon.modelbench.measure_model` with these arguments, here.

    ``model``: a registry entry or name. A pass of the original and of each conversion takes its MACs (convention
    'clean', batch ``batch_size``) at the calibrated conv rate plus its weights at the copy rate; per (model,
    runtime, layout) three warm-up passes and ``rounds`` visits; plus :data:`MODEL_EXTRA_PASSES` passes per model
    (preparation, parity, profile), :data:`COMPILE_S` per compiled graph, :data:`ONNX_S` per ONNX export, the
    worker's start. The peak is :func:`falcon.modelbench.plan_memory`'s, as the measurement itself checks it."""
    from falcon.bench import resolve_device
    from falcon.modelbench import _layouts, parse_conversions, parse_runtimes, plan_memory, runtime_info
    from falcon.sizing import size_model

    dev = resolve_device(device)
    layouts = _layouts(memory_format)
    wanted = [r for r in parse_runtimes(runtimes) if runtime_info(r, dev).available]
    conversions = parse_conversions(conv)
    mac_rate, byte_rate = machine_rate(device).scaled(threads)
    sized = [size_model(model, name, num_classes, input_size, "clean", None, **hp) for name, hp in conversions]
    macs = [s.macs for s in sized]
    standard_macs = sized[0].standard.macs if sized else size_model(model, "standard", num_classes, input_size,
                                                                    "clean").macs
    per_instance = 2 + (len(layouts) if "compile" in wanted else 0) + ("onnxruntime" in wanted)
    n_models = 1 + len(conversions)
    plan = plan_memory(model, batch_size, input_size, num_classes, n_models * per_instance,
                       n_models * (len(layouts) - 1 if "eager" in wanted else 0))
    busy = busy_factor(device)  # the share of the machine it gets now (a visit's min run time is wall time)
    passes = [busy * ((m * batch_size) / mac_rate + (plan.weight_bytes + 3 * plan.activation_bytes) / byte_rate
                      + 100 * CALL_OVERHEAD_S) for m in [standard_macs, *macs]]
    per_runtime = {"eager": len(layouts), "compile": len(layouts), "onnxruntime": 1}
    timed = sum(per_runtime[r] * sum(MODEL_WARMUP_PASSES * t + rounds * _visit_seconds(t, min_run_time) for t in passes)
                for r in wanted)
    extra = MODEL_EXTRA_PASSES * sum(passes)
    if breakdown and "eager" in wanted:  # falcon.modelbench.profile_model: as many unprofiled passes as profiled
        budget = min(max(rounds * min_run_time, 0.2), 2.0)
        extra += sum(2 * min(max(budget / 2 / t, 10), 400) * t * 3 for t in passes) + PROFILER_CALIBRATION_S
    extra += busy * (COMPILE_S * n_models * len(layouts) * ("compile" in wanted)
                     + ONNX_S * n_models * ("onnxruntime" in wanted))
    seconds = WORKER_START_S + busy * MODEL_BASE_S + timed + extra
    advice = _busy_advice(busy)
    if "compile" in wanted:
        advice.append(f"leave out compile (about {COMPILE_S:.0f} s per model and layout)")
    if max(passes) > 0.05:
        advice.append(f"a pass takes about {max(passes):.2g} s: use a smaller input size or batch")
    if len(layouts) > 1:
        advice.append("measure one layout instead of auto")
    if rounds > 3:
        advice.append("use fewer rounds")
    if min_run_time > 0.05:
        advice.append("use fewer seconds per visit")
    limit, source = _memory_limit(dev)
    name = getattr(model, "name", model)
    return Estimate(f"measuring {name} at batch {batch_size}", seconds, plan.total_bytes,
                    MAX_SECONDS if max_seconds is None else max_seconds, limit, source, tuple(advice),
                    f"{n_models} models × {sum(per_runtime[r] for r in wanted)} runtime layouts; "
                    f"a pass ~{max(passes):.3g} s", busy)


# ----------------------------------------------------------------------------------------------
# the worker process
@dataclass(frozen=True)
class WorkerTask:
    """What a worker runs: ``fn(**kwargs, progress=..., should_stop=...)``. ``fn`` is a module-level function (it
    is pickled by reference). ``registry_model``: a model name resolved in the worker through
    :func:`falcon.models.registry_entry` (never code) and passed as ``model=``."""

    fn: Callable
    kwargs: dict
    registry_model: str | None = None


def _child(task: WorkerTask, conn, stop) -> None:  # pragma: no cover - runs in the worker process
    parent = os.getppid()

    def watch() -> None:  # the server is gone: nobody will read the result
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()

    def progress(*args) -> None:
        if len(args) == 3:
            done, total, label = args
            fraction = done / total if total else 0.0
        else:
            fraction, label = args
        conn.send(("progress", float(fraction), str(label)))

    try:
        kwargs = dict(task.kwargs)
        if task.registry_model is not None:
            from falcon.models import registry_entry

            kwargs["model"] = registry_entry(task.registry_model, "the model choice")
        conn.send(("started", os.getpid()))
        result = task.fn(**kwargs, progress=progress, should_stop=stop.is_set)
        conn.send(("result", result))
    except FalconError as e:
        conn.send(("error", str(e), None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which shows the message
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
    finally:
        conn.close()


_LIVE: "weakref.WeakSet[WorkerJob]" = weakref.WeakSet()


@atexit.register
def _kill_workers() -> None:  # before multiprocessing's own atexit joins them
    for job in list(_LIVE):
        job._kill()


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class WorkerJob:
    """One measurement in a worker process, in a :class:`MeasurementQueue`. The surface of :class:`falcon.jobs.Job`
    that pages poll: ``progress``, ``label``, ``result``, ``error``, ``running`` (queued or measuring), ``done``,
    ``status`` (``queued``, ``running``, ``completed``, ``stopped``, ``failed``), ``seconds``, :meth:`stop`,
    :meth:`should_stop`, :meth:`wait`. Also: ``estimate``, ``position`` (place in the line while queued),
    ``loads`` (the load average sampled while it ran), ``cpu_samples`` (:func:`falcon.cpuload.cpu_sample` of the
    worker process at the same moments, from its start to its answer: empty where Linux's counters are missing),
    ``pid`` (the worker process, while it runs), ``ran`` (a worker process was started: a job stopped while queued
    has none)."""

    def __init__(self, task: WorkerTask, owner: str, estimate: Estimate | None = None, name: str = "measurement"):
        self.id = uuid.uuid4().hex[:12]
        self.task, self.owner, self.estimate, self.name = task, owner, estimate, name
        self.progress = 0.0
        self.label = "queued"
        self.result: Any = None
        self.error: str | None = None
        self.trace: str | None = None
        self.submitted_at = time.perf_counter()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.loads: list[float] = []
        self.cpu_samples: list[list[float]] = []
        self.pid: int | None = None
        self.position = 0
        self.ended_because = ""
        self.ran = False  # a worker process was started for it
        self._state = "queued"
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._done = threading.Event()
        self._proc = None
        self._queue: MeasurementQueue | None = None

    def __repr__(self) -> str:
        return f"WorkerJob({self.name!r}, {self.status}, owner={self.owner[:8]!r}, progress={self.progress:.2f})"

    # -- what pages poll
    @property
    def running(self) -> bool:
        return self._state in ("queued", "running")

    @property
    def done(self) -> bool:
        return self._state == "ended"

    @property
    def queued(self) -> bool:
        return self._state == "queued"

    @property
    def status(self) -> str:
        if self._state != "ended":
            return self._state
        if self.error is not None:
            return "failed"
        return "stopped" if self._stop.is_set() else "completed"

    @property
    def seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.perf_counter()) - self.started_at

    def left_seconds(self) -> float:
        """Seconds it still needs (from its progress once there is some, else from its estimate)."""
        if self.done:
            return 0.0
        guess = self.estimate.seconds if self.estimate else 60.0
        if self.started_at is None:
            return guess
        if self.progress >= 0.05:
            return max(self.seconds * (1 - self.progress) / self.progress, 0.0)
        return max(guess - self.seconds, 1.0)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def stop(self, because: str = "") -> None:
        """Stop it: a queued job ends now; a running one is asked to stop and killed after :data:`STOP_GRACE_S`."""
        if self._stop.is_set() or self.done:
            return
        self.ended_because = because
        self._stop_at = time.perf_counter()
        self._stop.set()
        if self._queue is not None:
            self._queue._wake()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # -- the queue's side
    def _end(self) -> None:
        if self.started_at is None:
            self.started_at = time.perf_counter()
        self.finished_at = time.perf_counter()
        self._state = "ended"
        self._proc = None
        self.pid = None
        _LIVE.discard(self)
        if self._queue is not None:
            self._queue._forget(self)
        self._done.set()

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.is_alive():
            proc.kill()

    def _run(self) -> None:
        """Start the worker process and serve it until it ends (called by the queue's thread)."""
        ctx = mp.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        stop = ctx.Event()
        proc = ctx.Process(target=_child, args=(self.task, send, stop), name=f"falcon-{self.name}-{self.id}")
        self._state, self.started_at, self.label = "running", time.perf_counter(), "starting the worker process"
        self.loads = [v for v in [_loadavg()] if v is not None]
        try:
            proc.start()
        except Exception as e:  # noqa: BLE001 - e.g. no more processes allowed
            self.error = f"could not start the worker process ({type(e).__name__}: {e})"
            self._end()
            return
        send.close()
        self._proc, self.pid, self.ran = proc, proc.pid, True
        self._sample_cpu()
        _LIVE.add(self)
        final = self._serve(proc, recv, stop)
        self._sample_cpu()  # before the join reaps it: its /proc entry goes then
        # after Stop its answer is in: a worker whose interpreter takes seconds to tear down (torch and a loaded
        # model: ~2 s on a busy 2-core machine) is killed after the grace, so that Stop ends it within a second
        proc.join(STOP_GRACE_S if self._stop.is_set() else 2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(2.0)
        recv.close()
        if not final:
            if self._stop.is_set():
                self.label = "stopped" + (f": {self.ended_because}" if self.ended_because else "")
            else:
                code = proc.exitcode
                why = " (killed: out of memory?)" if code in (-9, 137) else ""
                self.error = f"the worker process ended without a result (exit code {code}){why}"
        load = _loadavg()
        if load is not None:
            self.loads.append(load)
        self._end()

    def _serve(self, proc, recv, stop) -> bool:
        """Pass progress on, sample the load, enforce Stop; True when a result or an error arrived."""
        next_sample = time.perf_counter() + LOAD_SAMPLE_S
        while True:
            self._enforce_stop(proc, stop)
            if self._queue is not None:
                self._queue._reap(self)
            next_sample = self._sample_load(next_sample)
            try:
                message = _receive(proc, recv)
            except EOFError:  # the pipe is closed, or the worker ended with nothing left to read
                return False
            if message is not None and self._take(message):
                return True

    def _enforce_stop(self, proc, stop) -> None:
        """After Stop: tell the worker, and kill it when it has not ended within :data:`STOP_GRACE_S`."""
        if not self._stop.is_set():
            return
        stop.set()
        now = time.perf_counter()
        if now - (self._stop_at or now) > STOP_GRACE_S and proc.is_alive():
            proc.kill()

    def _sample_load(self, next_sample: float) -> float:
        """The load average into ``loads`` when ``next_sample`` has come; returns the time of the next sample."""
        now = time.perf_counter()
        if now < next_sample:
            return next_sample
        load = _loadavg()
        if load is not None:
            self.loads.append(load)
        self._sample_cpu()
        return now + LOAD_SAMPLE_S

    def _sample_cpu(self) -> None:
        sample = cpu_sample(self.pid) if self.pid else None
        if sample is not None:
            self.cpu_samples.append(sample)

    def _take(self, message: tuple) -> bool:
        """One message of the worker; True when it is the last (a result or an error)."""
        kind = message[0]
        if kind == "progress":
            self.progress, self.label = message[1], message[2]
        elif kind == "started":
            _note_start(time.perf_counter() - (self.started_at or time.perf_counter()))
            self.label = "measuring"
        elif kind == "result":
            self.result, self.progress = message[1], 1.0
        elif kind == "error":
            self.error, self.trace = message[1], message[2]
        return kind in ("result", "error")


def _receive(proc, recv) -> tuple | None:
    """The worker's next message within 50 ms, or None; EOFError when the pipe is closed or the worker has ended
    with nothing left to read."""
    try:
        if recv.poll(0.05):
            return recv.recv()
        if proc.is_alive() or recv.poll(0):
            return None
    except OSError as e:
        raise EOFError(str(e)) from e
    raise EOFError("the worker ended")


def _note_start(seconds: float) -> None:
    """Refine :data:`WORKER_START_S` from a worker's real start (an average that follows the machine)."""
    global WORKER_START_S
    WORKER_START_S = round(0.5 * WORKER_START_S + 0.5 * seconds, 2)


# ----------------------------------------------------------------------------------------------
# the queue
class MeasurementQueue:
    """One measurement at a time on this machine, first come first served; jobs belong to their owners.

    ``alive(owner)``: True/False when the caller knows whether an owner (a session) still exists, None when it
    does not (then :meth:`seen` heartbeats decide: ``owner_timeout`` seconds without one end the owner's jobs).
    ``max_seconds`` / ``memory_fraction``: the limits :meth:`submit` checks the estimate against (default: the
    module's)."""

    def __init__(self, alive: Callable[[str], bool | None] | None = None, owner_timeout: float = OWNER_TIMEOUT_S):
        self.owners = Owners(alive, owner_timeout)
        self._lock = threading.Condition()
        self._jobs: list[WorkerJob] = []  # queued and running, in order
        self._last: dict[str, WorkerJob] = {}  # each owner's latest job
        self._thread: threading.Thread | None = None
        self._machine = MachineLock()  # one measurement at a time across this machine's processes
        self._elsewhere = False  # the lock is held by another process: the first job waits for it

    # -- an owner's calls
    def submit(self, owner: str, task: WorkerTask, estimate: Estimate | None = None, name: str = "measurement",
               check: bool = True) -> WorkerJob:
        """Queue ``task`` for ``owner``; refused (FalconError) when ``estimate`` is over its limits (``check``), or
        when the owner already has a job waiting or running."""
        if check and estimate is not None:
            estimate.check()
        job = WorkerJob(task, owner, estimate, name)
        job._queue = self
        with self._lock:
            mine = [j for j in self._jobs if j.owner == owner]
            if mine:
                raise FalconError("you already have a measurement running or waiting; stop it or wait for it")
            self._jobs.append(job)
            self._last[owner] = job
            self.owners.claim(owner)
            self._positions()
            self._ensure_thread()
            self._lock.notify_all()
        return job

    def seen(self, owner: str) -> None:
        """The owner is still there (a page polled)."""
        self.owners.seen(owner)

    def job(self, owner: str, job_id: str | None = None) -> WorkerJob | None:
        """The owner's latest job (or its job ``job_id``); a job of another owner is refused (FalconError)."""
        with self._lock:
            if job_id is None:
                return self._last.get(owner)
            for j in [*self._jobs, *self._last.values()]:
                if j.id == job_id:
                    if j.owner != owner:
                        raise FalconError("that measurement belongs to another session")
                    return j
        return None

    def stop(self, owner: str, job_id: str) -> None:
        """Stop the owner's job ``job_id``; another owner's job is refused (FalconError)."""
        job = self.job(owner, job_id)
        if job is None:
            raise FalconError("no such measurement")
        job.stop("stopped by its owner")

    def busy(self, owner: str) -> str | None:
        """What ``owner`` may know of others' jobs: None when the machine has no other owner's job, else
        ``machine busy (a measurement by another session, ~N s left)`` and how many wait."""
        with self._lock:
            others = [j for j in self._jobs if j.owner != owner and not j.done]
        if not others:
            return None
        left = self._left_before(others[-1]) + others[-1].left_seconds()
        waiting = len(others) - 1
        more = f"; {waiting} more waiting" if waiting else ""
        return f"machine busy (a measurement by another session{more}, ~{_fmt_seconds(left)} left)"

    def running(self) -> WorkerJob | None:
        with self._lock:
            return next((j for j in self._jobs if j._state == "running"), None)

    # -- inside
    def _left_before(self, job: WorkerJob) -> float:
        with self._lock:
            ahead = self._jobs[: self._jobs.index(job)] if job in self._jobs else []
        return sum(j.left_seconds() for j in ahead)

    def _positions(self) -> None:
        queued = [j for j in self._jobs if j.queued]
        running = next((j for j in self._jobs if j._state == "running"), None)
        for i, j in enumerate(queued, 1):
            j.position = i
            ahead = self._left_before_locked(j)
            if running is None and self._elsewhere:
                j.label = (f"waiting: {_ordinal(i)} in line for the machine; another FALCON Explorer process on "
                           "this machine is measuring")
                continue
            whose = ("another session's measurement" if running is None or running.owner != j.owner
                     else "your other measurement")
            j.label = (f"waiting: {_ordinal(i)} in line for the machine; it is busy with {whose}, "
                       f"~{_fmt_seconds(ahead)} left")

    def _left_before_locked(self, job: WorkerJob) -> float:
        ahead = self._jobs[: self._jobs.index(job)]
        return sum(j.left_seconds() for j in ahead)

    def _reap(self, current: WorkerJob | None = None) -> None:
        """End the jobs of owners that are gone, and the queued jobs that were stopped; forget gone owners' results."""
        with self._lock:
            for owner in [o for o, j in self._last.items() if j.done and self.owners.gone(o)]:
                del self._last[owner]
                self.owners.forget(owner)
            for j in list(self._jobs):
                if not j.should_stop() and self.owners.gone(j.owner):
                    j.stop("its session ended")
                if j.queued and j.should_stop():
                    j.label = "stopped before it started" + (f" ({j.ended_because})" if j.ended_because else "")
                    j._end()
            self._positions()

    def _forget(self, job: WorkerJob) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)
            self._positions()
            self._lock.notify_all()

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="falcon-measurement-queue", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self._reap()
            except Exception:  # noqa: BLE001 - an alive() that fails must not end the queue
                log.exception("reaping measurement jobs")
            with self._lock:
                job = next((j for j in self._jobs if j.queued), None)
                if job is None:
                    self._lock.wait(1.0)
                    continue
            if not self._take_machine():
                continue
            try:
                job._run()
            except Exception as e:  # noqa: BLE001 - the job says it failed; the queue goes on
                log.exception("running a measurement job")
                job.error = job.error or f"{type(e).__name__}: {e}"
                job._kill()
                job._end()
            finally:
                self._machine.release()
                self._forget(job)

    def _take_machine(self) -> bool:
        """The machine-wide lock (:mod:`falcon.machinelock`); while another process holds it, the jobs in line
        say so and the queue looks again within a second."""
        taken = self._machine.acquire()
        with self._lock:
            self._elsewhere = not taken
            if not taken:
                self._positions()
                self._lock.wait(1.0)
        return taken

"""Latency of one layer's conv types, measured the way a careful engineer would trust.

:func:`measure` times the forward pass of each conv type's bare block (the convolutions the closed form
counts; :meth:`~falcon.convtypes.ConvType.build`) on a random batch, next to the standard conv:

* ``torch.utils.benchmark.Timer`` with an explicit thread count (it defaults to 1) and, on CUDA,
  accelerator synchronization around every timed block; eval mode, ``torch.inference_mode``;
* a warm-up per entry (the first calls create oneDNN primitives / pick cuDNN algorithms), then
  ``rounds`` rounds that visit every entry once, in an order rotated every round so that no entry always
  runs after the same neighbour; each visit is a ``blocked_autorange`` of ``min_run_time`` seconds;
* median and IQR over all timed blocks of an entry; measured speedup = standard's median / the entry's
  median in the same memory layout, and "best vs best" = standard's best layout / the entry's median;
* the theoretical speedup is the cost engine's MAC ratio (:func:`falcon.convtypes.compare`).

Before anything is allocated, the memory the configuration needs is estimated by running the blocks on
PyTorch's ``meta`` device (shapes only) and compared with a budget: a fraction of the available RAM
(CPU) or of the free GPU memory (CUDA). ``progress(done, total, label)`` is called after every
warm-up and timed visit; ``should_stop()`` is asked before each one, and a stopped run returns what it
has, marked ``stopped``.

Besides the registry's conv types, the inference form of a type that has one (``{name}-fused``: FALCON run as
two convolutions, :meth:`falcon.convtypes.ConvType.fuse`) can be timed: pass ``(name, {..., "fused": True})``
or its name (:func:`falcon.convtypes.variant_names`).
"""
from __future__ import annotations

import ctypes
import os
import logging
import platform
import statistics
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# torch.utils.benchmark imports cpp_extension, which warns "No CUDA runtime is found" on every CPU-only machine
# with a CUDA build of torch: not news to someone timing on the CPU (describe_device says which device runs)
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

from falcon.convtypes import CONV_TYPES, compare, get_conv_type, parse_variant, variant_names
from falcon.cpuload import Sampler, others_cores
from falcon.errors import FalconError
from falcon.limits import parse_float, parse_int
from falcon.spec import LayerSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
DEVICES = ("auto", "cpu", "cuda")
#: "wall": wall-clock time (what a user waits; synchronized on CUDA). "cpu": this process's CPU time,
#: one thread only: on a shared machine it leaves out the time the process waited for a core.
CLOCKS = ("wall", "cpu")

#: pseudo conv types the harness knows besides the registry: name -> (registry type, extra options)
BENCH_CONVS = variant_names()
#: what a benchmark times by default: standard, then the first type that has an inference form, bare and fused
DEFAULT_BENCH_CONVS = ("standard", *next(((c.name, c.fused_name) for c in CONV_TYPES.values() if c.fused_name), ()))

#: share of the available RAM (CPU) / free GPU memory (CUDA) a benchmark may plan to use
CPU_MEMORY_FRACTION = 0.5
CUDA_MEMORY_FRACTION = 0.9

ProgressFn = Callable[[int, int, str], None]
StopFn = Callable[[], bool]


# ----------------------------------------------------------------------------------------------
# what to time
@dataclass(frozen=True)
class BenchEntry:
    """One conv type to time: its registry type, resolved hyper-parameters and whether it is fused."""

    conv: str  # a name of :func:`falcon.convtypes.variant_names`
    conv_type: str  # the registry entry it builds from
    hparams: tuple[tuple[str, Any], ...]
    fused: bool = False

    @property
    def hp(self) -> dict:
        return dict(self.hparams)

    @property
    def label(self) -> str:
        ct = get_conv_type(self.conv_type)
        name = ct.display_name(**self.hp)
        return name.replace(ct.label, f"{ct.label} fused", 1) if self.fused else name

    def build(self, spec: LayerSpec) -> nn.Module:
        """The bare block (fused: its inference form, :meth:`~falcon.convtypes.ConvType.fuse`), in eval mode."""
        ct = get_conv_type(self.conv_type)
        block = ct.build(spec, **self.hp)
        return (ct.fuse(block) if self.fused else block).eval()

    def macs(self, spec: LayerSpec, batch_size: int) -> int:
        return compare(spec, self.conv_type, **self.hp).cost.macs * batch_size

    def theoretical_speedup(self, spec: LayerSpec) -> float:
        return compare(spec, self.conv_type, **self.hp).computation_reduction_rate


def bench_entries(spec: LayerSpec, convs: Iterable[str | tuple[str, dict]]) -> list[BenchEntry]:
    """Resolve ``convs`` (names, or (name, hparams) pairs; ``fused=True`` or a ``-fused`` name for a type's
    inference form) into entries, standard first (added when missing: speedups are measured against it)."""
    entries: list[BenchEntry] = []
    for item in convs:
        name, hp = (item, {}) if isinstance(item, str) else (item[0], dict(item[1] or {}))
        ct, named_fused = parse_variant(name)
        fused = bool(hp.pop("fused", False)) or named_fused
        conv_type = ct.name
        if fused and ct.fused_name is None:
            raise FalconError(f"{name!r} has no fused form; only {', '.join(n for n in BENCH_CONVS if n not in CONV_TYPES)} do")
        unknown = set(hp) - {h.name for h in ct.hparams}
        if unknown:
            raise FalconError(f"{name} has no hyper-parameter {', '.join(sorted(unknown))}; "
                              f"it takes {', '.join(h.name for h in ct.hparams) or 'none'}")
        resolved = ct.resolve(spec, **hp)
        if ct.widens(**resolved):
            raise FalconError(f"{ct.display_name(**resolved)} changes the layer's widths (it reads α·M input channels, "
                              "not the layer's M); the benchmark times it at settings that keep them (width multiplier 1)")
        entry = BenchEntry(ct.fused_name if fused else conv_type, conv_type, tuple(sorted(resolved.items())), fused)
        if entry not in entries:
            entries.append(entry)
    if not entries:
        raise FalconError("no conv type to measure")
    standard = BenchEntry("standard", "standard", ())
    if standard in entries:
        entries.remove(standard)
    return [standard, *entries]


# ----------------------------------------------------------------------------------------------
# environment
def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without a GPU is a :class:`FalconError`."""
    if not isinstance(device, str) or device.split(":")[0] not in DEVICES:
        raise FalconError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            built = torch.version.cuda or "none"
            raise FalconError(f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
                              f"built for CUDA {built}); use --device cpu")
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise FalconError(f"bad CUDA device {device!r}; use cuda or cuda:N") from None
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise FalconError(f"no CUDA device {index}: {torch.cuda.device_count()} visible")
        return torch.device("cuda", index)
    if device != "cpu":
        raise FalconError(f"bad device {device!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise FalconError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        dtype = names[dtype]
    if dtype not in DTYPES:
        raise FalconError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "float32" and device.type != "cuda":
        raise FalconError(f"{dtype} is measured on CUDA only; on {device.type} use float32")
    return DTYPES[dtype]


def resolve_memory_formats(memory_format: str) -> list[str]:
    if memory_format == "auto":
        return list(MEMORY_FORMATS)
    if memory_format not in MEMORY_FORMATS:
        raise FalconError(f"memory format must be auto, {' or '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    return [memory_format]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _available_ram() -> tuple[int | None, str]:
    try:
        import psutil  # optional: not a dependency
        return int(psutil.virtual_memory().available), "available RAM (psutil)"
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical pages"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def memory_budget(device: torch.device) -> tuple[int | None, str]:
    """(bytes a benchmark may plan to use, where that number comes from); None when unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_FRACTION), f"{CUDA_MEMORY_FRACTION:.0%} of the free GPU memory ({fmt_bytes(free)})"
    available, source = _available_ram()
    if available is None:
        return None, "available RAM unknown"
    return int(available * CPU_MEMORY_FRACTION), f"{CPU_MEMORY_FRACTION:.0%} of the {source} ({fmt_bytes(available)})"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ----------------------------------------------------------------------------------------------
# memory estimate (meta device: shapes only, nothing allocated)
class _AllocationRecorder(TorchFunctionMode):
    """Adds up the bytes of every new (non-view) tensor the forward pass creates."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t._is_view():
                self.tensors.append(t)
        return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one entry's forward pass touches (an upper bound: every intermediate counted as live)."""

    conv: str
    label: str
    input_bytes: int
    weight_bytes: int
    intermediate_bytes: int
    output_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.weight_bytes + self.intermediate_bytes + self.output_bytes


def estimate_memory(spec: LayerSpec, entry: BenchEntry, batch_size: int, dtype: torch.dtype = torch.float32) -> MemoryEstimate:
    """Input, weights, intermediates and output of ``entry``'s forward pass, from a run on ``meta``."""
    with torch.device("meta"):
        module = entry.build(spec).to(dtype)
    x = torch.empty(batch_size, spec.M, spec.height, spec.width, device="meta", dtype=dtype)
    recorder = _AllocationRecorder()
    with torch.no_grad(), recorder:
        out = module(x)
    created = sum(_nbytes(t) for t in recorder.tensors if t is not out)
    weights = sum(_nbytes(p) for p in module.parameters()) + sum(_nbytes(b) for b in module.buffers())
    return MemoryEstimate(entry.conv, entry.label, _nbytes(x), weights, created, _nbytes(out))


@dataclass(frozen=True)
class MemoryPlan:
    """What a whole benchmark holds at its peak: one input per layout, every module's weights, the
    largest forward working set, and room for one re-laid-out copy of the largest weight (oneDNN)."""

    estimates: tuple[MemoryEstimate, ...]
    layouts: int

    @property
    def inputs_bytes(self) -> int:
        return self.estimates[0].input_bytes * self.layouts

    @property
    def weights_bytes(self) -> int:
        return sum(e.weight_bytes for e in self.estimates)

    @property
    def workspace_bytes(self) -> int:
        return (max(e.intermediate_bytes + e.output_bytes for e in self.estimates)
                + max(e.weight_bytes for e in self.estimates))

    @property
    def total_bytes(self) -> int:
        return self.inputs_bytes + self.weights_bytes + self.workspace_bytes


def plan_memory(spec: LayerSpec, entries: Sequence[BenchEntry], batch_size: int, dtype: torch.dtype,
                layouts: int) -> MemoryPlan:
    return MemoryPlan(tuple(estimate_memory(spec, e, batch_size, dtype) for e in entries), layouts)


def check_memory(plan: MemoryPlan, budget: int | None, source: str) -> None:
    """Refuse (FalconError) a plan that does not fit the budget."""
    if budget is None or plan.total_bytes <= budget:
        return
    largest = max(plan.estimates, key=lambda e: e.intermediate_bytes + e.output_bytes)
    raise FalconError(
        f"not enough memory: this benchmark needs about {fmt_bytes(plan.total_bytes)} "
        f"(input {fmt_bytes(plan.estimates[0].input_bytes)} per layout, weights {fmt_bytes(plan.weights_bytes)}, "
        f"{largest.label} forward {fmt_bytes(largest.intermediate_bytes + largest.output_bytes)}) but the budget is "
        f"{fmt_bytes(budget)} ({source}); use a smaller batch size or input size"
    )


# ----------------------------------------------------------------------------------------------
# results
@dataclass
class BenchResult:
    conv: str
    label: str
    hparams: dict
    memory_format: str
    median_ms: float
    iqr_ms: float
    macs: int  # of one forward pass (the whole batch)
    gmacs_per_s: float
    speedup: float | None  # standard's median / this median, same layout
    theoretical_speedup: float  # standard MACs / these MACs (cost engine)
    peak_memory_bytes: int
    best: bool  # fastest layout of this conv type (and hyper-parameters)
    speedup_vs_best_standard: float | None = None  # standard's fastest layout / this median ("best vs best")
    peak_memory_source: str = "estimate"  # "estimate" (CPU: tensor sizes) or "measured" (CUDA)
    samples: int = 0  # timed blocks behind the median
    min_ms: float | None = None  # fastest timed block: what the layer costs when nothing else runs
    calls_per_sample: int = 1

    @property
    def fraction_of_theoretical(self) -> float | None:
        """Measured speedup (best vs best) as a fraction of the theoretical one."""
        s = self.speedup_vs_best_standard
        return None if s is None else s / self.theoretical_speedup


@dataclass
class BenchReport:
    device: str
    device_name: str
    threads: int
    torch_version: str
    dtype: str
    batch_size: int
    spec: dict
    memory_formats: list[str]
    clock: str
    rounds: int
    min_run_time: float
    results: list[BenchResult] = field(default_factory=list)
    stopped: bool = False
    allocator: str = "default"  # "retain" when glibc kept freed memory during the run (CPU)
    load_average: list[float] | None = None  # 1-minute load before and after (CPU contention)
    cpu_samples: list[list[float]] | None = None  # falcon.cpuload samples: start, each visit (≥ 0.5 s apart), end
    cpu_count: int | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long measure() took

    def as_dict(self) -> dict:
        d = asdict(self)
        for r, obj in zip(d["results"], self.results):
            r["fraction_of_theoretical"] = obj.fraction_of_theoretical
        return d

    def rows(self) -> list[dict[str, Any]]:
        """The report as a table, one row per timing (conv type and layout): what ``python -m falcon bench`` and
        the calculator print. ``conv`` (the label), ``layout``, ``median_ms``, ``iqr_ms``, ``GMAC/s``, ``speedup``
        (the standard conv's median in the same layout / this one; None without one),
        ``theory`` (the MAC ratio), ``best vs best`` (the standard conv's fastest layout / this median),
        ``of theoretical`` (best vs best / theory), ``best`` (the fastest layout of its type), ``memory`` (peak,
        formatted; " (est.)" when estimated from tensor sizes)."""
        return [{
            "conv": r.label, "layout": r.memory_format, "median_ms": r.median_ms, "iqr_ms": r.iqr_ms,
            "GMAC/s": r.gmacs_per_s, "speedup": r.speedup, "theory": r.theoretical_speedup,
            "best vs best": r.speedup_vs_best_standard, "of theoretical": r.fraction_of_theoretical, "best": r.best,
            "memory": fmt_bytes(r.peak_memory_bytes) + ("" if r.peak_memory_source == "measured" else " (est.)"),
        } for r in self.results]

    def find(self, conv: str, memory_format: str | None = None, **hparams: Any) -> list[BenchResult]:
        return [r for r in self.results if r.conv == conv
                and (memory_format is None or r.memory_format == memory_format)
                and all(r.hparams.get(k) == v for k, v in hparams.items())]

    def best(self, conv: str, **hparams: Any) -> BenchResult | None:
        """The fastest layout of ``conv`` (the first hyper-parameter setting that matches)."""
        rows = [r for r in self.find(conv, **hparams) if r.best]
        return rows[0] if rows else None


# ----------------------------------------------------------------------------------------------
# the measurement
def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024
_KEEP = 1 << 30  # 1 GiB; mallopt takes a C int (a larger Python int would wrap around)


@contextmanager
def retained_memory(enabled: bool = True):
    """While measuring on CPU, ask glibc to keep freed memory instead of handing it back to the kernel.

    By default glibc serves large blocks (a layer's activations) with mmap and trims the heap top: the
    next forward pass then page-faults its output and intermediates in again, ~2 µs per 4 KiB page. That
    costs the standard conv little and FALCON a lot (for 8×256×32×32 float32, one 8 MiB tensor is ~2,000
    faults), and which regime a process lands in changes from run to run. A caching allocator (jemalloc,
    tcmalloc, PyTorch's own on CUDA) keeps that memory, which is what this does. Yields whether it is on.
    Afterwards the thresholds go back to glibc's static defaults (128 KiB) and free memory is trimmed.
    """
    mallopt = None
    if enabled and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            mallopt = None
    if mallopt is None:
        yield False
        return
    on = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
    try:
        yield on
    finally:
        mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        malloc_trim(0)


def measure(
    spec: LayerSpec,
    convs: Sequence[str | tuple[str, dict]] = DEFAULT_BENCH_CONVS,
    batch_size: int = 1,
    device: str = "auto",
    memory_format: str = "auto",
    dtype: str | torch.dtype = "float32",
    threads: int | None = None,
    rounds: int = 5,
    min_run_time: float = 0.2,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    memory_budget_bytes: int | None = None,
    seed: int = 0,
    clock: str = "wall",
    retain_memory: bool = True,
) -> BenchReport:
    """Time the forward pass of ``convs`` on ``spec`` at ``batch_size`` (see the module docstring).

    ``threads``: CPU threads for the timed runs (default: ``torch.get_num_threads()``).
    ``clock``: ``wall`` (default) or ``cpu`` (process CPU time; CPU device and one thread only).
    ``retain_memory``: on CPU, keep freed memory in the process while measuring (:func:`retained_memory`).
    ``memory_budget_bytes`` overrides the budget derived from the device's free memory.
    """
    parse_int(batch_size, "batch_size", "batch size")
    parse_int(rounds, "rounds")
    parse_float(min_run_time, "min_run_time", "min run time")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    layouts = resolve_memory_formats(memory_format)
    threads = torch.get_num_threads() if threads is None else parse_int(threads, "threads")
    _check_clock(clock, dev, threads)
    t_start = time.perf_counter()
    entries = bench_entries(spec, convs)

    plan = plan_memory(spec, entries, batch_size, torch_dtype, len(layouts))
    budget, source = (memory_budget_bytes, "given budget") if memory_budget_bytes is not None else memory_budget(dev)
    check_memory(plan, budget, source)

    report = BenchReport(
        device=dev.type if dev.type == "cpu" else str(dev), device_name=device_name(dev), threads=threads,
        torch_version=torch.__version__, dtype=str(torch_dtype).replace("torch.", ""), batch_size=batch_size,
        spec=spec.as_dict(), memory_formats=layouts, clock=clock, rounds=rounds, min_run_time=min_run_time,
        cpu_count=os.cpu_count(),
    )
    if budget is None:
        report.notes.append("free memory unknown: the memory guard was skipped")
    sampler = Sampler()
    report.notes.extend(_tf32_notes(dev, torch_dtype))
    tasks: list[_Task] = []
    with ExitStack() as stack:
        retained = stack.enter_context(timing_settings(dev, retain_memory))
        report.allocator = "retain" if retained else "default"
        tasks = _build_tasks(spec, entries, layouts, batch_size, dev, torch_dtype, threads, clock, seed)
        _run_tasks(tasks, rounds, min_run_time, dev.type == "cuda", report, progress, should_stop, sampler.tick)
    report.load_average, report.cpu_samples = sampler.finish()
    report.notes.extend(busy_notes(dev, threads, sampler.first_load, report.cpu_samples))
    report.results = _summarize(tasks, spec, entries, layouts, batch_size, plan)
    report.seconds = time.perf_counter() - t_start
    return report


def _check_clock(clock: str, dev: torch.device, threads: int) -> None:
    if clock not in CLOCKS:
        raise FalconError(f"clock must be {' or '.join(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and (dev.type != "cpu" or threads != 1):
        raise FalconError("the cpu clock measures one thread's CPU time: use it with device cpu and 1 thread")


def busy_notes(dev: torch.device, threads: int, load_before: float | None,
               cpu_samples: Sequence[Sequence[float]] | None = None) -> list[str]:
    """A note when other processes competed for the cores: measured, as the cores they kept busy during the run
    (``cpu_samples``, :mod:`falcon.cpuload`), more than half a core beyond those ``threads`` leave free; without
    samples, a load average before the run about one process too many for ``threads``. Else none."""
    cpu_count = os.cpu_count()
    if dev.type != "cpu" or not cpu_count:
        return []
    plural = f"{threads} thread{'s' if threads != 1 else ''}"
    if cpu_samples and len(cpu_samples) >= 2:
        others = others_cores(cpu_samples[0], cpu_samples[-1])
        if others <= cpu_count - threads + 0.5:
            return []
        return [f"the machine was busy: other processes kept {others:.1f} cores busy on average while measuring with "
                f"{plural} on {cpu_count} CPUs; they compete for the cores, timings are noisy"]
    if load_before is None or load_before <= cpu_count - threads + 0.9:
        return []
    return [f"the machine was busy (load average {load_before:g} on {cpu_count} CPUs) before measuring with "
            f"{plural}: other processes compete for the cores, timings are noisy"]


def _tf32_notes(dev: torch.device, dtype: torch.dtype) -> list[str]:
    if dev.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return ["float32 convolutions may use TF32 tensor cores (torch.backends.cudnn.allow_tf32)"]
    return []


@contextmanager
def timing_settings(dev: torch.device, retain_memory: bool):
    """While timing: cuDNN's benchmark mode on CUDA (every entry gets its fastest algorithm, chosen during its
    warm-up), freed memory retained on CPU (:func:`retained_memory`); yields whether memory is retained."""
    saved = torch.backends.cudnn.benchmark
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        with retained_memory(retain_memory and dev.type == "cpu") as retained:
            yield retained
    finally:
        torch.backends.cudnn.benchmark = saved


@dataclass(eq=False)
class _Task:
    """One (entry, layout) pair: its module, input, timer and the per-call times collected so far."""

    entry: BenchEntry
    layout: str
    module: nn.Module
    x: torch.Tensor
    timer: benchmark.Timer
    times: list[float] = field(default_factory=list)
    number: int = 1
    peak: int | None = None  # CUDA: measured bytes of one forward pass

    @property
    def name(self) -> str:
        return f"{self.entry.label} ({self.layout})"


def _build_tasks(spec: LayerSpec, entries: Sequence[BenchEntry], layouts: Sequence[str], batch_size: int,
                 dev: torch.device, dtype: torch.dtype, threads: int, clock: str, seed: int) -> list[_Task]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = torch.randn(batch_size, spec.M, spec.height, spec.width, generator=gen)
    inputs = {lay: base.to(device=dev, dtype=dtype).contiguous(memory_format=MEMORY_FORMATS[lay]) for lay in layouts}
    del base
    timer_kw = {"timer": time.process_time} if clock == "cpu" else {}  # default: wall clock, synchronized on CUDA
    tasks = []
    for entry in entries:
        for layout in layouts:
            with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
                torch.manual_seed(seed)  # the same weights in every layout
                module = entry.build(spec)
            module = module.to(device=dev, dtype=dtype, memory_format=MEMORY_FORMATS[layout]).eval()
            timer = benchmark.Timer(stmt="module(x)", globals={"module": module, "x": inputs[layout]},
                                    num_threads=threads, label=spec.describe(), sub_label=layout,
                                    description=entry.label, **timer_kw)
            tasks.append(_Task(entry, layout, module, inputs[layout], timer))
    return tasks


def _run_tasks(tasks: list[_Task], rounds: int, min_run_time: float, cuda: bool, report: BenchReport,
               progress: ProgressFn | None, should_stop: StopFn | None, sample: Callable[[], None] = lambda: None) -> None:
    """Warm every task up, then ``rounds`` interleaved rounds over all tasks (:func:`run_rounds`); ``sample()``
    after each visit (the CPU sampler)."""
    total, done = len(tasks) * (rounds + 1), 0

    def stop() -> bool:
        if should_stop is not None and should_stop():
            report.stopped = True
        return report.stopped

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        sample()
        if progress is not None:
            progress(done, total, label)

    def warm_up(task: _Task) -> None:  # oneDNN primitive creation, cuDNN algorithm choice, caches
        task.timer.timeit(1)
        task.timer.timeit(2)
        if cuda:
            task.peak = _cuda_peak(task.module, task.x)

    run_rounds(tasks, rounds, min_run_time, warm_up, stop, tick)


def run_rounds(tasks: Sequence[Any], rounds: int, min_run_time: float, warm_up: Callable[[Any], None],
               stop: Callable[[], bool], tick: Callable[[str], None]) -> bool:
    """The timing loop of both benchmarks (layers: :func:`measure`; whole models: :mod:`falcon.modelbench`),
    under ``torch.inference_mode``: ``warm_up(task)`` for every task, then ``rounds`` rounds that visit every
    task once, in an order rotated by one every round (no task always runs after the same neighbour). A visit is
    a ``task.timer.blocked_autorange(min_run_time)``: its block times (seconds per call) go to ``task.times``,
    its calls per block to ``task.number``. ``stop()`` is asked before every warm-up and visit (True: return
    False at once); ``tick(label)`` is called after each. A task has ``name``, ``timer``, ``times``, ``number``.
    """
    with torch.inference_mode():
        for task in tasks:
            if stop():
                return False
            warm_up(task)
            tick(f"warm-up {task.name}")
        for r in range(rounds):
            shift = r % max(len(tasks), 1)
            for task in tasks[shift:] + tasks[:shift]:
                if stop():
                    return False
                m = task.timer.blocked_autorange(min_run_time=min_run_time)
                task.times.extend(m.times)
                task.number = m.number_per_run
                tick(f"round {r + 1}/{rounds}: {task.name}")
    return True


def _summarize(tasks: list[_Task], spec: LayerSpec, entries: Sequence[BenchEntry], layouts: Sequence[str],
               batch_size: int, plan: MemoryPlan) -> list[BenchResult]:
    medians = {(t.entry, t.layout): statistics.median(t.times) for t in tasks if t.times}
    std_entry = entries[0]
    std_best = min((medians[(std_entry, lay)] for lay in layouts if (std_entry, lay) in medians), default=None)
    estimates = dict(zip(entries, plan.estimates))
    results = []
    for task in tasks:
        entry, layout, times = task.entry, task.layout, task.times
        if not times:
            continue
        q1, med, q3 = _quartiles(times)
        macs = entry.macs(spec, batch_size)
        std = medians.get((std_entry, layout))
        best_layout = min((lay for lay in layouts if (entry, lay) in medians), key=lambda lay: medians[(entry, lay)])
        peak, source = (task.peak, "measured") if task.peak is not None else (estimates[entry].total_bytes, "estimate")
        results.append(BenchResult(
            conv=entry.conv, label=entry.label, hparams=entry.hp, memory_format=layout,
            median_ms=med * 1e3, iqr_ms=(q3 - q1) * 1e3, macs=macs, gmacs_per_s=macs / med / 1e9,
            speedup=None if std is None else std / med,
            theoretical_speedup=entry.theoretical_speedup(spec),
            peak_memory_bytes=int(peak), best=layout == best_layout,
            speedup_vs_best_standard=None if std_best is None else std_best / med,
            peak_memory_source=source, samples=len(times), calls_per_sample=task.number,
            min_ms=min(times) * 1e3,
        ))
    return results


def _cuda_peak(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes one forward pass holds on the GPU: input + weights + the transient peak above the baseline."""
    torch.cuda.synchronize(x.device)
    baseline = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    out = module(x)
    torch.cuda.synchronize(x.device)
    transient = torch.cuda.max_memory_allocated(x.device) - baseline
    del out
    weights = sum(_nbytes(p) for p in module.parameters()) + sum(_nbytes(b) for b in module.buffers())
    return _nbytes(x) + weights + transient


# ----------------------------------------------------------------------------------------------
# the device the app measures on


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" or "cpu"
    name: str  # GPU name or CPU model
    threads: int  # torch's intra-op threads (CPU)
    cpu_count: int | None

    @property
    def short(self) -> str:
        """What a button says: "NVIDIA H100" or "CPU (2 threads)"."""
        return self.name if self.kind == "cuda" else f"CPU ({self.threads} thread{'s' if self.threads != 1 else ''})"

    @property
    def sentence(self) -> str:
        if self.kind == "cuda":
            return f"GPU: {self.name}. Measurements run on it; sizing and fitting need no GPU."
        return (f"CPU, {self.threads} thread{'s' if self.threads != 1 else ''} ({self.name}; "
                f"{self.cpu_count or '?'} cores visible). No GPU: measurements run on the CPU.")


def describe_device() -> DeviceInfo:
    """The device the app measures on: the first CUDA GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        return DeviceInfo("cuda", torch.cuda.get_device_name(0), torch.get_num_threads(), os.cpu_count())
    return DeviceInfo("cpu", device_name(torch.device("cpu")), torch.get_num_threads(), os.cpu_count())

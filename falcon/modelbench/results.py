"""What a whole-model measurement records (:class:`ModelBenchResult`: per (model, runtime, layout) a
:class:`Timing`, per conversion a :class:`Conversion` with its speedups and :class:`Breakdown`) and what it
concludes from it (:func:`_speedups`; :func:`_why_above`: a speedup above the MAC ratio explained)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch

from falcon.bench import fmt_bytes
from falcon.modelbench.runtimes import RuntimeInfo

CATEGORIES = ("replaced_convs", "unreplaced_convs", "bn_act_pool", "classifier", "other")
CATEGORY_LABELS = {"replaced_convs": "replaced convs", "unreplaced_convs": "unreplaced convs",
                   "bn_act_pool": "BN/activation/pooling", "classifier": "classifier", "other": "other"}
#: the breakdown's parts must add up to the timed median within this fraction
BREAKDOWN_TOLERANCE = 0.10


@dataclass
class Timing:
    """One (model, runtime, layout): its parity with eager fp32 and, when it passed, its times."""

    model: str  # the model's label ("original", "FALCON (k=1)")
    role: str
    runtime: str
    layout: str
    status: str = "ok"  # "ok", "failed" (parity or an error), "stopped"
    message: str = ""
    max_abs_error: float | None = None
    relative_error: float | None = None
    median_ms: float | None = None
    iqr_ms: float | None = None
    min_ms: float | None = None
    samples: int = 0
    calls_per_sample: int = 1
    prepare_seconds: float = 0.0  # deploy + export/compile (compile: the first call)


@dataclass
class LayerTime:
    name: str
    original_ms: float
    converted_ms: float
    speedup: float | None
    mac_ratio: float | None


@dataclass
class Breakdown:
    """Where the time of the original and of one conversion goes (eager, one layout)."""

    layout: str
    iterations: int
    original_ms: dict[str, float]  # category -> ms per forward pass
    converted_ms: dict[str, float]
    original_total_ms: float  # the parts added up
    converted_total_ms: float
    original_measured_ms: float | None  # interquartile mean of unprofiled passes interleaved with the profiled ones
    converted_measured_ms: float | None
    original_timed_ms: float | None  # the median of the timed rounds of the same (model, runtime, layout)
    converted_timed_ms: float | None
    layers: list[LayerTime]
    replaced_mac_ratio: float | None
    replaced_speedup: float | None  # measured, replaced convs only
    amdahl_ceiling: float | None
    explanation: str = ""
    profiler: str = "torch.profiler (CPU)"
    overhead_ms: dict[str, float] = field(default_factory=dict)  # the profiler's calibrated cost per pass, removed

    @property
    def original_ratio(self) -> float | None:
        return None if not self.original_measured_ms else self.original_total_ms / self.original_measured_ms

    @property
    def converted_ratio(self) -> float | None:
        return None if not self.converted_measured_ms else self.converted_total_ms / self.converted_measured_ms

    @property
    def adds_up(self) -> bool:
        """Both models' parts add up to their timed medians within :data:`BREAKDOWN_TOLERANCE`."""
        ratios = [r for r in (self.original_ratio, self.converted_ratio) if r is not None]
        return bool(ratios) and all(abs(r - 1) <= BREAKDOWN_TOLERANCE for r in ratios)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(original_ratio=self.original_ratio, converted_ratio=self.converted_ratio, adds_up=self.adds_up,
                 tolerance=BREAKDOWN_TOLERANCE)
        return d


@dataclass
class Conversion:
    """One converted model: what it is, its speedups per runtime and the breakdown."""

    label: str
    conv: str
    hparams: dict
    macs: int
    mac_ratio: float  # original MACs / these MACs (one image, convention "clean")
    replaced_layers: int
    init: str
    fit_error: float | None
    deploy: dict = field(default_factory=dict)
    speedups: list[dict] = field(default_factory=list)  # {runtime, layout, speedup}; layout "best": best vs best
    best: dict | None = None  # the runtime where the converted model is fastest, and its speedup there
    breakdown: Breakdown | None = None

    def speedup(self, runtime: str, layout: str = "best") -> float | None:
        for s in self.speedups:
            if s["runtime"] == runtime and s["layout"] == layout:
                return s["speedup"]
        return None


@dataclass
class ModelBenchResult:
    model: str
    weights: str
    input_size: list[int]
    batch_size: int
    device: str
    device_name: str
    threads: int
    torch_version: str
    cpu_count: int | None
    rounds: int
    min_run_time: float
    memory_formats: list[str]
    runtimes: list[RuntimeInfo]
    original_macs: int
    original_deploy: dict = field(default_factory=dict)
    conversions: list[Conversion] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)
    memory_estimate_bytes: int | None = None
    memory_budget: str = ""
    allocator: str = "default"
    load_average: list[float | None] | None = None
    cpu_samples: list[list[float]] | None = None  # falcon.cpuload samples: start, each visit (≥ 0.5 s apart), end
    cache_bytes: int | None = None  # the device's last-level cache (CPU: sysfs; CUDA: L2)
    stopped: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def conversion(self) -> Conversion | None:
        """The first (usually the only) conversion."""
        return self.conversions[0] if self.conversions else None

    def timing(self, model: str, runtime: str, layout: str | None = None) -> Timing | None:
        for t in self.timings:
            if t.model == model and t.runtime == runtime and (layout is None or t.layout == layout):
                return t
        return None

    def as_dict(self) -> dict:
        d = asdict(self)
        for c, obj in zip(d["conversions"], self.conversions):
            c["breakdown"] = None if obj.breakdown is None else obj.breakdown.as_dict()
        return json.loads(json.dumps(d, default=_jsonable))

    def rows(self) -> list[dict]:
        """One row per (model, runtime, layout): median, IQR, speedup over the original in the same
        runtime and layout, parity."""
        orig = {(t.runtime, t.layout): t.median_ms for t in self.timings if t.role == "original" and t.median_ms}
        rows = []
        for t in self.timings:
            base = orig.get((t.runtime, t.layout))
            rows.append({"model": t.model, "runtime": t.runtime, "layout": t.layout,
                         "median_ms": t.median_ms if t.median_ms is not None else "-",
                         "iqr_ms": t.iqr_ms if t.iqr_ms is not None else "-",
                         "speedup": (base / t.median_ms) if (base and t.median_ms and t.role == "converted") else "-",
                         "rel_error": t.relative_error if t.relative_error is not None else "-",
                         "status": t.status if not t.message else f"{t.status}: {t.message}"})
        return rows

    def summary_lines(self) -> list[str]:
        lines = []
        for c in self.conversions:
            if c.best is None:
                lines.append(f"{c.label}: not measured ({c.mac_ratio:.2f}x fewer MACs)")
                continue
            b = c.breakdown
            ceiling = f", Amdahl ceiling {b.amdahl_ceiling:.2f}x" if b and b.amdahl_ceiling else ""
            lines.append(f"{c.label}: {c.best['speedup']:.2f}x measured in {c.best['runtime']} ({c.best['layout']}, "
                         f"its fastest runtime) vs {c.mac_ratio:.2f}x MAC ratio{ceiling} = "
                         f"{c.best['speedup'] / c.mac_ratio:.0%} of the MAC ratio")
            above = _why_above(self, c)
            if above:
                lines.append(f"  {above}")
        return lines


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    return str(obj)


def last_level_cache_bytes(device: torch.device | None = None) -> int | None:
    """The largest cache of this CPU (sysfs, Linux), or the GPU's L2 on CUDA; None where it cannot be read."""
    if device is not None and device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None) or None
    best = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return None
    for name in entries:
        try:
            with open(os.path.join(base, name, "size")) as f:
                text = f.read().strip().upper()
            with open(os.path.join(base, name, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        n = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text) if text.isdigit() else None
        if n and (best is None or n > best):
            best = n
    return best


def _why_above(result: ModelBenchResult, c: Conversion) -> str:
    """Why a measured speedup beats the MAC ratio: the converted model runs at a higher MAC rate, and when
    the original's weights do not fit the last-level cache, why."""
    best = c.best or {}
    o_ms, c_ms = best.get("original_ms"), best.get("converted_ms")
    if not (o_ms and c_ms) or best.get("speedup", 0) <= c.mac_ratio * 1.02:
        return ""
    b = result.batch_size
    o_rate = result.original_macs * b / (o_ms * 1e6)  # GMAC/s
    c_rate = c.macs * b / (c_ms * 1e6)
    line = (f"above the MAC ratio because the converted model runs at {c_rate:.1f} GMAC/s and the original at "
            f"{o_rate:.1f} GMAC/s in {best.get('runtime')}")
    ow, cw, cache = result.original_deploy.get("weight_bytes"), c.deploy.get("weight_bytes"), result.cache_bytes
    if ow and cw and cache:
        if ow > cache >= cw:
            line += (f": at batch {b} the original's weights ({fmt_bytes(ow)}) do not fit this "
                     f"{'GPU' if result.device.startswith('cuda') else 'CPU'}'s {fmt_bytes(cache)} last-level "
                     f"cache and are read from memory on every pass; the converted model's ({fmt_bytes(cw)}) stay "
                     "in it. A larger batch spreads those reads over more images (try --batch-size 16)")
        else:
            line += f" (weights: original {fmt_bytes(ow)}, converted {fmt_bytes(cw)}; last-level cache {fmt_bytes(cache)})"
    return line


def _speedups(result: ModelBenchResult) -> None:
    """Per conversion: speedup over the original in each (runtime, layout), per runtime best vs best, and
    the runtime where the converted model is fastest."""
    med = {(t.model, t.runtime, t.layout): t.median_ms for t in result.timings if t.median_ms}
    runtimes = list(dict.fromkeys(t.runtime for t in result.timings))
    for c in result.conversions:
        c.speedups, c.best = [], None
        fastest = None
        for rt in runtimes:
            layouts = [lay for (m, r, lay) in med if m == c.label and r == rt]
            for lay in layouts:
                o = med.get(("original", rt, lay))
                if o:
                    c.speedups.append({"runtime": rt, "layout": lay, "speedup": o / med[(c.label, rt, lay)]})
            o_best = min((v for (m, r, _), v in med.items() if m == "original" and r == rt), default=None)
            c_best = min(((v, lay) for (m, r, lay), v in med.items() if m == c.label and r == rt), default=None)
            if o_best and c_best:
                entry = {"runtime": rt, "layout": "best", "speedup": o_best / c_best[0],
                         "converted_layout": c_best[1], "converted_ms": c_best[0], "original_ms": o_best}
                c.speedups.append(entry)
                if fastest is None or c_best[0] < fastest["converted_ms"]:
                    fastest = {**entry, "layout": c_best[1]}
        if fastest is not None:
            fastest["of_mac_ratio"] = fastest["speedup"] / c.mac_ratio if c.mac_ratio else None
            c.best = fastest
        o_all = min((v for (m, _, _), v in med.items() if m == "original"), default=None)
        c_all = min((v for (m, _, _), v in med.items() if m == c.label), default=None)
        if o_all and c_all:
            c.speedups.append({"runtime": "any", "layout": "best", "speedup": o_all / c_all})


"""A reliability gate on measured speedups: figures that cannot all be true are marked, with the reasons.

A speedup measured on a shared machine can be wrong with full confidence: one layer "86× faster", a model
faster than its own Amdahl ceiling, a headline 0.08× beside a breakdown that says 1.51×. Every measured
speedup here carries its **spread** and the **load average** seen while it was measured, and is checked
against what else the same measurement says. A figure is unreliable when (thresholds and why):

* **spread** — the relative IQR of the speedup is above :data:`SPREAD_LIMIT` (25%). A speedup is a ratio of
  two medians; for independent noise its relative spread is about the root-sum-square of the two timings'
  IQR / median. Interleaved rounds on a quiet machine give 2–10% per timing; past 25% the middle half of the
  timings spans more than the difference between conv types one usually compares (1.2–2×), so the median
  says little. Fewer than :data:`MIN_SAMPLES` timed blocks give no spread at all, which is not "no spread".
* **far above the MAC ratio** — more than :data:`MAC_RATIO_SLACK` (1.25×) the ratio of MACs. Fewer MACs can
  run at a higher rate than more MACs (a layer that becomes memory-bound, a different kernel), but rarely
  25% more; that is measurement noise or a broken reference. Except when the result records a cache
  effect: the original's weights do not fit the last-level cache and the converted model's do
  (:func:`cache_explains`, the same test as ``modelbench``'s explanation); then up to :data:`CACHE_SLACK`
  (3×) — weights read from DRAM instead of cache cost a few times more per MAC at batch 1, not tens.
* **above the Amdahl ceiling** (eager only: the ceiling comes from the eager profile; compiled runtimes also
  shrink what lies outside the replaced convs) — more than :data:`CEILING_SLACK` (10%, the breakdown's own
  tolerance) above ``T / (T − T_replaced + T_replaced / r)``, with ``r`` the replaced convs' MAC ratio (3r
  when the cache explains it). Only the replaced convs change; the rest of the model cannot get faster.
* **the headline disagrees with the sum of its layers** — the eager speedup from the timed rounds and the one
  from the profile's parts added up (same layout) differ by more than :data:`AGREEMENT` (25%): they measure
  the same two models minutes apart, so the machine changed speed in between.
* **a layer far above its MAC ratio** — a replaced layer's profiled speedup above the MAC-ratio bound above.
* **the load changed** — the cores the other processes kept busy differ by more than :data:`LOAD_CHANGE`
  (one core; on machines with fewer than 4 cores a quarter of them, :func:`load_change_limit`) between two
  intervals of the run. Measured where Linux counts CPU time (:mod:`falcon.cpuload`:
  the machine's busy CPU seconds minus the measuring process's, per second of wall time), over intervals of at
  least :data:`falcon.cpuload.WINDOW_S` (5 s): long enough that a visit or two of the rounds (0.2–2 s each) and
  the 10-ms tick of the counters do not decide it, short enough that a competitor running for a third of a
  30-s run shows at most diluted by half. One core: a steady competitor's share moves with the measurement's
  own demand (2 measuring threads and 1 other on 2 cores: 0.67 core; a Python-only phase: 1 core), by well
  under a core. But measured CPU is capped by the competitor's share: on 2 cores busy with 2 measuring threads a
  whole competing thread shows as 0.67 core and could never cross one core, so there the limit is a quarter of
  the cores (0.5 on 2), still above the 0.33-core shifts of a steady competitor. Without CPU samples (not Linux, results stored before them) the others' load is inferred from
  the 1-minute load average during a run of at least :data:`LOAD_MIN_SECONDS` (:func:`others_load_change`),
  which assumes the measurement kept its threads runnable throughout and the load before it was steady.

A busy but steady machine is not by itself a reason: interleaved rounds share the contention out between the
entries, and what it does to the timings shows in the spread. Pure functions of plain data (``as_dict()``
forms, or the result objects); no Streamlit, no torch.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

SPREAD_LIMIT = 0.25
MIN_SAMPLES = 3
MAC_RATIO_SLACK = 1.25
CACHE_SLACK = 3.0
CEILING_SLACK = 1.10
AGREEMENT = 1.25
LOAD_CHANGE = 1.0
LOAD_MIN_SECONDS = 15.0
LOAD_WINDOW_S = 60.0  # the 1-minute load average's time constant


@dataclass
class Figure:
    """One measured speedup, its spread (relative IQR), the highest load average seen, and why it is unreliable."""

    name: str
    value: float | None
    spread: float | None
    load: float | None
    reasons: list[str] = field(default_factory=list)
    group: str = ""  # the conversion (model) or conv type and layout (layer) it belongs to

    @property
    def reliable(self) -> bool:
        return not self.reasons


@dataclass
class Verdict:
    """The gate's answer for one measurement: every figure, and the reasons (run-wide ones first)."""

    figures: list[Figure]
    run_reasons: list[str] = field(default_factory=list)
    load: list[float] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        seen = dict.fromkeys(self.run_reasons)
        for f in self.figures:
            seen.update(dict.fromkeys(f"{f.name}: {r}" for r in f.reasons))
        return list(seen)

    @property
    def reliable(self) -> bool:
        return not self.reasons

    def group(self, name: str) -> list[Figure]:
        return [f for f in self.figures if f.group == name]

    def group_reasons(self, name: str) -> list[str]:
        """The run-wide reasons and those of the figures in ``name``."""
        out = dict.fromkeys(self.run_reasons)
        for f in self.group(name):
            out.update(dict.fromkeys(f"{f.name}: {r}" for r in f.reasons))
        return list(out)

    def figure(self, name: str) -> Figure | None:
        return next((f for f in self.figures if f.name == name), None)

    def as_dict(self) -> dict:
        """``reliable``, ``unreliable_reasons`` and ``figures`` (what the CLI's JSON carries)."""
        return {"reliable": self.reliable, "unreliable_reasons": self.reasons,
                "figures": [{**asdict(f), "reliable": f.reliable} for f in self.figures]}


# ----------------------------------------------------------------------------------------------
# the pieces
def _plain(result: Any) -> dict:
    return result if isinstance(result, dict) else result.as_dict()


def relative_spread(*timings: tuple[float | None, float | None]) -> float | None:
    """Root-sum-square of IQR / median over ``(median, iqr)`` pairs: the relative spread of their ratio."""
    parts = []
    for median, iqr in timings:
        if not median or iqr is None or not math.isfinite(median) or median <= 0:
            return None
        parts.append(iqr / median)
    return math.sqrt(sum(p * p for p in parts))


def others_load_change(loads: Sequence[float], seconds: float, threads: int) -> float | None:
    """How much the other processes' load moved during a run (runnable threads), or None when it cannot be told.

    The kernel's 1-minute load average follows ``L(t) = L0·a + (O + n)(1 − a)`` with ``a = exp(−t / 60 s)``
    while ``n`` threads of the measurement and ``O`` of other processes run; with ``L0`` taken as the others'
    steady load before the run, ``O`` is solved from the last sample and compared with ``L0``. A run shorter
    than :data:`LOAD_MIN_SECONDS` moves the average too little to tell."""
    loads = [v for v in loads if v is not None]
    if len(loads) < 2 or not seconds or seconds < LOAD_MIN_SECONDS:
        return None
    before, after = loads[0], loads[-1]
    a = math.exp(-seconds / LOAD_WINDOW_S)
    others = (after - before * a) / (1 - a) - threads
    return others - before


def cache_explains(result: dict, conversion: dict) -> bool:
    """The result records a cache effect: the original's deployed weights do not fit the last-level cache and the
    converted model's do (as ``falcon.modelbench`` explains a speedup above the MAC ratio)."""
    ow = (result.get("original_deploy") or {}).get("weight_bytes")
    cw = (conversion.get("deploy") or {}).get("weight_bytes")
    cache = result.get("cache_bytes")
    return bool(ow and cw and cache and ow > cache >= cw)


def load_change_limit(cpu_count: int | None) -> float:
    """The change of the others' busy cores that makes a run unreliable: :data:`LOAD_CHANGE`, or a quarter of the
    machine's cores when that is less (``cpu_count``: the result's; default this machine's)."""
    cores = cpu_count or os.cpu_count()
    return min(LOAD_CHANGE, cores / 4) if cores else LOAD_CHANGE


def others_cores_change(cpu_samples: Sequence[Sequence[float]] | None) -> tuple[float, float] | None:
    """The other processes' busy cores in the two intervals of the run (:func:`falcon.cpuload.windows`) that differ
    most, in time order; None with fewer than two intervals (no samples, or a run under two windows)."""
    from falcon.cpuload import windows

    cores = [w[2] for w in windows(cpu_samples or [])]
    if len(cores) < 2:
        return None
    lo, hi = cores.index(min(cores)), cores.index(max(cores))
    return (cores[lo], cores[hi]) if lo < hi else (cores[hi], cores[lo])


def _cpu_reasons(change: tuple[float, float], loads: Sequence[float], seconds: float, limit: float) -> list[str]:
    from falcon.cpuload import WINDOW_S

    first, last = change
    if abs(last - first) <= limit:
        return []
    avg = f"; load average {loads[0]:g} → {loads[-1]:g}" if len(loads) >= 2 else ""
    return [(f"the machine's load changed during the run (other processes used {first:.1f} → {last:.1f} cores, "
             f"in {WINDOW_S:g}-s intervals over {seconds:.0f} s{avg}): the rounds did not all run on the same "
             "machine")]


def _load_reasons(loads: Sequence[float], seconds: float, threads: int,
                  cpu_samples: Sequence[Sequence[float]] | None = None, cpu_count: int | None = None) -> list[str]:
    """The load-change reason: from the CPU samples where there are any, else from the load average."""
    if cpu_samples:
        change = others_cores_change(cpu_samples)
        return [] if change is None else _cpu_reasons(change, loads, seconds, load_change_limit(cpu_count))
    change = others_load_change(loads, seconds, threads)
    if change is None or abs(change) <= LOAD_CHANGE:
        return []
    way = "rose" if change > 0 else "fell"
    return [f"the machine's load changed during the run (the other processes' load {way} by about {abs(change):.1f} "
            f"runnable threads; load average {loads[0]:g} → {loads[-1]:g} over {seconds:.0f} s): the rounds did not "
            "all run on the same machine"]


def _spread_reasons(spread: float | None, samples: Iterable[int]) -> list[str]:
    few = min(samples, default=0)
    if few < MIN_SAMPLES:
        return [f"only {few} timed block{'s' if few != 1 else ''}: too few to know the spread (use more rounds)"]
    if spread is not None and spread > SPREAD_LIMIT:
        return [f"spread {spread:.0%} (IQR / median of the timings) is above {SPREAD_LIMIT:.0%}"]
    return []


def _mac_reason(value: float | None, mac_ratio: float | None, cached: bool, what: str = "") -> list[str]:
    if not value or not mac_ratio:
        return []
    slack = CACHE_SLACK if cached else MAC_RATIO_SLACK
    if value <= slack * mac_ratio:
        return []
    why = (f"more than {slack:g}× it even though its weights drop into the last-level cache" if cached else
           f"more than {slack:g}× it, and nothing the result records (the cache) explains that")
    return [f"{what}{value:.2f}× faster for a MAC ratio of {mac_ratio:.2f}×: {why}"]


def _loads_of(result: dict, load_samples: Sequence[float] | None) -> list[float]:
    loads = [v for v in (load_samples or result.get("load_average") or []) if v is not None]
    return loads


# ----------------------------------------------------------------------------------------------
# a layer (falcon.bench)
def assess_layer(report: Any, load_samples: Sequence[float] | None = None, seconds: float | None = None,
                 cpu_samples: Sequence[Sequence[float]] | None = None) -> Verdict:
    """The gate on a layer benchmark (``BenchReport`` or its ``as_dict()``): one figure per conv type and layout,
    its speedup over the standard conv in that layout. ``load_samples``: the load average sampled during the run
    (default: the report's before/after), over ``seconds`` (default: the report's); ``cpu_samples``: the CPU samples
    (:mod:`falcon.cpuload`; default: the report's)."""
    r = _plain(report)
    loads = _loads_of(r, load_samples)
    seconds = r.get("seconds") if seconds is None else seconds
    run = _load_reasons(loads, seconds or 0.0, r.get("threads") or 1, cpu_samples or r.get("cpu_samples"),
                        r.get("cpu_count"))
    std = {x["memory_format"]: x for x in r.get("results", []) if x["conv"] == "standard"}
    figures = []
    for x in r.get("results", []):
        if x["conv"] == "standard":
            continue
        base = std.get(x["memory_format"])
        name = f"{x['label']} ({x['memory_format']})"
        spread = relative_spread((x["median_ms"], x["iqr_ms"]), (base["median_ms"], base["iqr_ms"])) if base else None
        reasons = _spread_reasons(spread, [x.get("samples", 0), base.get("samples", 0) if base else 0])
        reasons += _mac_reason(x.get("speedup"), x.get("theoretical_speedup"), False)
        figures.append(Figure(name, x.get("speedup"), spread, max(loads, default=None), reasons, group=name))
    return Verdict(figures, run, loads)


# ----------------------------------------------------------------------------------------------
# a whole model (falcon.modelbench)
def _timing(result: dict, model: str, runtime: str, median: float | None) -> dict | None:
    return next((t for t in result.get("timings", []) if t["model"] == model and t["runtime"] == runtime
                 and t.get("median_ms") is not None and (median is None or math.isclose(t["median_ms"], median))), None)


def ceiling_at(breakdown: dict, factor: float = 1.0) -> float | None:
    """The Amdahl ceiling of a breakdown with the replaced convs shrinking by ``factor`` × their MAC ratio."""
    total, r = breakdown.get("original_total_ms"), breakdown.get("replaced_mac_ratio")
    t_rep = (breakdown.get("original_ms") or {}).get("replaced_convs")
    if not total or not r or t_rep is None:
        return None
    return total / (total - t_rep + t_rep / (r * factor))


def _eager_reasons(b: dict, value: float, cached: bool) -> list[str]:
    reasons = []
    ceiling = ceiling_at(b, CACHE_SLACK if cached else 1.0)
    if ceiling and value > CEILING_SLACK * ceiling:
        reasons.append(f"{value:.2f}× is above its Amdahl ceiling {ceiling:.2f}× (only the replaced convs change; "
                       "the rest of the model cannot run faster)")
    o_t, c_t, o_p, c_p = (b.get(k) for k in ("original_timed_ms", "converted_timed_ms", "original_total_ms",
                                             "converted_total_ms"))
    if o_t and c_t and o_p and c_p:
        timed, parts = o_t / c_t, o_p / c_p
        if max(timed, parts) / min(timed, parts) > AGREEMENT:
            layout = {"contiguous": "NCHW", "channels_last": "NHWC"}.get(b.get("layout"), b.get("layout"))
            reasons.append(f"the timed rounds say {timed:.2f}× and the sum of the layers' times says {parts:.2f}× "
                           f"(eager, {layout}): they differ by more than {AGREEMENT - 1:.0%}")
    for lt in b.get("layers") or []:
        reasons += _mac_reason(lt.get("speedup"), lt.get("mac_ratio"), cached, f"layer {lt['name']} ran ")
    return reasons


def assess_model(result: Any, load_samples: Sequence[float] | None = None, seconds: float | None = None,
                 cpu_samples: Sequence[Sequence[float]] | None = None) -> Verdict:
    """The gate on a whole-model benchmark (``ModelBenchResult`` or its ``as_dict()``): one figure per conversion
    and runtime, the speedup of the converted model's fastest layout over the original's fastest. The load:
    ``load_samples``, ``seconds`` and ``cpu_samples`` as in :func:`assess_layer`."""
    r = _plain(result)
    loads = _loads_of(r, load_samples)
    seconds = r.get("seconds") if seconds is None else seconds
    run = _load_reasons(loads, seconds or 0.0, r.get("threads") or 1, cpu_samples or r.get("cpu_samples"),
                        r.get("cpu_count"))
    figures = []
    for c in r.get("conversions", []):
        cached = cache_explains(r, c)
        for s in c.get("speedups", []):
            if s.get("layout") != "best" or s["runtime"] == "any":
                continue
            o = _timing(r, "original", s["runtime"], s.get("original_ms"))
            v = _timing(r, c["label"], s["runtime"], s.get("converted_ms"))
            spread = relative_spread((o["median_ms"], o["iqr_ms"]), (v["median_ms"], v["iqr_ms"])) if o and v else None
            reasons = _spread_reasons(spread, [o["samples"] if o else 0, v["samples"] if v else 0])
            reasons += _mac_reason(s["speedup"], c.get("mac_ratio"), cached)
            if s["runtime"] == "eager" and c.get("breakdown"):
                reasons += _eager_reasons(c["breakdown"], s["speedup"], cached)
            figures.append(Figure(f"{c['label']}, {s['runtime']}", s["speedup"], spread, max(loads, default=None),
                                  reasons, group=c["label"]))
    return Verdict(figures, run, loads)


# ----------------------------------------------------------------------------------------------
# a measured-latency plan (falcon.latency_plan)
def assess_latency_plan(plan: dict, load_samples: Sequence[float] | None = None, seconds: float | None = None,
                        cpu_samples: Sequence[Sequence[float]] | None = None) -> Verdict:
    """The gate on a latency plan's check (the plan's ``as_dict()`` with its ``latency.measured``): one figure, the
    planned model's measured speedup over the original (interleaved rounds), its spread, against the plan's MAC
    ratio; the load change over ``seconds`` (default: the plan's), from ``cpu_samples`` (default: the check's) where
    there are any. A plan with no check has no figure."""
    lat = plan.get("latency") or {}
    m = lat.get("measured")
    loads = [v for v in (load_samples or (m or {}).get("load_average") or []) if v is not None]
    run = _load_reasons(loads, (lat.get("seconds") if seconds is None else seconds) or 0.0, lat.get("threads") or 1,
                        cpu_samples or (m or {}).get("cpu_samples"))
    if not m:
        return Verdict([], run, loads)
    spread = relative_spread((m["original_ms"], m["original_iqr_ms"]), (m["planned_ms"], m["planned_iqr_ms"]))
    reasons = _spread_reasons(spread, [m.get("rounds", 0)] * 2)
    reasons += _mac_reason(m["speedup"], plan.get("computation_reduction_rate"), False)
    return Verdict([Figure("planned model, measured speedup", m["speedup"], spread, max(loads, default=None), reasons,
                           group="plan")], run, loads)

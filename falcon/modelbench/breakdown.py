"""Where the time goes: the original and each conversion profiled (:func:`~falcon.modelbench.profile.profile_model`)
in eager, in the layout where the conversion is fastest; each replaced layer's speedup beside its MAC ratio, the
Amdahl ceiling the MAC counts allow, and one line on why the measured speedup is below the MAC ratio."""
from __future__ import annotations

import torch

from falcon.convtypes import get_conv_type
from falcon.modelbench.prepare import PreparedModel, PreparedModels
from falcon.modelbench.profile import _recategorize, profile_model
from falcon.modelbench.results import (
    BREAKDOWN_TOLERANCE,
    CATEGORIES,
    CATEGORY_LABELS,
    Breakdown,
    LayerTime,
)
from falcon.modelbench.tasks import Run, _Task


def add_breakdowns(run: Run, prepared: PreparedModels, tasks: list[_Task]) -> None:
    """Each conversion's :class:`Breakdown` against the original, in eager, in the conversion's fastest layout."""
    result = run.result
    profiles: dict = {}  # the original's profile per layout, shared by the conversions
    for pm, c in zip(prepared.converted, result.conversions):
        eager = [t for t in tasks if t.runtime == "eager" and t.model is pm and t.timing.median_ms]
        if run.halt() or not eager:
            break
        best = min(eager, key=lambda t: t.timing.median_ms)
        orig = next((t for t in tasks if t.runtime == "eager" and t.model is prepared.original
                     and t.layout == best.layout and t.timing.median_ms), None)
        if orig is None:
            continue
        run.tick(f"profiling {pm.label} ({best.layout})", 0)
        c.breakdown = _breakdown(orig, best, pm, prepared.original, run.dev,
                                 min(max(run.rounds * run.min_run_time, 0.2), 2.0), profiles)
        eager_speedup = orig.timing.median_ms / best.timing.median_ms
        c.breakdown.explanation = _explain(get_conv_type(pm.conv).label, eager_speedup, c.mac_ratio, c.breakdown)
        if not c.breakdown.adds_up:
            result.notes.append(
                f"{pm.label}: the breakdown's parts add up to {c.breakdown.original_ratio:.0%} (original) and "
                f"{c.breakdown.converted_ratio:.0%} (converted) of the timed medians, beyond ±"
                f"{BREAKDOWN_TOLERANCE:.0%} (profiler overhead, or the machine changed speed)")
        run.tick(f"profiled {pm.label}", 2)


def _explain(conv_label: str, measured: float | None, mac_ratio: float, b: Breakdown) -> str:
    """One line: why the measured speedup is below what the MAC ratio suggests."""
    if measured is None or b.amdahl_ceiling is None:
        return ""
    orig_total = b.original_total_ms or 1.0
    outside = 1 - b.original_ms["replaced_convs"] / orig_total
    conv_total = b.converted_total_ms or 1.0
    rest = {c: b.converted_ms[c] / conv_total for c in CATEGORIES if c != "replaced_convs"}
    top = max(rest, key=rest.get)
    short = {"contiguous": "NCHW", "channels_last": "NHWC"}.get(b.layout, b.layout)
    parts = [f"{measured:.2f}x measured (eager, both in {short}) vs {mac_ratio:.2f}x MAC ratio"]
    parts.append(f"Amdahl ceiling {b.amdahl_ceiling:.2f}x: {outside:.0%} of the original's time is outside the "
                 "replaced convs")
    if b.replaced_speedup and b.replaced_mac_ratio:
        pace = (f"{b.replaced_speedup:.2f}x faster" if b.replaced_speedup >= 1
                else f"{1 / b.replaced_speedup:.2f}x slower")
        parts.append(f"the replaced convs run {pace} for {b.replaced_mac_ratio:.2f}x fewer MACs")
    parts.append(f"{sum(rest.values()):.0%} of the converted model's time is outside them, "
                 f"{rest[top]:.0%} in {CATEGORY_LABELS[top]}, which {conv_label} does not shrink")
    return "; ".join(parts)


def _breakdown(orig_task: _Task, conv_task: _Task, conversion: PreparedModel, original: PreparedModel,
               device: torch.device, budget_s: float, cache: dict | None = None) -> Breakdown:
    def iterations(task: _Task) -> int:
        per = (task.timing.median_ms or 10.0) / 1e3
        return int(min(max(budget_s / 2 / max(per, 1e-6), 10), 400))

    cache = {} if cache is None else cache
    if orig_task.layout not in cache:  # the original's profile serves every conversion in that layout
        cache[orig_task.layout] = profile_model(orig_task.module, orig_task.x, conversion.replaced,
                                                iterations(orig_task), device)
    po = cache[orig_task.layout]
    pc = profile_model(conv_task.module, conv_task.x, conversion.replaced, iterations(conv_task), device)
    o_unit, o_total = po.units, po.total_ms
    o_cat = _recategorize(po, orig_task.module, conversion.replaced)
    c_cat, c_unit, c_total = pc.categories, pc.units, pc.total_ms
    layers = []
    for name in conversion.replaced:
        o_ms, c_ms = o_unit.get(name), c_unit.get(name)
        if o_ms is None or c_ms is None:
            continue
        o_mac, c_mac = original.unit_macs.get(name), conversion.unit_macs.get(name)
        layers.append(LayerTime(name, o_ms, c_ms, o_ms / c_ms if c_ms > 0 else None,
                                (o_mac / c_mac) if o_mac and c_mac else None))
    o_macs = sum(original.unit_macs.get(n, 0) for n in conversion.replaced)
    c_macs = sum(conversion.unit_macs.get(n, 0) for n in conversion.replaced)
    r = o_macs / c_macs if o_macs and c_macs else None
    t_rep = o_cat["replaced_convs"]
    ceiling = None
    if r and o_total > 0:
        ceiling = o_total / (o_total - t_rep + t_rep / r)
    replaced_speedup = t_rep / c_cat["replaced_convs"] if c_cat["replaced_convs"] > 0 else None
    return Breakdown(orig_task.layout, pc.passes, o_cat, c_cat, o_total, c_total, po.unprofiled_ms, pc.unprofiled_ms,
                     orig_task.timing.median_ms, conv_task.timing.median_ms, layers, r, replaced_speedup, ceiling,
                     profiler="torch.profiler (CPU" + (", CUDA kernels)" if device.type == "cuda" else ")"),
                     overhead_ms={"original": po.overhead_ms, "converted": pc.overhead_ms})


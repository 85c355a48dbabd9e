"""Where one model's forward pass spends its time: ``torch.profiler`` with one profiler range per unit (a conv
block or a leaf module) named after its category (:data:`~falcon.modelbench.results.CATEGORIES`), the
profiler's own cost calibrated and taken out (:func:`profile_model`)."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from falcon.bench import _quartiles
from falcon.blocks import ConvBlock
from falcon.modelbench.results import CATEGORIES

_NORM_ACT_POOL = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softmax,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile_units(module: nn.Module) -> list[tuple[str, nn.Module]]:
    units = []

    def walk(prefix: str, m: nn.Module) -> None:
        for name, child in m.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, ConvBlock) or not any(child.children()):
                units.append((full, child))
            else:
                walk(full, child)

    walk("", module)
    return units


def _category(name: str, module: nn.Module, replaced: set[str]) -> str | None:
    if isinstance(module, ConvBlock) or name in replaced:
        return "replaced_convs"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "unreplaced_convs"
    if isinstance(module, _NORM_ACT_POOL):
        return "bn_act_pool"
    if isinstance(module, nn.Linear):
        return "classifier"
    return None  # Identity, Dropout, Flatten, ...: "other"


@dataclass
class Profile:
    """Where one model's forward pass spends its time (ms per pass), and the same pass timed unprofiled."""

    categories: dict[str, float]
    units: dict[str, float]
    total_ms: float  # the parts added up (= the profiled pass)
    unprofiled_ms: float  # interquartile mean of unprofiled passes interleaved with the profiled ones
    passes: int
    overhead_ms: float = 0.0  # the profiler's own cost per pass (calibrated), taken out of the parts


def profile_model(module: nn.Module, x: torch.Tensor, replaced: Iterable[str], iterations: int,
                  device: torch.device, chunks: int = 10) -> Profile:
    """Profile ``iterations`` forward passes in ``chunks`` chunks, each after as many unprofiled timed passes.

    Every unit (a conv block or a leaf module) runs inside a profiler range named after its
    category; "other" is the pass's own range minus the units' ranges. On CUDA the units' times are the
    device (kernel) times of their ranges and the pass's time its wall time with a synchronisation.
    On a shared machine a burst of another process hits single passes: the parts are the mean over the
    passes whose total lies between the quartiles of all profiled passes, and the unprofiled reference is
    the same kind of mean over the interleaved unprofiled passes, so that both describe the same minutes.
    The profiler's own cost (per operator event and per range, :func:`_calibrate`) is taken out of the parts.
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity

    replaced = set(replaced)
    units = [(name, m, cat) for name, m in _profile_units(module) if (cat := _category(name, m, replaced))]
    fast = getattr(torch._C._profiler, "_RecordFunctionFast", None)  # a C++ range: ~1 µs, not a dispatcher op
    ranged = fast if fast is not None else record_function
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    chunks = max(min(chunks, iterations // 2), 1)
    passes, plain = _chunked_passes(module, x, units, ranged, activities, device, chunks, max(iterations // chunks, 1))
    event_us, range_us = (0.0, 0.0) if device.type == "cuda" else _calibrate(ranged, activities)
    for p in passes:  # the profiler's own cost, calibrated apart, taken out of each unit and of the pass
        for name in p["units"]:
            p["units"][name] = max(p["units"][name] - p["events"].get(name, 0) * event_us - range_us, 0.0)
        p["total"] = max(p["total"] - p["all_events"] * event_us - (len(p["units"]) + 1) * range_us, 0.0)
    totals = [p["total"] for p in passes]
    q1, _, q3 = _quartiles(totals) if totals else (0, 0, 0)
    kept = [p for p in passes if q1 <= p["total"] <= q3] or passes
    n = max(len(kept), 1)
    per_unit: dict[str, float] = {}
    for p in kept:
        for name, us in p["units"].items():
            per_unit[name] = per_unit.get(name, 0.0) + us / n / 1e3
    total = sum(p["total"] for p in kept) / n / 1e3
    per_cat = _by_category(per_unit, {name: cat for name, _, cat in units}, total)
    overhead = (sum(p["all_events"] for p in kept) * event_us + sum(len(p["units"]) + 1 for p in kept) * range_us) / n / 1e3
    return Profile(per_cat, per_unit, total, _iqr_mean(plain), len(passes), overhead)


def _by_category(per_unit: dict[str, float], cats: dict[str, str | None], total: float) -> dict[str, float]:
    """Units' ms added up per category; "other" is the pass's total minus every other category."""
    per_cat = {c: 0.0 for c in CATEGORIES}
    for name, ms in per_unit.items():
        per_cat[cats.get(name) or "other"] += ms
    per_cat["other"] = max(total - sum(v for c, v in per_cat.items() if c != "other"), 0.0)
    return per_cat


@contextmanager
def quiet_profile(**options):
    """``torch.profiler.profile`` without the lines its native tracer writes straight to the stderr file descriptor
    at each start and stop ("USDT: ... profiler_start"): they would bury a CLI's output. Python's own stderr is
    untouched outside the block."""
    from torch.profiler import profile

    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        saved = None
    if saved is not None:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
    try:
        with profile(**options) as prof:
            yield prof
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


def _chunked_passes(module: nn.Module, x: torch.Tensor, units: list, ranged, activities: list,
                    device: torch.device, chunks: int, per_chunk: int) -> tuple[list[dict[str, Any]], list[float]]:
    """``chunks`` times: ``per_chunk`` unprofiled passes (ms each), then as many profiled ones, every unit inside
    its range. Returns the profiled passes (:func:`_passes_of`) and the unprofiled passes' ms."""
    from torch.autograd.profiler import record_function

    passes: list[dict[str, Any]] = []  # per profiled pass: total µs and µs per unit
    plain: list[float] = []
    with torch.inference_mode():
        for _ in range(chunks):
            for _ in range(per_chunk):  # unprofiled passes (no ranges either)
                _sync(device)
                t0 = time.perf_counter()
                module(x)
                _sync(device)
                plain.append((time.perf_counter() - t0) * 1e3)
            with _unit_ranges(units, ranged), quiet_profile(activities=activities, record_shapes=False, with_stack=False,
                                                      profile_memory=False) as prof:
                for _ in range(per_chunk):
                    with record_function("falcon::pass"):
                        module(x)
                        _sync(device)
            passes.extend(_passes_of(prof.events(), device.type == "cuda"))
    return passes, plain


@contextmanager
def _unit_ranges(units: list, ranged):
    """Each unit's forward inside a profiler range ``falcon::{category}::{name}`` (an instance attribute: no
    module hooks, whose slow call path costs tens of µs per unit on a small CPU); put back on exit."""
    saved = []
    try:
        for name, m, cat in units:
            saved.append((m, m.__dict__.get("forward")))
            forward = m.forward

            def wrapped(*args, _forward=forward, _label=f"falcon::{cat}::{name}", **kwargs):
                with ranged(_label):
                    return _forward(*args, **kwargs)

            m.forward = wrapped
        yield
    finally:
        for m, previous in saved:
            if previous is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = previous


def _iqr_mean(values: Sequence[float]) -> float:
    """The mean of the values between the quartiles (all of them when there are few)."""
    if not values:
        return float("nan")
    q1, _, q3 = _quartiles(list(values))
    kept = [v for v in values if q1 <= v <= q3] or list(values)
    return sum(kept) / len(kept)


def _passes_of(events, cuda: bool) -> list[dict[str, Any]]:
    """Per profiled pass: its duration (µs), the duration of each unit's range, and how many operator events
    the profiler recorded inside each unit and inside the whole pass."""
    import bisect

    events = list(events)
    spans = sorted((e.time_range.start, e.time_range.end) for e in events if e.name == "falcon::pass")
    unit_events = sorted((e.time_range.start, e.time_range.end, e) for e in events
                         if e.name.startswith("falcon::") and e.name != "falcon::pass")
    passes = [{"total": float(end - start), "units": {}, "events": {}, "all_events": 0} for start, end in spans]
    pass_starts = [s0 for s0, _ in spans]
    unit_starts = [u[0] for u in unit_events]
    unit_pass = []
    for s0, s1, e in unit_events:
        i = bisect.bisect_right(pass_starts, s0) - 1
        unit_pass.append(i if i >= 0 and s0 <= spans[i][1] else None)
        if unit_pass[-1] is None:
            continue
        name = e.name.split("::", 2)[2]
        us = e.device_time_total if cuda else e.time_range.elapsed_us()
        units = passes[i]["units"]
        units[name] = units.get(name, 0.0) + us
    for e in events:
        if e.name.startswith("falcon::") or e.device_type != torch.autograd.DeviceType.CPU:
            continue
        start = e.time_range.start
        i = bisect.bisect_right(pass_starts, start) - 1
        if i < 0 or start > spans[i][1]:
            continue
        passes[i]["all_events"] += 1
        j = bisect.bisect_right(unit_starts, start) - 1
        if j >= 0 and start <= unit_events[j][1] and unit_pass[j] == i:
            name = unit_events[j][2].name.split("::", 2)[2]
            passes[i]["events"][name] = passes[i]["events"].get(name, 0) + 1
    return passes


def _calibrate(ranged, activities, calls: int = 2000) -> tuple[float, float]:
    """(µs the profiler adds per operator event, µs per unit range and its Python wrapper), measured here
    and now: ``calls`` cheap operators and empty ranges, with and without the profiler; the smaller of
    three tries each."""
    t = torch.empty(0)

    def ops() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.ops.aten.alias(t)
        return time.perf_counter() - t0

    def body(*args):
        return None

    def wrapped(*args, _forward=body, _label="falcon::calibrate"):
        with ranged(_label):
            return _forward(*args)

    def ranges(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(t)
        return time.perf_counter() - t0

    plain_ops, plain_calls, prof_ops, prof_ranges = [], [], [], []
    for _ in range(3):
        plain_ops.append(ops())
        plain_calls.append(ranges(body))
        with quiet_profile(activities=activities, record_shapes=False, with_stack=False, profile_memory=False):
            prof_ops.append(ops())
            prof_ranges.append(ranges(wrapped))
    event_us = max(min(prof_ops) - min(plain_ops), 0.0) / calls * 1e6
    range_us = max(min(prof_ranges) - min(plain_calls), 0.0) / calls * 1e6
    return event_us, range_us


def _recategorize(profile: Profile, module: nn.Module, replaced: Iterable[str]) -> dict[str, float]:
    """The categories of a profile for another set of replaced convs (the units' times do not change)."""
    replaced = set(replaced)
    kinds = {name: _category(name, m, replaced) for name, m in _profile_units(module)}
    return _by_category(profile.units, kinds, profile.total_ms)


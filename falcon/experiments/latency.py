"""Measured latency of a run's models: the baseline beside the converted model, stored with the run.

At the end of a run (:func:`falcon.experiments.pipeline.run_experiment`) the fine-tuned converted model and
its baseline are timed on this machine by the whole-model harness (:func:`falcon.modelbench.measure_model`:
deployable forms, BN folded, FALCON's branches fused; warm-up, interleaved rounds, median and IQR; parity
with eager fp32). :func:`measure_latency` returns the record that goes into the run's ``metrics["latency"]``:
always a dict, with ``status`` ``"ok"`` and the numbers, or another status and a one-line ``note`` (the
runtime is unavailable, its output failed the parity check, the run was stopped): a missing latency is
never made up.

:func:`measure_stored_runs` backfills stored runs that have none (``python -m falcon experiment measure``):
the run's models are rebuilt from its stored config (:func:`rebuild_models`) and timed; the weights are not
the trained ones (``"weights": "rebuilt"``), which does not change what a forward pass costs.
"""
from __future__ import annotations

import copy
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import torch
from torch import nn

from falcon.errors import FalconError, one_line
from falcon.experiments.store import device_label

#: The layouts a latency can be measured in; ``auto``: both, each model in its fastest (best against best).
LATENCY_LAYOUTS = ("auto", "contiguous", "channels_last")
#: The record's format (``metrics["latency"]["format"]``).
LATENCY_FORMAT = 1

ProgressFn = Callable[[float, str], None]


def _line(text: Any, limit: int = 200) -> str:
    return one_line(text, limit)


def measure_latency(original: nn.Module, converted: nn.Module, conv: str, hparams: dict, replaced: Iterable[str],
                    input_size: Iterable[int], *, runtime: str = "eager", batch_size: int = 1, rounds: int = 5,
                    layout: str = "auto", min_run_time: float = 0.2, device: str | torch.device = "cpu",
                    weights: str = "trained", name: str = "model", progress: ProgressFn | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Time ``original`` and ``converted`` (training forms; neither is changed: copies are timed) at
    ``batch_size`` in ``runtime`` on ``device``, with torch's current thread count; the record for the run.

    ``conv``/``hparams`` name the conversion (a plan's: ``"plan"``, ``{}``); ``replaced``: the converted layers.
    ``layout``: ``auto`` times both memory layouts and keeps each model's fastest; or one layout.
    ``weights``: ``"trained"`` (the run's own models) or ``"rebuilt"`` (a backfill). Never raises for a
    runtime that cannot run or fails: the record then has ``status`` other than ``"ok"`` and a ``note``.
    """
    from falcon.modelbench import measure_model, prepared_from_modules

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    settings = {"format": LATENCY_FORMAT, "weights": weights, "runtime": runtime, "batch_size": int(batch_size),
                "layouts": layout, "rounds": int(rounds), "min_run_time": float(min_run_time),
                "input_size": [int(v) for v in input_size], "threads": torch.get_num_threads(),
                "torch_version": torch.__version__, "device": dev.type if dev.type == "cpu" else str(dev),
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    t0 = time.perf_counter()
    if layout not in LATENCY_LAYOUTS:
        return _failed(settings, t0, "failed", f"layout must be one of {', '.join(LATENCY_LAYOUTS)}, got {layout!r}")
    try:
        prepared = prepared_from_modules(name, _cpu_copy(original), [(conv, dict(hparams), _cpu_copy(converted),
                                                                      list(replaced))],
                                         settings["input_size"], weights=weights,
                                         init="trained" if weights == "trained" else "rebuilt")
        result = measure_model(prepared=prepared, batch_size=int(batch_size), runtimes=(runtime,),
                               memory_format="auto" if layout == "auto" else layout, device=str(dev),
                               rounds=int(rounds), min_run_time=float(min_run_time), breakdown=False,
                               progress=progress, should_stop=should_stop)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - the memory guard, a model the harness cannot time: one line
        return _failed(settings, t0, "failed",
                       f"{runtime}: {type(e).__name__ + ': ' if not isinstance(e, FalconError) else ''}{e}")
    return _record(settings, result, runtime, t0)


def _cpu_copy(m: nn.Module) -> nn.Module:
    """A copy on the CPU in the default layout: the caller's models stay where and as they are."""
    return copy.deepcopy(m).to("cpu").to(memory_format=torch.contiguous_format).eval()


def _failed(settings: dict, t0: float, status: str, note: str, **more: Any) -> dict[str, Any]:
    return {**settings, **more, "status": status, "note": _line(note), "seconds": time.perf_counter() - t0}


def _record(settings: dict, result, runtime: str, t0: float) -> dict[str, Any]:
    """The latency record of a harness result: each model in its fastest layout, or why there is none."""
    info = next((r for r in result.runtimes if r.name == runtime), None)
    settings = {**settings, "device": result.device, "device_name": result.device_name, "threads": result.threads,
                "torch_version": result.torch_version, "cpu_count": result.cpu_count,
                "runtime_version": info.version if info is not None else None,
                "runtime_options": dict(info.options) if info is not None else {},
                "allocator": result.allocator, "load_average": result.load_average,
                "timings": [{"model": t.role, "layout": t.layout, "median_ms": t.median_ms, "iqr_ms": t.iqr_ms,
                             "samples": t.samples, "status": t.status, "message": t.message,
                             "relative_error": t.relative_error} for t in result.timings],
                "notes": list(result.notes)}
    if result.conversion is not None:
        settings["mac_ratio"] = result.conversion.mac_ratio
    if info is not None and not info.available:
        return _failed(settings, t0, "unavailable", info.reason or f"{runtime} is not available here")
    if result.stopped:
        return _failed(settings, t0, "stopped", "stopped before the latency was measured")
    orig, conv_t = _fastest(result, runtime, "original"), _fastest(result, runtime, "converted")
    if conv_t is None:
        return _failed(settings, t0, "failed", _why_not(result, runtime, "converted"))
    return {**settings, "status": "ok", "note": "" if orig is not None else _why_not(result, runtime, "original"),
            "layout": conv_t.layout, "converted_layout": conv_t.layout,
            "original_layout": orig.layout if orig is not None else None,
            "converted_ms": conv_t.median_ms, "converted_iqr_ms": conv_t.iqr_ms,
            "original_ms": orig.median_ms if orig is not None else None,
            "original_iqr_ms": orig.iqr_ms if orig is not None else None,
            "speedup": (orig.median_ms / conv_t.median_ms) if orig is not None else None,
            "seconds": time.perf_counter() - t0}


def _fastest(result, runtime: str, role: str):
    ok = [t for t in result.timings if t.role == role and t.runtime == runtime and t.median_ms]
    return min(ok, key=lambda t: t.median_ms) if ok else None


def _why_not(result, runtime: str, role: str) -> str:
    bad = [t for t in result.timings if t.role == role and t.message]
    what = "the baseline" if role == "original" else "the converted model"
    if bad:
        return f"{runtime}, {what} ({bad[0].layout}): {bad[0].message}"
    return f"{runtime}: {what} was not timed" + (f" ({result.notes[0]})" if result.notes else "")


def describe(record: dict[str, Any] | None) -> str:
    """One line: ``latency (eager, batch 1, cpu (…), 2 threads): 0.74 ms → 1.55 ms (0.48×)`` or the note."""
    if not record:
        return "latency: not measured"
    where = f"{record.get('runtime')}, batch {record.get('batch_size')}, {device_label(record)}"
    if record.get("status") != "ok":
        return f"latency ({where}): not measured ({record.get('status')}): {record.get('note', '')}"
    orig = record.get("original_ms")
    speed = f" ({record['speedup']:.2f}× speedup)" if record.get("speedup") else ""
    lay = record.get("converted_layout")
    if record.get("original_layout") and record["original_layout"] != lay:
        lay = f"{record['original_layout']} → {lay}"
    return (f"latency ({where}, {lay}): baseline {orig:.3g} ms → converted {record['converted_ms']:.3g} ms{speed}"
            if orig else f"latency ({where}, {lay}): converted {record['converted_ms']:.3g} ms")


def has_latency(run: dict[str, Any]) -> bool:
    """Whether a stored run has a measured latency (``metrics["latency"]["status"] == "ok"``)."""
    lat = (run.get("metrics") or {}).get("latency")
    return isinstance(lat, dict) and lat.get("status") == "ok" and lat.get("converted_ms") is not None


# ----------------------------------------------------------------------------------------------
# backfill: the stored runs' models rebuilt from their configs

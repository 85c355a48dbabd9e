"""Runs converted by a per-layer plan (``python -m falcon experiment --plan plan.json``).

A run's conversion is either *uniform*, one conv type everywhere (``conv`` and its ``hparams``), or a *plan*
(:mod:`falcon.planning`): each replaced layer its own type and ranks. A planned run has ``conv`` :data:`PLAN`,
no ``hparams`` and no single rank; ``config["plan"]`` holds what the run keeps of its plan (:func:`compact`: the
model, the target it was made for and the per-layer choices) and ``metrics["plan"]`` its :func:`digest` and
:func:`label`. Its params, MACs and replaced layers are those of the converted model, as for any run.

The plan is data: :func:`falcon.planning.plan_layers` checks every entry (registry types, integer ranks) and
:func:`falcon.conversion.convert_plan` that each names a conv of the model; nothing in it is executed.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from falcon.errors import FalconError

#: the ``conv`` of a run converted by a plan (= :data:`falcon.conversion.PLAN`)
PLAN = "plan"
_METRICS = ("macs", "params")


def _positive(value: Any) -> float | None:
    """A finite positive number, else None (a plan's target figures only name it: they are never computed on)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def compact(plan, model: str | None = None) -> dict[str, Any]:
    """What a run keeps of ``plan`` (a dict or a JSON file of ``python -m falcon plan --json``): the format, the
    model, the target (metric, budget, the original's figures, proxy) and each replaced layer's type and ranks,
    all checked. ``model``: the run's model, which the plan must have been made for."""
    from falcon.planning import FORMAT, plan_layers, plan_input_size, read_plan

    data = read_plan(plan)
    layers = [{"layer": name, "conv": conv, "hparams": hp} for name, conv, hp in plan_layers(data)]
    if not layers:
        raise FalconError("the plan keeps every layer: nothing to convert (a standard run is --conv standard)")
    if model is not None and data.get("model") != model:
        raise FalconError(f"the plan was made for {data.get('model')!r}, not {model}")
    metric = data.get("metric") if data.get("metric") in _METRICS else None
    original = data.get("original") if isinstance(data.get("original"), dict) else {}
    size = plan_input_size(data)
    return {"format": FORMAT, "model": str(data.get("model")), "metric": metric, "budget": _positive(data.get("budget")),
            "original": {m: _positive(original.get(m)) for m in _METRICS},
            "proxy": data.get("proxy") if data.get("proxy") in ("kernel", "data") else None,
            "input_size": list(size) if size else None, "layers": layers}


def digest(plan: dict) -> str:
    """16 hex digits that identify a plan's per-layer choices (the same choices, the same digest)."""
    text = json.dumps(plan["layers"], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def label(plan: dict) -> str:
    """``plan (macs 4×)``: the target the plan was made for (``, data proxy`` when it predicted errors on data);
    ``plan 1a2b3c4d`` (its digest) when it names none."""
    metric, budget = plan.get("metric"), plan.get("budget")
    original = (plan.get("original") or {}).get(metric) if metric else None
    if not (metric and budget and original):
        return f"plan {digest(plan)[:8]}"
    proxy = ", data proxy" if plan.get("proxy") == "data" else ""
    return f"plan ({metric} {original / budget:.3g}×{proxy})"


def plan_of(run: dict[str, Any]) -> dict | None:
    """The plan a stored run (or a run's record) was converted by, None for a uniform run."""
    cfg = run.get("config")
    plan = cfg.get("plan") if isinstance(cfg, dict) else None
    return plan if run.get("conv") == PLAN and isinstance(plan, dict) and isinstance(plan.get("layers"), list) else None


def method_of(run: dict[str, Any]) -> str:
    """What converted a run, for tables and the accuracy figure: its conv type, or a plan's :func:`label`."""
    plan = plan_of(run)
    return label(plan) if plan is not None else str(run.get("conv") or "")


def run_label(run: dict[str, Any]) -> str:
    """``FALCON k=2`` (the registry's label of a uniform run's type) or ``plan (macs 4×)``."""
    from falcon.convtypes import label_of

    plan = plan_of(run)
    return label(plan) if plan is not None else label_of(str(run.get("conv") or ""), run.get("hparams"))


def latest_key(run: dict[str, Any]) -> str:
    """What tells two configurations of one conv apart: their hyper-parameters, or a plan's digest."""
    plan = plan_of(run)
    return digest(plan) if plan is not None else json.dumps(run.get("hparams"), sort_keys=True, default=str)


#: the largest plan file read from an upload (a digits-vgg plan is ~5 kB, resnet50's ~50 kB)
MAX_PLAN_BYTES = 1_000_000


def from_bytes(raw: bytes, name: str = "the file") -> dict:
    """A plan uploaded as the bytes of a JSON file, parsed as data (nothing in it is executed) and checked to be a
    plan (:func:`falcon.planning.read_plan`); a FalconError that says what to upload otherwise. The model it was
    made for and its layers are checked when a run resolves it (:func:`compact`, then the conversion)."""
    from falcon.planning import read_plan

    if len(raw) > MAX_PLAN_BYTES:
        raise FalconError(f"{name} is {len(raw) / 1e6:.1f} MB, not a plan (a few kB): upload the JSON of "
                          "`python -m falcon plan --json` or of Model sizing's plan download")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FalconError(f"{name} is not JSON ({type(e).__name__}: {str(e)[:80]}): upload the JSON of "
                          "`python -m falcon plan --json` or of Model sizing's plan download") from None
    if not isinstance(obj, dict):
        raise FalconError(f"{name} is not a plan made by `python -m falcon plan --json` (its JSON is a "
                          f"{type(obj).__name__}): upload the JSON of that command or of Model sizing's plan download")
    try:
        return read_plan(obj)
    except FalconError as e:
        raise FalconError(f"{name}: {e}; upload the JSON of that command or of Model sizing's plan download") from None


def summary(plan: dict) -> str:
    """``6 layers replaced: features.3 FALCON k=2, features.7 Tucker-2 R₃=4 R₄=8, …`` (a :func:`compact` plan)."""
    from falcon.convtypes import label_of

    layers = plan["layers"]
    named = ", ".join(f"{c['layer']} {label_of(c['conv'], c['hparams'])}" for c in layers)
    return f"{len(layers)} layer{'s' if len(layers) != 1 else ''} replaced: {named}"


def check_layers(plan: dict, model: str) -> None:
    """Each layer a :func:`compact` plan replaces is a conv of ``model`` that its forward pass uses (a FalconError
    naming the first that is not), checked on the untrained architecture before anything is fitted or run. The
    app calls it for an uploaded plan: the model is resolved by the registry only, never as code."""
    from falcon.conversion import _plan_site
    from falcon.models import registry_entry
    from falcon.surgery import conv_sites

    entry = registry_entry(model, "the model choice")
    module = entry.build(None).eval()
    sites = {s.name: s for s in conv_sites(module, (entry.in_channels, entry.input_size, entry.input_size), entry.name)}
    for c in plan["layers"]:
        _plan_site(module, sites, c["layer"])

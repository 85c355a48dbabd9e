"""Per-layer conv type and rank for a target: the plan (``python -m falcon plan``).

For each conv a conv type can replace, the options are: keep it, or any allowed fittable type of the registry at
a grid of ranks. Each option has a cost (its MACs or params, the registry's closed form) and a predicted error:

* ``kernel`` proxy: ``e = ‖K − K̂‖² / ‖K‖²``, the squared relative error of the fit of the layer's trained kernel
  (every layer weighted alike: a layer whose fit loses 10% of its kernel costs the same wherever it is);
* ``data`` proxy: ``e = ‖conv(X) − block(X)‖² / ‖conv(X)‖²`` on the inputs ``X`` the layer sees for a small
  calibration batch of the model's own data (what the layer's output loses).

:func:`falcon.allocate.solve` then picks one option per layer with the least total error whose total cost (the
layers not replaced included) meets the target. :func:`uniform_plan` gives the one-rank-everywhere answer at the
same budget, for comparison. :func:`apply_plan` converts a model by a plan.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from falcon.allocate import Option, cheapest, greedy, solve
from falcon.errors import FalconError
from falcon.planfile import (FORMAT, KEEP, fittable_types, plan_input_size, plan_layers,  # noqa: F401 (re-exported)
                             read_plan)

PROXIES = ("kernel", "data")
METRICS = ("macs", "params")
#: the default choice per layer: FALCON at its ranks, Tucker-2, or the original conv
DEFAULT_TYPES = ("falcon", "tucker2", KEEP)


@dataclass(frozen=True)
class Choice:
    """What a plan does with one layer."""

    name: str
    conv: str  # a registry conv type; "standard": kept
    hparams: dict
    params: int
    macs: int
    error: float  # the proxy's predicted error
    original_params: int = 0  # the standard conv's, for comparison
    original_macs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.name, "conv": self.conv, "hparams": dict(self.hparams), "params": self.params,
                "macs": self.macs, "error": self.error, "original_params": self.original_params,
                "original_macs": self.original_macs}


@dataclass
class Plan:
    model: str
    metric: str
    proxy: str
    budget: float  # the largest total cost (of ``metric``) the plan may have
    original: dict  # params and MACs of the model before
    fixed: dict  # params and MACs of what no plan changes (layers not replaced, the classifier, ...)
    layers: list[Choice]
    objective: float
    lower_bound: float
    solver: str
    seconds: float
    input_size: tuple[int, int, int] = (3, 224, 224)
    greedy_objective: float | None = None
    notes: list[str] = field(default_factory=list)

    def total(self, metric: str) -> int:
        return int(self.fixed[metric] + sum(getattr(c, metric) for c in self.layers))

    def as_dict(self) -> dict[str, Any]:
        after = {m: self.total(m) for m in METRICS}
        return {
            "format": FORMAT, "model": self.model, "metric": self.metric, "proxy": self.proxy,
            "input_size": list(self.input_size), "budget": self.budget, "original": dict(self.original),
            "after": after, "fixed": dict(self.fixed),
            "compression_rate": self.original["params"] / after["params"],
            "computation_reduction_rate": self.original["macs"] / after["macs"],
            "objective": self.objective, "lower_bound": self.lower_bound, "gap": max(0.0, self.objective - self.lower_bound),
            "greedy_objective": self.greedy_objective, "solver": self.solver, "seconds": self.seconds,
            "notes": list(self.notes), "layers": [c.as_dict() for c in self.layers],
        }


# ----------------------------------------------------------------------------------------------
# options per layer
def rank_grid(full: int, most: int = 12) -> list[int]:
    """Ranks to offer for a full rank ``full``: every one up to ``most``, else 1-4 and halvings by √2 from full."""
    if full <= most:
        return list(range(1, full + 1))
    grid = {1, 2, 3, 4} | {max(1, round(full * 2 ** (-i / 2))) for i in range(0, 16)}
    return sorted(r for r in grid if r <= full)


def _rank_options(conv: str, spec) -> list[dict]:
    """The ranked hyper-parameters to try for ``conv`` on a layer (several ranks move together by one fraction)."""
    from falcon.convtypes import get_conv_type

    full = get_conv_type(conv).full_ranks(spec.N, spec.M, spec.D)
    names = list(full)
    if len(names) == 1:
        return [{names[0]: r} for r in rank_grid(full[names[0]])]
    top = max(full.values())
    fractions = sorted({r / top for r in rank_grid(top)})
    combos = dict.fromkeys(tuple((n, max(1, math.ceil(f * full[n]))) for n in names) for f in fractions)
    return [dict(c) for c in combos]


def _cost(conv: str, spec, hparams: dict) -> tuple[int, int]:
    from falcon.convtypes import get_conv_type

    c = get_conv_type(conv).cost(spec, **hparams)
    return int(c.params), int(c.macs)


def _kernel_errors(kernel: torch.Tensor, conv: str, options: list[dict]) -> list[float]:
    """Squared relative kernel errors of the closed-form fits of ``kernel`` at each option (the fitter's error
    curve: one decomposition for every rank where the type has a closed form)."""
    from falcon.fits import fitter_of

    return [float(e) ** 2 for e in fitter_of(conv).error_curve(kernel, options)]


def _data_errors(conv_module: nn.Conv2d, inputs: torch.Tensor, conv: str, options: list[dict], spec) -> list[float]:
    """Squared relative output errors of the fitted block on the layer's calibration inputs, per option."""
    from falcon.fits import fit_module

    with torch.no_grad():
        want = conv_module(inputs)
        scale = float(want.double().pow(2).sum()) or 1.0
        out = []
        for o in options:
            block, _ = fit_module(conv_module, conv, dict(o), spec=spec)
            out.append(float((block.eval()(inputs) - want).double().pow(2).sum()) / scale)
    return out


def layer_options(name: str, conv_module: nn.Conv2d, spec, types: Sequence[str], metric: str, proxy: str,
                  inputs: torch.Tensor | None = None) -> list[Option]:
    """Every option for one layer: keep it (error 0), or each allowed type at each rank of its grid (when keeping is
    allowed, only those cheaper than the original in ``metric``: one that costs more is never worth it)."""
    p0, m0 = _cost(KEEP, spec, {})
    out = [Option(float(m0 if metric == "macs" else p0), 0.0, f"{name}: keep",
                  Choice(name, KEEP, {}, p0, m0, 0.0, p0, m0))] if KEEP in types else []
    kernel = conv_module.weight.detach().float()
    for conv in types:
        if conv == KEEP:
            continue
        opts = []
        for hp in _rank_options(conv, spec):
            p, m = _cost(conv, spec, hp)
            if KEEP not in types or (m if metric == "macs" else p) < (m0 if metric == "macs" else p0):
                opts.append((hp, p, m))
        if not opts:
            continue
        hps = [o[0] for o in opts]
        errors = (_kernel_errors(kernel, conv, hps) if proxy == "kernel"
                  else _data_errors(conv_module, inputs, conv, hps, spec))
        for (hp, p, m), e in zip(opts, errors):
            out.append(Option(float(m if metric == "macs" else p), max(0.0, e), f"{name}: {conv} {hp}",
                              Choice(name, conv, hp, p, m, max(0.0, e), p0, m0)))
    if not out:
        raise FalconError(f"no allowed conv type can replace {name}; allow standard (keep) or another type")
    return out


# ----------------------------------------------------------------------------------------------
# a model
@dataclass
class _Problem:
    """A model's sites, their allowed types, the costs no plan changes, and (data proxy) each site's inputs."""

    name: str
    module: nn.Module
    chw: tuple[int, int, int]
    sites: list  # falcon.surgery.ConvSite
    types: dict  # site name -> allowed conv types
    original: dict
    fixed: dict
    inputs: dict
    calibration: str = ""  # data proxy: what the calibration images were


def _loaded(model, weights=None):
    """(module in eval mode, entry, (C, H, W), calibration images or None) of a name, LoadedModel or module."""
    from falcon.checkpoints import LoadedModel
    from falcon.models import module_entry
    from falcon.sources import load_model

    if isinstance(model, nn.Module):
        entry = module_entry(model)
        return model.eval(), entry, (entry.in_channels, entry.input_size, entry.input_size), None
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    calib = None
    if loaded.entry.name == "digits-vgg":
        from falcon.datasets import load_digits

        calib = load_digits("train", size=loaded.entry.input_size)
    return loaded.model.eval(), loaded.entry, loaded.input_size, calib


def _site_inputs(module: nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named conv sees for ``images`` (forward hooks on the original model)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [module.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, a[0].detach()))
             for n in names]
    try:
        with torch.no_grad():
            module(images)
    finally:
        for h in hooks:
            h.remove()
    return seen


def problem(model, types: Sequence[str] = DEFAULT_TYPES, proxy: str = "kernel", weights=None,
            include_stem: bool | None = None, calibration_images: int = 64, seed: int = 0, data: str | None = None,
            data_dir=None) -> _Problem:
    """The layers a plan chooses for, with their allowed types; for the data proxy, the inputs each layer sees for
    ``calibration_images`` training images drawn with ``seed`` (:func:`calibration_images_of`)."""
    from falcon.convtypes import get_conv_type
    from falcon.counting import count_model
    from falcon.surgery import conv_sites, plan as policy

    if proxy not in PROXIES:
        raise FalconError(f"proxy must be one of {', '.join(PROXIES)}, got {proxy!r}")
    types = list(dict.fromkeys(types))
    for t in types:
        if t != KEEP and not get_conv_type(t).fittable:
            raise FalconError(f"{t} cannot be fitted to trained weights, so it cannot be planned; choose among "
                              f"{', '.join(fittable_types())}")
    module, entry, chw, calib = _loaded(model, weights)
    all_sites = conv_sites(module, chw, entry.name)
    allowed: dict[str, list[str]] = {}
    for t in types:
        for s in (policy(entry, all_sites, t if t != KEEP else "falcon", include_stem)):
            allowed.setdefault(s.name, []).append(t)
    sites = [s for s in all_sites if s.name in allowed and any(t != KEEP for t in allowed[s.name])]
    if not sites:
        raise FalconError(f"{entry.name} has no conv that {', '.join(t for t in types if t != KEEP)} can replace")
    count = count_model(module, chw, "clean")
    original = {"params": int(count.params), "macs": int(count.macs)}
    fixed = dict(original)
    for s in sites:
        p, m = _cost(KEEP, s.spec, {})
        fixed["params"] -= p
        fixed["macs"] -= m
    inputs, source = {}, ""
    if proxy == "data":
        images = calibration_images_of(entry.name, chw, calib, calibration_images, seed, data, data_dir)
        inputs = _site_inputs(module, [s.name for s in sites], images)
        source = f"{len(images)} training images of {data or 'the bundled data'} (seed {seed})"
    return _Problem(entry.name, module, chw, sites, allowed, original, fixed, inputs, source)


def calibration_images_of(name: str, chw, bundled, n: int, seed: int, data: str | None = None,
                          data_dir=None) -> torch.Tensor:
    """``n`` training images drawn with ``seed``: of the bundled data (digits-vgg), or of the data set ``data``
    (e.g. cifar10) found in ``data_dir`` (never downloaded here: the data proxy must not wait on a network)."""
    if data is not None:
        from falcon.experiments.data import load_dataset

        spec = load_dataset(data, data_dir, download=False)
        if tuple(spec.input_size) != tuple(chw):
            raise FalconError(f"{data}'s images are {'×'.join(map(str, spec.input_size))} but {name} takes "
                              f"{'×'.join(map(str, chw))}: give the model's own data set with --data")
        train = spec.train
    elif bundled is not None:
        train = bundled
    else:
        raise FalconError(f"the data proxy needs the model's own data; {name} has none bundled here (digits-vgg "
                          "does): give --data cifar10 (with --data-dir where it is) or use --proxy kernel")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(seed)))[:n]
    if hasattr(train, "tensors"):
        return train.tensors[0][pick]
    with torch.random.fork_rng():  # the training split's augmentation draws from torch's generator
        torch.manual_seed(int(seed))
        return torch.stack([train[int(i)][0] for i in pick])


def budget_of(original: dict, metric: str, target_ratio: float | None = None, target: float | None = None) -> float:
    """The largest total ``metric`` a plan may have: ``original / target_ratio`` or the absolute ``target``."""
    from falcon.limits import parse_float

    if metric not in METRICS:
        raise FalconError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if (target_ratio is None) == (target is None):
        raise FalconError("give one target: a ratio (times fewer) or an absolute figure")
    if target_ratio is not None:
        return original[metric] / parse_float(target_ratio, "target_rate", "target ratio")
    return parse_float(target, "target_count", f"target {metric}")


def plan_model(model, *, metric: str = "macs", target_ratio: float | None = None, target: float | None = None,
               types: Sequence[str] = DEFAULT_TYPES, proxy: str = "kernel", weights=None,
               include_stem: bool | None = None, bins: int = 4000, seed: int = 0, prob: _Problem | None = None) -> Plan:
    """The per-layer plan with the least predicted error (``proxy``) whose total ``metric`` meets the target
    (``seed``: the data proxy's calibration images). ``prob``: the :func:`problem` of these arguments, made once
    and shared with :func:`uniform_plan` (one forward pass and count instead of two)."""
    t0 = time.perf_counter()
    prob = prob if prob is not None else problem(model, types, proxy, weights, include_stem, seed=seed)
    layers = [layer_options(s.name, prob.module.get_submodule(s.name), s.spec, prob.types[s.name], metric, proxy,
                            prob.inputs.get(s.name)) for s in prob.sites]
    floor = cheapest(layers)
    try:
        budget = budget_of(prob.original, metric, target_ratio, target)
    except FalconError as e:  # zero, negative, nan, text: say what the model can reach
        raise FalconError(f"{e}; {_reachable(prob, metric, floor)}") from None
    room = budget - prob.fixed[metric]
    if room <= 0 or floor > room:
        raise FalconError(f"no plan of {prob.name} with {', '.join(types)} reaches {_ratio(prob.original[metric], budget)}"
                          f" fewer {metric}: {_reachable(prob, metric, floor)}")
    sol = solve(layers, room, bins)
    g = greedy(layers, room)
    chosen = [layers[i][j].data for i, j in enumerate(sol.choice)]
    notes = [f"data proxy: {prob.calibration}"] if prob.calibration else []
    if sol.gap > 1e-9:
        notes.append(f"the plan's error is within {sol.gap:.3g} of the optimum (Lagrangian bound {sol.lower_bound:.4g})")
    return Plan(prob.name, metric, proxy, budget, prob.original, prob.fixed, chosen, sol.objective, sol.lower_bound,
                sol.method, time.perf_counter() - t0, prob.chw, g.objective, notes)


def _reachable(prob: _Problem, metric: str, floor: float) -> str:
    """The least ``metric`` any plan reaches (the cheapest option everywhere), as a ratio and a count."""
    least = prob.fixed[metric] + floor
    return (f"the best reachable is {prob.original[metric] / least:.3g}× ({least:,.0f} {metric}, of which "
            f"{prob.fixed[metric]:,} are in layers no plan changes)")


def _only(prob: _Problem, conv: str) -> _Problem | None:
    """``prob`` restricted to the sites ``conv`` may replace (the others' cost joins the fixed part); None if none."""
    sites = [s for s in prob.sites if conv in prob.types[s.name]]
    if not sites:
        return None
    fixed = dict(prob.fixed)
    for s in prob.sites:
        if s not in sites:
            p, m = _cost(KEEP, s.spec, {})
            fixed["params"] += p
            fixed["macs"] += m
    return dataclasses.replace(prob, sites=sites, types={s.name: [conv] for s in sites}, fixed=fixed)


def _ratio(original: float, budget: float) -> str:
    return f"{original / budget:.3g}×"


def uniform_plan(model, conv: str = "falcon", *, metric: str = "macs", target_ratio: float | None = None,
                 target: float | None = None, proxy: str = "kernel", weights=None,
                 include_stem: bool | None = None, seed: int = 0, prob: _Problem | None = None) -> Plan:
    """One rank everywhere (clamped to each layer's full rank): the highest that meets the same target, with its
    predicted error by the same proxy, for comparison with :func:`plan_model`. ``prob``: a :func:`problem` of the
    same model, proxy, include_stem and seed (that of :func:`plan_model`), reused where it allows ``conv``."""
    t0 = time.perf_counter()
    prob = _only(prob, conv) if prob is not None else None
    prob = prob if prob is not None else problem(model, (conv,), proxy, weights, include_stem, seed=seed)
    budget = budget_of(prob.original, metric, target_ratio, target)
    from falcon.convtypes import get_conv_type

    ct = get_conv_type(conv)
    top = max(ct.full_rank(s.spec.N, s.spec.M, s.spec.D) for s in prob.sites)
    best = None
    for rank in range(1, top + 1):
        picks = []
        for s in prob.sites:
            full = ct.full_ranks(s.spec.N, s.spec.M, s.spec.D)
            hp = {n: min(rank, f) for n, f in full.items()}
            p, m = _cost(conv, s.spec, hp)
            picks.append((s, hp, p, m))
        total = prob.fixed[metric] + sum(p if metric == "params" else m for _, _, p, m in picks)
        if total > budget:
            break
        best = picks
    if best is None:
        raise FalconError(f"no uniform {conv} rank of {prob.name} reaches {_ratio(prob.original[metric], budget)} fewer "
                          f"{metric}")
    chosen = []
    for s, hp, p, m in best:
        conv_module = prob.module.get_submodule(s.name)
        e = (_kernel_errors(conv_module.weight.detach().float(), conv, [hp]) if proxy == "kernel"
             else _data_errors(conv_module, prob.inputs[s.name], conv, [hp], s.spec))[0]
        p0, m0 = _cost(KEEP, s.spec, {})
        chosen.append(Choice(s.name, conv, hp, p, m, e, p0, m0))
    objective = sum(c.error for c in chosen)
    return Plan(prob.name, metric, proxy, budget, prob.original, prob.fixed, chosen, objective, objective,
                f"uniform {conv}", time.perf_counter() - t0, prob.chw)


# ----------------------------------------------------------------------------------------------
# applying a plan
def apply_plan(module: nn.Module, plan: dict, model_name: str | None = None,
               input_size: tuple[int, int, int] | None = None) -> tuple[nn.Module, list[dict]]:
    """A copy of ``module`` with each planned layer replaced by its fitted block
    (:func:`falcon.conversion.convert_plan`: the plan names layers, conv types and ranks only; each is checked
    before anything is fitted) and a report per replaced layer. ``input_size``: default the plan's."""
    from falcon.conversion import convert_plan

    plan = read_plan(plan)
    if model_name is not None and plan.get("model") != model_name:
        raise FalconError(f"the plan was made for {plan.get('model')!r}, not {model_name}")
    converted = convert_plan(module, plan, input_size=input_size or plan_input_size(plan))
    return converted.model, [{"layer": x.name, "conv": x.conv, "hparams": dict(x.hparams),
                              "relative_error": x.relative_error} for x in converted.layers]


def apply_plan_report(loaded, plan: dict, evaluate: bool = False) -> dict[str, Any]:
    """:func:`apply_plan` on a loaded model, with params and MACs counted on the result (convention ``clean``) and,
    with ``evaluate``, the held-out accuracy before and after (no fine-tuning)."""
    from falcon.counting import count_model
    from falcon.models.digits import evaluate_accuracy

    module, layers = apply_plan(loaded.model, plan, loaded.entry.name, loaded.input_size)
    before, after = count_model(loaded.model, loaded.input_size, "clean"), count_model(module, loaded.input_size, "clean")
    out: dict[str, Any] = {"model": loaded.entry.name, "params": int(after.params), "macs": int(after.macs),
                           "standard_params": int(before.params), "standard_macs": int(before.macs),
                           "compression_rate": before.params / after.params,
                           "computation_reduction_rate": before.macs / after.macs, "layers": layers}
    if evaluate:
        out["baseline_accuracy"] = evaluate_accuracy(loaded.model, loaded.eval_data)
        out["accuracy"] = evaluate_accuracy(module, loaded.eval_data)
    return out

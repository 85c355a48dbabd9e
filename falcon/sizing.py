"""Sizing a whole model: parameters and MACs before and after replacing its convs."""
from __future__ import annotations

import contextlib
import functools
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_buffer_registration_hook, register_module_parameter_registration_hook

from falcon.convtypes import RANKED, get_conv_type
from falcon.counting import CONVENTIONS, ModelCount, count_model, no_init_on_meta, on_meta_without_init
from falcon.errors import FalconError
from falcon.limits import check_kwargs, parse_int
from falcon.models import ModelEntry, _chw, get_model_entry, module_entry
from falcon.blocks import ShuffleUnit
from falcon.surgery import (FORWARD_ERRORS, adapt_widths, conv_sites, does_not_run, drop_shortcuts, plan, recording_conv_inputs,
                            replace_convs, sites_from, widen_for_shuffle)


#: Why a convention's counts differ from (or match) the thesis's columns, for the comparison with the paper.
VERSUS_PAPER = {
    "paper": "Under the 'paper' convention the counts follow the thesis's rules (conv and linear MACs with their bias, "
             "every parameter plus the BN that the reference FALCON module creates and never uses); the thesis prints "
             "two decimals of millions, so differences under ~0.005 M are rounding.",
    "clean": "The 'clean' convention leaves out the BN that the reference FALCON module creates and never uses "
             "(2·N parameters per replaced layer) and counts functional convs, linears and attention; switch to "
             "'paper' to reproduce the published column.",
    "torchvision": "The 'torchvision' convention is the rule behind torchvision's published GFLOPS (no bias adds, "
                   "attention matmuls counted); switch to 'paper' to reproduce the thesis's column.",
    "thop": "thop also counts BN and pooling operations and only the parameters of modules it knows, so it differs "
            "from the thesis's column; switch to 'paper' to reproduce it.",
}


@dataclass
class SizeResult:
    model: str
    num_classes: int
    input_size: int
    conv: str
    hparams: dict
    convention: str
    count: ModelCount
    standard: ModelCount
    replaced: list[str]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    input_size_from: str = ""  # where the input size came from ("given", or the model's default and its source)

    @property
    def params(self) -> int:
        return self.count.params

    @property
    def macs(self) -> int:
        return self.count.macs

    @property
    def compression_rate(self) -> float:
        return self.standard.params / self.count.params

    @property
    def computation_reduction_rate(self) -> float:
        return self.standard.macs / self.count.macs

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "input_size_from": self.input_size_from,
            "conv": self.conv,
            "hparams": self.hparams,
            "convention": self.convention,
            "params": self.params,
            "macs": self.macs,
            "standard_params": self.standard.params,
            "standard_macs": self.standard.macs,
            "compression_rate": self.compression_rate,
            "computation_reduction_rate": self.computation_reduction_rate,
            "replaced_layers": len(self.replaced),
            "notes": self.notes,
            "macs_by_kind": dict(self.count.macs_by_kind),
            "not_counted": [str(n) for n in self.count.not_counted],
            "layers": self.count.table(),
        }

    def frame(self, every_module: bool = True):
        """The per-layer table as a DataFrame (``every_module=False``: only rows with params or MACs)."""
        import pandas as pd

        layers = pd.DataFrame(self.count.table())
        if not every_module and not layers.empty:
            layers = layers[(layers["params"] > 0) | (layers["macs"] > 0)]
        return layers

    def csv(self) -> bytes:
        """The per-layer table with two TOTAL rows (this model, the standard one) as CSV."""
        import json

        import pandas as pd

        blank = {c: "" for c in ("input", "output")}
        totals = pd.DataFrame([
            {"name": "TOTAL", "kind": f"{self.conv} {json.dumps(self.hparams)}", "shape": self.convention, **blank,
             "params": self.params, "macs": self.macs},
            {"name": "TOTAL standard", "kind": "standard", "shape": self.convention, **blank,
             "params": self.standard.params, "macs": self.standard.macs},
        ])
        return pd.concat([self.frame(), totals], ignore_index=True).to_csv(index=False).encode()

    def __repr__(self) -> str:
        return (f"SizeResult({self.model}, {self.conv} {self.hparams or ''}, {self.convention}: {self.params:,} params "
                f"(CR {self.compression_rate:.3f}x), {self.macs:,} MACs (CRR {self.computation_reduction_rate:.3f}x), "
                f"{len(self.replaced)} convs replaced)")


#: threads inside :func:`_parameters_on_meta` (a per-thread nesting depth)
_ON_META = threading.local()
_HOOKS_LOCK = threading.Lock()
_hooks_installed = False


def _param_to_meta(module, name, p):
    if p is not None and getattr(_ON_META, "depth", 0) and not p.is_meta:
        return nn.Parameter(p.to("meta"), p.requires_grad)
    return None


def _buffer_to_meta(module, name, b):
    if b is not None and getattr(_ON_META, "depth", 0) and not b.is_meta:
        return b.to("meta")
    return None


@contextlib.contextmanager
def _parameters_on_meta():
    """Create parameters and buffers on ``meta`` while ordinary tensors stay on the CPU.

    For builders that compute with tensors (regnet's widths) and so cannot run under
    ``torch.device("meta")``. Scoped to the calling thread: PyTorch's parameter and buffer registration
    hooks (installed once, on first use, and never removed, so that no thread ever iterates the hook
    table while it changes) move a tensor to ``meta`` only when the thread registering it is inside this
    context; a model that another thread builds at the same time keeps its real parameters. No
    ``nn.Module`` method is replaced.
    """
    global _hooks_installed
    with _HOOKS_LOCK:
        if not _hooks_installed:
            register_module_parameter_registration_hook(_param_to_meta)
            register_module_buffer_registration_hook(_buffer_to_meta)
            _hooks_installed = True
    _ON_META.depth = getattr(_ON_META, "depth", 0) + 1
    try:
        yield
    finally:
        _ON_META.depth -= 1


def _build_on(entry, num_classes, device):
    if str(device) != "meta":
        with torch.device(device):
            return entry.build(num_classes)
    try:
        with on_meta_without_init():
            return entry.build(num_classes)
    except (NotImplementedError, RuntimeError):
        with _parameters_on_meta(), no_init_on_meta():
            return entry.build(num_classes)


def model_entry(model: str | ModelEntry | nn.Module, input_size: Any = None) -> ModelEntry:
    """The entry of a model name or spec, an entry itself, or an entry for a module the caller holds."""
    if isinstance(model, ModelEntry):
        return model
    if isinstance(model, nn.Module):
        return module_entry(model, input_size if input_size is not None and not isinstance(input_size, int)
                            else (3, input_size or 224, input_size or 224))
    return get_model_entry(model)


def _checked_size(entry, num_classes: int | None, input_size: Any) -> int:
    """The input size to size ``entry`` at (its default when None); a FalconError for bad sizes or classes."""
    if input_size is not None and not isinstance(input_size, numbers.Integral):  # (C, H, W)
        c, h, w = _chw(input_size)
        if c != entry.in_channels or h != w:
            raise FalconError(f"{entry.name} takes {entry.in_channels}-channel square inputs; got {c}×{h}×{w}")
        input_size = h
    size = entry.input_size if input_size is None else parse_int(input_size, "input_size", "input size")
    if num_classes is not None:
        parse_int(num_classes, "num_classes", "number of classes")
    return size


def _cacheable(entry: ModelEntry) -> bool:
    """Named models are cached by their entry; a module or factory of the caller's is not (the cache would
    keep it alive, and the code behind a factory may change between calls)."""
    return entry.family not in ("module", "factory")


def build_sized(model: str | ModelEntry | nn.Module, num_classes: int | None, input_size: Any, conv: str,
                include_stem: bool | None = None, device: str | torch.device = "meta", include=None, exclude=None,
                **hp: Any):
    """Build ``model`` with ``conv`` in place of its replaceable convs (paper layout): those of the model's
    policy, then the ``include``/``exclude`` name patterns (:func:`falcon.surgery.plan`).

    Returns (module, entry, resolved hparams, replaced site names, unused-param map, input size, kept layers).
    A layer the conv type cannot take (ShuffleUnit's groups must divide its channels, …) stays standard and is
    named in ``kept`` with the reason, unless no layer fits: then the first reason is the error.
    On the ``meta`` device (the default) nothing is allocated: shapes only.
    """
    entry = model_entry(model, input_size)
    ct = get_conv_type(conv)
    resolved = ct.resolve(**hp)
    size = _checked_size(entry, num_classes, input_size)
    chw = (entry.in_channels, size, size)
    net = _build_on(entry, num_classes, device)
    dropped = conv in entry.drop_shortcuts_for
    if dropped:
        drop_shortcuts(net)
    if conv == "standard":  # nothing to replace: no need for the forward pass that finds the convs
        return net, entry, resolved, [], {}, chw, {}
    key = (entry, num_classes, size, dropped)
    if key not in _SITES:  # the convs and their input sizes depend only on these, not on the conv type
        if len(_SITES) >= 256:
            _SITES.clear()
        found = tuple(conv_sites(net, chw, entry.name))
        if not _cacheable(entry):
            return _finish_build(net, entry, ct, resolved, list(found), conv, include_stem, include, exclude, chw, device)
        _SITES[key] = found
    return _finish_build(net, entry, ct, resolved, list(_SITES[key]), conv, include_stem, include, exclude, chw, device)


def _finish_build(net, entry, ct, resolved, all_sites, conv, include_stem, include, exclude, chw, device):
    sites = plan(entry, all_sites, conv, include_stem, include, exclude)
    kept: dict[str, str] = {}  # layers the type cannot take (ShuffleUnit's groups, ...), kept standard
    for site in sites:  # validate every layer before building any
        try:
            ct.resolve(site.spec, **resolved)
        except FalconError as e:
            kept[site.name] = str(e)
    if kept and len(kept) == len(sites):
        raise FalconError(next(iter(kept.values())))
    sites = [s for s in sites if s.name not in kept]
    make = None
    widened = ct.widens(**resolved)
    if widened:
        if str(device) != "meta":
            raise FalconError("a width multiplier α ≠ 1 changes the model's layer widths: it can be sized, not converted")
        widths = widen_for_shuffle(net, sites, all_sites, resolved["width_mult"],
                                   entry.shuffle_widen)
        make = lambda site: ShuffleUnit(site.spec, resolved["groups"], resolved["width_mult"], paper=True,  # noqa: E731
                                        in_width=widths[site.name][0], out_width=widths[site.name][1])
    with on_meta_without_init() if str(device) == "meta" else torch.device(device):
        replace_convs(net, sites, conv, resolved, make)
    if widened:
        adapt_widths(net, chw)
    unused = {s.name: ct.reference_unused_params(s.spec, resolved) for s in sites}
    return net, entry, resolved, [s.name for s in sites], unused, chw, kept


#: (model entry, classes, input size, shortcuts dropped) -> the model's convs with their input sizes
_SITES: dict[tuple, tuple] = {}


def _standard_count(entry: ModelEntry, num_classes: int | None, input_size: int, convention: str) -> ModelCount:
    """The unmodified model's count (cached for named models: every sizing compares against it)."""
    if _cacheable(entry):
        return _cached_standard_count(entry, num_classes, input_size, convention)
    return _count_standard(entry, num_classes, input_size, convention)


@functools.lru_cache(maxsize=64)
def _cached_standard_count(entry: ModelEntry, num_classes: int | None, input_size: int, convention: str) -> ModelCount:
    return _count_standard(entry, num_classes, input_size, convention)


def _count_standard(entry: ModelEntry, num_classes: int | None, input_size: int, convention: str) -> ModelCount:
    base, _, _, _, _, chw, _ = build_sized(entry, num_classes, input_size, "standard")
    if convention == "thop":  # thop profiles a deep copy (hooks and all): find the convs later, on their own
        return _counted(base, chw, convention, None, entry)
    with recording_conv_inputs(base) as seen:  # the same pass finds the convs for the other conv types
        count = _counted(base, chw, convention, None, entry)
    if _cacheable(entry):
        _SITES.setdefault((entry, num_classes, input_size, False), tuple(sites_from(base, seen)))
    return count


def _counted(net: nn.Module, chw, convention: str, unused, entry: ModelEntry) -> ModelCount:
    """count_model, with the model's own forward-pass failure as one line."""
    try:
        return count_model(net, chw, convention, unused)
    except FORWARD_ERRORS as e:
        raise does_not_run(chw, e, entry.name) from None


def size_model(model: str | ModelEntry | nn.Module, conv: str = "standard", num_classes: int | None = None,
               input_size: Any = None, convention: str = "paper", include_stem: bool | None = None,
               include=None, exclude=None, **hp: Any) -> SizeResult:
    """Parameters and MACs of ``model`` with ``conv`` under ``convention``, next to the standard model.

    ``model``: a name or spec (:func:`falcon.models.get_model_entry`), an entry, or any ``nn.Module`` (sized
    on a shapes-only copy: its weights are never copied). ``input_size``: H (= W), or (C, H, W); default the
    model's own (for torchvision models, the eval crop of their weights).
    """
    if convention not in CONVENTIONS:
        raise FalconError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    t0 = time.perf_counter()
    check_kwargs("size_model", hp, [h.name for h in get_conv_type(conv).hparams])  # a misspelt one is no default
    entry = model_entry(model, input_size)
    resolved = get_conv_type(conv).resolve(**hp)  # a bad hyper-parameter fails before any forward pass
    size = _checked_size(entry, num_classes, input_size)
    # cached, and computed first: every conv type compares against it, and its pass also finds the convs
    standard = _standard_count(entry, num_classes, size, convention)
    if conv == "standard":
        if include or exclude:
            raise FalconError("include/exclude patterns choose the convs a compressed type replaces; pick a conv type")
        count, chw, replaced, unused, kept = standard, (entry.in_channels, size, size), [], {}, {}
    else:
        net, entry, resolved, replaced, unused, chw, kept = build_sized(entry, num_classes, size, conv, include_stem,
                                                                  include=include, exclude=exclude, **hp)
        count = _counted(net, chw, convention, unused, entry)
    notes = []
    if conv != "standard" and not replaced:
        notes.append(f"no conv of {entry.name} is one {conv} replaces (groups=1, square kernel > 1, dilation 1, "
                     "PyTorch's own forward; the first conv stays): the counts are the standard model's")
    if kept:
        first = next(iter(kept))
        notes.append(f"{len(kept)} conv{'s' if len(kept) > 1 else ''} kept standard because {conv} cannot take "
                     f"{'them' if len(kept) > 1 else 'it'} ({', '.join(list(kept)[:3])}{', …' if len(kept) > 3 else ''}; "
                     f"{first}: {kept[first]})")
    if conv in entry.drop_shortcuts_for:
        notes.append("residual shortcuts removed, as the thesis did for this model with this conv type")
    if convention == "paper" and any(unused.values()):
        notes.append(f"includes {sum(unused.values()):,} parameters of the BN that the reference FALCON module "
                     "creates per replaced layer and never uses (convention 'clean' leaves them out)")
    classes = num_classes if num_classes is not None else entry.default_classes
    return SizeResult(entry.name, classes, chw[1], conv, resolved, convention, count, standard, replaced,
                      time.perf_counter() - t0, notes, entry.input_size_from if input_size is None else "given")


# ----------------------------------------------------------------------------------------------
# budgets: which rank meets a target
@dataclass
class Budget:
    """The answer to "which uniform rank gives me X× fewer MACs (or params)?"."""

    model: str
    conv: str
    metric: str  # "computation_reduction_rate" (MACs) or "compression_rate" (params)
    target: float
    rank: int | None  # the highest rank that meets the target; None when none does
    result: SizeResult | None  # sizing at that rank
    neighbours: list[SizeResult]  # the ranks just below and above (and the answer), in rank order
    max_rank: int  # the largest rank searched: the largest full rank of the replaced layers
    ceiling: float  # the rate if every replaced conv cost nothing (what no rank can beat)
    notes: list[str] = field(default_factory=list)
    curve: list[SizeResult] = field(default_factory=list)  # every rank sized, from 1

    @property
    def what(self) -> str:
        return "MACs" if self.metric == "computation_reduction_rate" else "params"

    def summary(self) -> str:
        label = get_conv_type(self.conv).label
        if self.rank is None:
            best = getattr(self.neighbours[0], self.metric) if self.neighbours else float("nan")
            return (f"no rank of {label} gives {self.target:g}× fewer {self.what} on {self.model}: the best is "
                    f"{best:.3f}× at rank 1, and even replaced convs that cost nothing would give at most "
                    f"{self.ceiling:.3f}× (the rest of the model stays)")
        got = getattr(self.result, self.metric)
        return (f"{label} rank {self.rank} is the highest uniform rank with ≥ {self.target:g}× fewer {self.what} on "
                f"{self.model}: {got:.3f}× ({self.result.params:,} params, {self.result.macs:,} MACs)")

    def as_dict(self) -> dict:
        names = get_conv_type(self.conv).rank_names

        def row(r: SizeResult) -> dict:  # the uniform rank: every ranked hyper-parameter's (the largest)
            return {"rank": max((r.hparams[n] for n in names if n in r.hparams), default=None), "params": r.params, "macs": r.macs,
                    "compression_rate": r.compression_rate, "computation_reduction_rate": r.computation_reduction_rate,
                    "meets": getattr(r, self.metric) >= self.target}

        return {"model": self.model, "conv": self.conv, "metric": self.metric, "target": self.target,
                "rank": self.rank, "max_rank": self.max_rank, "ceiling": self.ceiling, "summary": self.summary(),
                "result": self.result.as_dict() if self.result else None,
                "neighbours": [row(r) for r in self.neighbours], "notes": self.notes,
                "curve": [row(r) for r in self.curve]}


def size_for_target(model: str | ModelEntry | nn.Module, conv: str = "falcon", crr: float | None = None,
                    cr: float | None = None, whole_curve: bool = False, **kwargs: Any) -> Budget:
    """The highest uniform rank of ``conv`` whose computation reduction rate is at least ``crr`` (or whose
    compression rate is at least ``cr``), sized with :func:`size_model` (``kwargs``: its arguments).

    Rates fall as the rank grows, so the search doubles the rank from 1 until it misses the target, then bisects,
    up to the largest full rank of the replaced layers (above it a fit gains nothing); ``whole_curve`` also
    sizes the ranks of a chart (``Budget.curve``: every rank up to :data:`CURVE_POINTS`, a geometric sample of
    larger ranges such as CP's thousands). A uniform rank sets every ranked hyper-parameter of the type
    (Tucker-2's R₃ and R₄ alike).
    """
    if (crr is None) == (cr is None):
        raise FalconError("give one target: a computation reduction rate (MACs) or a compression rate (params)")
    target = float(crr if crr is not None else cr)
    if not target > 0:
        raise FalconError(f"a target rate is a positive number of times fewer (4 for 4× fewer), got {target:g}")
    ct = get_conv_type(conv)
    if not ct.ranked:
        ranked = ", ".join(c for c in RANKED)
        raise FalconError(f"a target is met by choosing the rank; {conv} has none (use {ranked})")
    if any(n in kwargs for n in ct.rank_names):
        raise FalconError("a target chooses the rank itself; leave the rank out")
    metric = "computation_reduction_rate" if crr is not None else "compression_rate"
    first = size_model(model, conv, **ct.rank_hparams(1), **kwargs)
    entry = model_entry(model, kwargs.get("input_size"))
    sites = {s.name: s for s in _SITES.get((entry, kwargs.get("num_classes"), first.input_size,
                                            conv in entry.drop_shortcuts_for), ())}
    specs = [sites[n].spec for n in first.replaced if n in sites]
    max_rank = max((ct.full_rank(s.N, s.M, s.D) for s in specs), default=1) if specs else 9
    replaced_cost = {"computation_reduction_rate": "macs", "compression_rate": "params"}[metric]
    std_total = getattr(first.standard, replaced_cost)
    std_rows = {u.name: getattr(u, replaced_cost) for u in first.standard.units}
    free = std_total - sum(std_rows.get(n, 0) for n in first.replaced)
    ceiling = std_total / free if free > 0 else float("inf")
    sized = {1: first}

    def at(k: int) -> SizeResult:
        if k not in sized:
            sized[k] = size_model(model, conv, **ct.rank_hparams(k), **kwargs)
        return sized[k]

    rank = _highest_meeting(lambda k: getattr(at(k), metric), target, max_rank)
    notes = []
    if rank == max_rank:
        notes.append(f"rank {max_rank} is the full rank of every replaced layer: the fit is exact there, so no "
                     "higher rank is searched")
    if whole_curve:
        for k in curve_ranks(max_rank, rank):
            at(k)
    curve = [sized[k] for k in sorted(sized)]
    if rank is None:
        return Budget(first.model, conv, metric, target, None, None, [first], max_rank, ceiling, notes, curve)
    neighbours = [at(k) for k in (rank - 1, rank, rank + 1) if 1 <= k <= max_rank]
    return Budget(first.model, conv, metric, target, rank, at(rank), neighbours, max_rank, ceiling, notes,
                  [sized[k] for k in sorted(sized)])


#: A budget's chart sizes every rank up to this many; above, a geometric sample (and the answer's neighbours).
CURVE_POINTS = 48


def curve_ranks(max_rank: int, rank: int | None = None) -> list[int]:
    """The ranks a budget's chart sizes: 1 … max_rank, or a geometric sample of them when there are more than
    :data:`CURVE_POINTS`, with the answer's neighbours."""
    if max_rank <= CURVE_POINTS:
        return list(range(1, max_rank + 1))
    sample = {round(max_rank ** (i / (CURVE_POINTS - 1))) for i in range(CURVE_POINTS)}
    if rank is not None:
        sample |= {k for k in (rank - 1, rank, rank + 1) if 1 <= k <= max_rank}
    return sorted(sample)


def _highest_meeting(rate, target: float, max_rank: int) -> int | None:
    """The highest rank k in 1 … max_rank with ``rate(k) >= target`` (rates fall as k grows; None when rank 1
    misses): doubling from 1, then bisecting: O(log max_rank) sizings instead of one per rank."""
    if rate(1) < target:
        return None
    lo, hi = 1, 2
    while hi <= max_rank and rate(hi) >= target:
        lo, hi = hi, 2 * hi
    hi = min(hi, max_rank + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if rate(mid) >= target else (lo, mid)
    return lo

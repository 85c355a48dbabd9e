"""Sizing a whole model: parameters and MACs before and after replacing its convs."""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_buffer_registration_hook, register_module_parameter_registration_hook

from falcon.convtypes import get_conv_type
from falcon.counting import CONVENTIONS, ModelCount, count_model, no_init_on_meta, on_meta_without_init
from falcon.errors import FalconError
from falcon.models import get_model_entry
from falcon.blocks import ShuffleUnit
from falcon.surgery import (adapt_widths, conv_sites, does_not_run, drop_shortcuts, plan, recording_conv_inputs,
                            replace_convs, sites_from, widen_for_shuffle)


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
            "layers": self.count.table(),
        }


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


def _checked_size(entry, num_classes: int | None, input_size: int | None) -> int:
    """The input size to size ``entry`` at (its default when None); a FalconError for bad sizes or classes."""
    size = entry.input_size if input_size is None else int(input_size)
    if size < 1:
        raise FalconError(f"input size must be positive, got {size}")
    if num_classes is not None and num_classes < 1:
        raise FalconError(f"number of classes must be positive, got {num_classes}")
    return size


def build_sized(model: str, num_classes: int | None, input_size: int | None, conv: str,
                include_stem: bool | None = None, device: str | torch.device = "meta", **hp: Any):
    """Build ``model`` with ``conv`` in place of its replaceable convs (paper layout).

    Returns (module, entry, resolved hparams, replaced site names, unused-param map, input size).
    On the ``meta`` device (the default) nothing is allocated: shapes only.
    """
    entry = get_model_entry(model)
    ct = get_conv_type(conv)
    resolved = ct.resolve(**hp)
    size = _checked_size(entry, num_classes, input_size)
    chw = (entry.in_channels, size, size)
    net = _build_on(entry, num_classes, device)
    dropped = conv in entry.drop_shortcuts_for
    if dropped:
        drop_shortcuts(net)
    if conv == "standard":  # nothing to replace: no need for the forward pass that finds the convs
        return net, entry, resolved, [], {}, chw
    key = (model, num_classes, size, dropped)
    if key not in _SITES:  # the convs and their input sizes depend only on these, not on the conv type
        if len(_SITES) >= 256:
            _SITES.clear()
        _SITES[key] = tuple(conv_sites(net, chw))
    all_sites = list(_SITES[key])
    sites = plan(entry, all_sites, conv, include_stem)
    for site in sites:
        ct.resolve(site.spec, **resolved)  # validate every layer before building any
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
    return net, entry, resolved, [s.name for s in sites], unused, chw


#: (model, classes, input size, shortcuts dropped) -> the model's convs with their input sizes
_SITES: dict[tuple, tuple] = {}


@functools.lru_cache(maxsize=64)
def _standard_count(model: str, num_classes: int | None, input_size: int, convention: str) -> ModelCount:
    """The unmodified model's count (cached: every sizing compares against it)."""
    base, _, _, _, _, chw = build_sized(model, num_classes, input_size, "standard")
    if convention == "thop":  # thop profiles a deep copy (hooks and all): find the convs later, on their own
        return count_model(base, chw, convention)
    try:
        with recording_conv_inputs(base) as seen:  # the same pass finds the convs for the other conv types
            count = count_model(base, chw, convention)
    except RuntimeError as e:
        raise does_not_run(chw, e) from None
    _SITES.setdefault((model, num_classes, input_size, False), tuple(sites_from(base, seen)))
    return count


def size_model(model: str, conv: str = "standard", num_classes: int | None = None, input_size: int | None = None,
               convention: str = "paper", include_stem: bool | None = None, **hp: Any) -> SizeResult:
    """Parameters and MACs of ``model`` with ``conv`` under ``convention``, next to the standard model."""
    if convention not in CONVENTIONS:
        raise FalconError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    t0 = time.perf_counter()
    entry = get_model_entry(model)
    resolved = get_conv_type(conv).resolve(**hp)  # a bad hyper-parameter fails before any forward pass
    size = _checked_size(entry, num_classes, input_size)
    # cached, and computed first: every conv type compares against it, and its pass also finds the convs
    standard = _standard_count(model, num_classes, size, convention)
    if conv == "standard":
        count, chw, replaced, unused = standard, (entry.in_channels, size, size), [], {}
    else:
        net, entry, resolved, replaced, unused, chw = build_sized(model, num_classes, size, conv, include_stem, **hp)
        count = count_model(net, chw, convention, unused)
    notes = []
    if conv in entry.drop_shortcuts_for:
        notes.append("residual shortcuts removed, as the thesis did for this model with this conv type")
    if convention == "paper" and any(unused.values()):
        notes.append(f"includes {sum(unused.values()):,} parameters of the BN that the reference FALCON module "
                     "creates per replaced layer and never uses (convention 'clean' leaves them out)")
    return SizeResult(model, num_classes if num_classes is not None else entry.default_classes, chw[1], conv, resolved,
                      convention, count, standard, replaced, time.perf_counter() - t0, notes)

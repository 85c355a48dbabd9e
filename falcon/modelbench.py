"""Whole-model latency: the original network beside its converted form, per runtime and layout, with the reasons.

:func:`measure_model` answers "if I convert this model, how much faster does it run here, in the runtime I
deploy with?", with the rigour of the layer benchmark (:mod:`falcon.bench`):

1. **Memory guard first.** Before any weight is allocated, the model runs on PyTorch's ``meta`` device at the
   requested batch (shapes only) and the bytes of the largest (input + output) of any unit, the weights and
   their copies (one per model, runtime and layout) are compared with :func:`falcon.bench.memory_budget`;
   a plan that does not fit is refused with a one-line :class:`~falcon.errors.FalconError`.
2. **The models.** The original (``weights``: :func:`falcon.sources.load_model`), and each conversion:
   FALCON/DSConv fitted to the original's kernels with SVD (:func:`falcon.conversion.convert_model`), other
   types built with random weights (:func:`falcon.sizing.build_sized`; fine for timing). Both are timed in
   their deployable form (:func:`falcon.export.deploy_form`): BN folded into the conv before it, FALCON's k
   branches fused into two convolutions; the original's BNs are folded too, so that both sides are what a
   deployment runs.
3. **Runtimes.** ``eager`` (PyTorch, in contiguous and channels-last layouts), ``compile`` (``torch.compile``,
   inductor, with ``freezing``: weights as constants, the CPU inference setting; both layouts) and
   ``onnxruntime`` (``torch.onnx.export`` then ONNX Runtime: CPU execution provider, CUDA's when the device
   is CUDA and ORT has it). A runtime that cannot run here (no C++ compiler for inductor, no onnxruntime
   installed) is one line in the result, not a traceback. Every (model, runtime, layout)'s output is checked
   against eager fp32 of the model it came from on the same input; beyond :data:`falcon.export.PARITY_RTOL`
   (relative) it is reported failed and not timed.
4. **Timing.** ``torch.utils.benchmark.Timer`` with explicit threads (``torch.set_num_threads`` for the whole
   run, and ORT's ``intra_op_num_threads``), CUDA synchronised, under ``torch.inference_mode``; a warm-up per
   entry (compilation happens there), then ``rounds`` rounds visiting every entry once in an order rotated
   each round, a ``blocked_autorange(min_run_time)`` per visit; median and IQR over all timed blocks.
5. **Where the time goes.** ``torch.profiler`` (CPU; CUDA kernels on CUDA) on the eager deployable forms, in
   the layout where the converted model is fastest, with one profiler range per unit: time in replaced convs,
   unreplaced convs, BN/activation/pooling, the classifier (``nn.Linear``) and other (everything outside
   those units: residual additions, flatten, Python). Each replaced layer's measured speedup is put beside
   its MAC ratio; the Amdahl ceiling is the model speedup the MAC counts allow if only the replaced convs
   shrink: ``T / (T − T_replaced + T_replaced / mac_ratio_replaced)`` on the original's profile. The parts are
   checked against the timed median (they must add up to it within 10%).

Every result records device, threads, torch version, each runtime and its version. ``progress(fraction,
message)`` is called as the run advances and ``should_stop()`` asked before each step; a stopped run returns
what it has, marked ``stopped``. This module never imports streamlit.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils import benchmark

from falcon.bench import (MEMORY_FORMATS, _loadavg, _quartiles, device_name, fmt_bytes, memory_budget, resolve_device,
                          retained_memory)
from falcon.blocks import ConvBlock
from falcon.convtypes import CONV_TYPES, get_conv_type, label_of
from falcon.errors import FalconError, one_line
from falcon.limits import float_flag, hparam_flag, int_flag, parse_float, parse_int
from falcon.export import deploy_form, make_portable, parity

RUNTIMES = ("eager", "compile", "onnxruntime")
CATEGORIES = ("replaced_convs", "unreplaced_convs", "bn_act_pool", "classifier", "other")
CATEGORY_LABELS = {"replaced_convs": "replaced convs", "unreplaced_convs": "unreplaced convs",
                   "bn_act_pool": "BN/activation/pooling", "classifier": "classifier", "other": "other"}
#: the breakdown's parts must add up to the timed median within this fraction
BREAKDOWN_TOLERANCE = 0.10
#: interleaved rounds of the whole-model benchmark: 10 keep five separate runs within ±10% on a shared 2-core
#: machine (5 rounds gave ±12–19%; docs/latency.md)
DEFAULT_ROUNDS = 10
WARMUP_CALLS = 3

ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]

_NORM_ACT_POOL = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softmax,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)


# ----------------------------------------------------------------------------------------------
# the models
@dataclass
class PreparedModel:
    """One model to time: the original or a conversion, in its training form (eval mode, CPU)."""

    role: str  # "original" or "converted"
    label: str  # "original", "FALCON (k=1)", ...
    conv: str  # "standard" for the original
    hparams: dict
    module: nn.Module
    replaced: list[str]  # names of the replaced convs (the same names in the original)
    init: str  # "weights" (the original's), "svd", "random"
    macs: int = 0  # one image, convention "clean"
    unit_macs: dict[str, int] = field(default_factory=dict)
    fit_error: float | None = None  # mean relative error of the SVD fits

    def info(self) -> dict:
        return {"role": self.role, "label": self.label, "conv": self.conv, "hparams": dict(self.hparams),
                "replaced_layers": len(self.replaced), "init": self.init, "macs": self.macs,
                "fit_error": self.fit_error}


@dataclass
class PreparedModels:
    name: str
    input_size: tuple[int, int, int]
    weights: str
    original: PreparedModel
    converted: list[PreparedModel]
    eval_data: Any = None
    notes: list[str] = field(default_factory=list)


def parse_conversions(conv: str | Sequence = "falcon", rank: int | None = 1, **hp: Any) -> list[tuple[str, dict]]:
    """``conv`` (a name, or a list of names / (name, hparams) pairs) as (name, resolved hparams) pairs.
    ``rank`` and ``hp`` apply to the names given without hparams, where the type takes them; ``standard``
    (the original, always measured) is dropped, a ``-fused`` suffix too (the converted model is always timed
    in its inference form)."""
    items = [conv] if isinstance(conv, (str, tuple)) else list(conv)
    out: list[tuple[str, dict]] = []
    takes: set[str] = set()  # what the types named take: a hyper-parameter none of them takes is a typo
    for item in items:
        name, given = (item, None) if isinstance(item, str) else (item[0], dict(item[1] or {}))
        name = str(name).strip()
        if name.endswith("-fused"):
            name = name[: -len("-fused")]
        if name == "standard":
            continue
        ct = get_conv_type(name)
        names = {h.name for h in ct.hparams}
        takes |= names
        if given is None:
            given = {k: v for k, v in {"rank": rank, **hp}.items() if k in names and v is not None}
        unknown = set(given) - names
        if unknown:
            raise FalconError(f"{name} has no hyper-parameter {', '.join(sorted(unknown))}; "
                              f"it takes {', '.join(sorted(names)) or 'none'}")
        resolved = ct.resolve(**given)
        if ct.widens(**resolved):
            raise FalconError(f"{ct.display_name(**resolved)} changes the model's layer widths; it can be sized, "
                              "not measured against the original (use width multiplier 1)")
        if (name, resolved) not in out:
            out.append((name, resolved))
    unused = sorted(k for k, v in hp.items() if v is not None and k not in takes)
    if unused:
        raise FalconError(f"no conv type given has a hyper-parameter {', '.join(map(repr, unused))}; they take "
                          f"{', '.join(sorted(takes)) or 'none'}")
    return out


def _chw(entry, input_size) -> tuple[int, int, int]:
    if input_size is None:
        return (entry.in_channels, entry.input_size, entry.input_size)
    if not isinstance(input_size, (tuple, list, torch.Size)):  # H = W: an int (parse_int refuses the rest)
        size = parse_int(input_size, "input_size", "input size")
        return (entry.in_channels, size, size)
    try:
        c, h, w = input_size
    except (TypeError, ValueError):
        raise FalconError(f"input size is H or (C, H, W), got {input_size!r}") from None
    return (parse_int(c, "channels", "input channels"), parse_int(h, "input_size", "input height"),
            parse_int(w, "input_size", "input width"))


def _entry_of(model, input_size=None):
    from falcon.checkpoints import LoadedModel
    from falcon.models import get_model_entry, module_entry

    from falcon.models import ModelEntry

    if isinstance(model, ModelEntry):
        return model
    if isinstance(model, LoadedModel):
        return model.entry
    if isinstance(model, nn.Module):
        return module_entry(model, _chw_plain(input_size))
    return get_model_entry(model)


def _chw_plain(input_size) -> tuple[int, int, int]:
    if input_size is None:
        return (3, 224, 224)
    if isinstance(input_size, int):
        return (3, input_size, input_size)
    return tuple(int(v) for v in input_size)  # type: ignore[return-value]


def _count(module: nn.Module, chw, name: str = "the model") -> tuple[int, dict[str, int]]:
    from falcon.counting import count_model
    from falcon.surgery import FORWARD_ERRORS, does_not_run

    try:
        count = count_model(module, chw, "clean")
    except FORWARD_ERRORS as e:  # an input size the model does not take (too small for its pooling, say)
        raise does_not_run(chw, e, name) from None
    return int(count.macs), {u.name: int(u.macs) for u in count.units}


def prepare_models(model: Any = "vgg19-cifar", weights: str | None = None, conv: str | Sequence = "falcon",
                   rank: int | None = 1, input_size: Any = None, num_classes: int | None = None, seed: int = 0,
                   progress: Callable[[str], None] | None = None, **hp: Any) -> PreparedModels:
    """The original model and each conversion of ``conv`` (see :func:`parse_conversions`), on the CPU, eval mode.

    ``model``: a name or spec (:func:`falcon.models.get_model_entry`), a loaded model
    (:func:`falcon.sources.load_model`) or an ``nn.Module`` (give ``input_size``).
    """
    from falcon.checkpoints import LoadedModel
    from falcon.conversion import convert_model
    from falcon.sizing import build_sized

    conversions = parse_conversions(conv, rank, **hp)
    say = progress or (lambda message: None)
    notes: list[str] = []
    eval_data = None
    if isinstance(model, LoadedModel):
        loaded, entry = model, model.entry
    elif isinstance(model, nn.Module):
        loaded, entry = None, _entry_of(model, input_size)
    else:
        from falcon.sources import load_model

        say(f"loading {getattr(model, 'name', model)}")
        loaded = load_model(model, weights, num_classes)
        entry = loaded.entry
    if loaded is not None:
        if loaded.converted is not None:
            raise FalconError("this model is already converted; measure the original model")
        original_module, source, eval_data = loaded.model.eval(), loaded.weights, loaded.eval_data
        classes = loaded.num_classes
        chw = _chw(entry, input_size) if input_size is not None else loaded.input_size
    else:
        original_module, source, classes = model.eval(), "module", None
        chw = _chw_plain(input_size)
    if source == "random":
        notes.append(f"{entry.name} has random weights (timing only; pass --weights for trained ones)")
    macs, units = _count(original_module, chw, entry.name)
    original = PreparedModel("original", "original", "standard", {}, original_module, [], "weights", macs, units)
    converted = []
    for name, resolved in conversions:
        ct = get_conv_type(name)
        label = label_of(name, resolved)
        say(f"converting to {label}")
        if ct.fittable:
            target = loaded if loaded is not None else original_module
            kwargs = {} if loaded is not None else {"input_size": chw, "entry": entry}
            if loaded is not None and input_size is not None:
                kwargs["input_size"] = chw
            done = convert_model(target, name, ct.rank_hparams(resolved), "svd", seed=seed, **kwargs)
            module, replaced, init = done.model, [layer.name for layer in done.layers], "svd"
            errors = [layer.relative_error for layer in done.layers]
            fit_error = sum(errors) / len(errors) if errors else None
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                built = build_sized(original_module if entry.family == "module" else entry, classes, chw[1], name,
                                    device="cpu", **resolved)
            module, replaced, init, fit_error = built[0], list(built[3]), "random", None
            if built[6]:
                notes.append(f"{label}: {len(built[6])} conv(s) kept standard ({next(iter(built[6].values()))})")
            if name in entry.drop_shortcuts_for:
                notes.append(f"{label}: residual shortcuts removed, as the thesis did for {entry.name}")
            notes.append(f"{label} is not fittable to trained kernels: built with random weights (timing only)")
        module = module.eval()
        macs, units = _count(module, chw)
        converted.append(PreparedModel("converted", label, name, dict(resolved), module, replaced, init, macs, units,
                                       fit_error))
    return PreparedModels(entry.name, tuple(chw), source, original, converted, eval_data, notes)


def prepared_from_modules(name: str, original: nn.Module, converted: Sequence[tuple[str, dict, nn.Module, list[str]]],
                          input_size: Sequence[int], weights: str = "module", init: str = "weights") -> PreparedModels:
    """Models built elsewhere (a fine-tuned conversion, say) as :func:`measure_model`'s ``prepared``.

    ``converted``: ``(conv, hparams, module, replaced layer names)`` per conversion; ``input_size``: (C, H, W).
    The modules are put in eval mode on the CPU (as :func:`prepare_models` gives them)."""
    chw = tuple(int(v) for v in input_size)
    if len(chw) != 3:
        raise FalconError(f"input size is (C, H, W), got {input_size!r}")
    original = original.cpu().eval()
    macs, units = _count(original, chw)
    orig = PreparedModel("original", "original", "standard", {}, original, [], "weights", macs, units)
    out = []
    for conv, hparams, module, replaced in converted:
        module = module.cpu().eval()
        macs, units = _count(module, chw)
        out.append(PreparedModel("converted", label_of(conv, hparams), conv, dict(hparams), module, list(replaced),
                                 init, macs, units))
    return PreparedModels(name, chw, weights, orig, out)


# ----------------------------------------------------------------------------------------------
# memory guard (meta device: shapes only)
@dataclass(frozen=True)
class MemoryPlan:
    input_bytes: int
    weight_bytes: int
    activation_bytes: int  # the largest (input + output) of one unit
    copies: int  # model instances held at once (per model, runtime and layout, plus the references)
    conv_weight_bytes: int = 0  # the 4-D (conv) weights among weight_bytes
    conv_copies: int = 0  # extra copies of the conv weights only (a second eager layout)

    @property
    def total_bytes(self) -> int:
        # the input per layout, every weight copy, the working set of a forward pass (an upper bound: 3×)
        return (3 * self.input_bytes + self.copies * self.weight_bytes + self.conv_copies * self.conv_weight_bytes
                + 3 * self.activation_bytes)


def plan_memory(model: Any, batch_size: int, input_size: Any = None, num_classes: int | None = None,
                copies: int = 1, conv_copies: int = 0) -> MemoryPlan:
    """What measuring ``model`` at ``batch_size`` holds at its peak, from a forward pass on ``meta``."""
    from falcon.checkpoints import LoadedModel
    from falcon.counting import shape_only
    from falcon.sizing import build_sized
    from falcon.surgery import FORWARD_ERRORS, does_not_run

    entry = _entry_of(model, input_size)
    if isinstance(model, nn.Module) and not isinstance(model, LoadedModel):
        chw = _chw_plain(input_size)
        meta = copy.deepcopy(model).to("meta")
    else:
        chw = _chw(entry, input_size)
        if isinstance(model, LoadedModel):
            num_classes = model.num_classes
        if chw[1] != chw[2]:
            raise FalconError(f"{entry.name} takes square inputs; got {chw[1]}×{chw[2]}")
        meta = build_sized(entry, num_classes, chw[1], "standard", device="meta")[0]
    weights = sum(p.numel() * p.element_size() for p in meta.parameters()) + \
        sum(b.numel() * b.element_size() for b in meta.buffers())
    peak = [0]

    def hook(module, inputs, output):
        ins = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
        outs = output.numel() * output.element_size() if isinstance(output, torch.Tensor) else 0
        peak[0] = max(peak[0], ins + outs)

    handles = [m.register_forward_hook(hook) for m in meta.modules() if not any(m.children())]
    x = torch.empty((batch_size, *chw), device="meta")
    try:
        with torch.no_grad(), shape_only(meta):
            meta(x)
    except FORWARD_ERRORS as e:
        raise does_not_run(chw, e, entry.name) from None
    finally:
        for h in handles:
            h.remove()
    conv_weights = sum(p.numel() * p.element_size() for p in meta.parameters() if p.dim() == 4)
    return MemoryPlan(x.numel() * 4, weights, peak[0], copies, conv_weights, conv_copies)


# ----------------------------------------------------------------------------------------------
# runtimes
@dataclass
class RuntimeInfo:
    name: str
    available: bool
    version: str | None = None
    reason: str = ""  # one line when unavailable
    options: dict = field(default_factory=dict)


def _line(error: BaseException | str, limit: int = 180) -> str:
    return one_line(error, limit, empty=type(error).__name__)


def runtime_info(name: str, device: torch.device) -> RuntimeInfo:
    """Whether ``name`` can run on ``device`` here, its version, or the one-line reason it cannot."""
    if name == "eager":
        return RuntimeInfo("eager", True, f"torch {torch.__version__}")
    if name == "compile":
        version = f"torch {torch.__version__} inductor"
        if not hasattr(torch, "compile"):
            return RuntimeInfo(name, False, version, f"torch.compile unavailable: torch {torch.__version__} has none")
        try:
            from torch._dynamo.eval_frame import is_dynamo_supported

            if not is_dynamo_supported():
                return RuntimeInfo(name, False, version, f"torch.compile unavailable: not supported on Python "
                                                         f"{sys.version.split()[0]} / this platform")
        except Exception as e:  # noqa: BLE001
            return RuntimeInfo(name, False, version, f"torch.compile unavailable: {_line(e)}")
        if device.type == "cuda":
            try:
                from torch.utils._triton import has_triton

                if not has_triton():
                    return RuntimeInfo(name, False, version, "torch.compile unavailable: inductor on CUDA needs "
                                                             "triton, which is not installed")
            except ImportError:
                pass
        else:
            compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
            if not any(c and shutil.which(c) for c in compilers):
                return RuntimeInfo(name, False, version, "torch.compile unavailable: inductor needs a C++ compiler "
                                                         "(g++ or clang++) on PATH, and none was found")
        return RuntimeInfo(name, True, version, options={"backend": "inductor", "freezing": True})
    if name == "onnxruntime":
        try:
            import onnx  # noqa: F401
            import onnxruntime as ort
        except ImportError as e:
            missing = getattr(e, "name", None) or "onnxruntime"
            return RuntimeInfo(name, False, None, f"onnxruntime unavailable: the {missing} package is not installed "
                                                  "(pip install 'falcon-explorer[onnx]')")
        providers = ort.get_available_providers()
        if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
            return RuntimeInfo(name, False, f"onnxruntime {ort.__version__}",
                               "onnxruntime unavailable on CUDA: this onnxruntime has no CUDAExecutionProvider "
                               "(install onnxruntime-gpu)")
        provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        import onnx as _onnx

        return RuntimeInfo(name, True, f"onnxruntime {ort.__version__}",
                           options={"provider": provider, "onnx": _onnx.__version__, "exporter": "torch.onnx.export "
                                    "(TorchScript-based, dynamo=False)", "graph_optimization": "ORT_ENABLE_ALL"})
    raise FalconError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")


def parse_runtimes(runtimes: str | Iterable[str]) -> list[str]:
    names = [r.strip() for r in (runtimes.split(",") if isinstance(runtimes, str) else runtimes) if str(r).strip()]
    if not names:
        raise FalconError("give at least one runtime: " + ", ".join(RUNTIMES))
    for r in names:
        if r not in RUNTIMES:
            raise FalconError(f"unknown runtime {r!r}; choose from {', '.join(RUNTIMES)}")
    return list(dict.fromkeys(names))


def _layouts(memory_format: str) -> list[str]:
    if memory_format in ("auto", "both"):
        return list(MEMORY_FORMATS)
    if memory_format not in MEMORY_FORMATS:
        raise FalconError(f"memory format must be auto, both, {' or '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    return [memory_format]


# ----------------------------------------------------------------------------------------------
# results
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


def _weight_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers a forward pass reads (the deployable form's weights)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen or t.is_meta:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _why_above(result: "ModelBenchResult", c: "Conversion") -> str:
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


# ----------------------------------------------------------------------------------------------
# the tasks
@dataclass(eq=False)
class _Task:
    model: PreparedModel
    runtime: str
    layout: str
    call: Callable[[], Any]
    timing: Timing
    times: list[float] = field(default_factory=list)
    timer: benchmark.Timer | None = None
    module: nn.Module | None = None  # eager: the deployable module (profiled)
    x: torch.Tensor | None = None

    @property
    def name(self) -> str:
        return f"{self.model.label}, {self.runtime} ({self.layout})"


def _ort_call(session, x: torch.Tensor, device: torch.device):
    import numpy as np

    name = session.get_inputs()[0].name
    if device.type == "cuda":  # inputs and outputs stay on the GPU (IO binding): no host copies timed
        out_meta = session.get_outputs()[0]
        binding = session.io_binding()
        x = x.contiguous()
        binding.bind_input(name, "cuda", device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(out_meta.name, "cuda", device.index or 0)

        def call():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding.copy_outputs_to_cpu()[0]
        return call
    feed = {name: x.detach().cpu().contiguous().numpy()}
    return lambda: session.run(None, feed)[0]


def _shared_copy(module: nn.Module, keep_4d: bool = True) -> nn.Module:
    """A copy of ``module``'s structure sharing its tensors (``keep_4d=False``: all but the 4-D ones, which a
    change of memory layout re-lays out), so that several runtimes and layouts do not each hold the weights."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers()) if keep_4d or t.dim() != 4}
    return copy.deepcopy(module, memo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# the breakdown
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
    from torch.profiler import ProfilerActivity, profile

    replaced = set(replaced)
    units = [(name, m, cat) for name, m in _profile_units(module) if (cat := _category(name, m, replaced))]
    cats = {name: cat for name, _, cat in units}
    fast = getattr(torch._C._profiler, "_RecordFunctionFast", None)  # a C++ range: ~1 µs, not a dispatcher op
    ranged = fast if fast is not None else record_function

    def attach() -> list:
        """Each unit's forward inside a profiler range (an instance attribute: no module hooks, whose slow
        call path costs tens of µs per unit on a small CPU)."""
        saved = []
        for name, m, cat in units:
            saved.append((m, m.__dict__.get("forward")))
            forward = m.forward

            def wrapped(*args, _forward=forward, _label=f"falcon::{cat}::{name}", **kwargs):
                with ranged(_label):
                    return _forward(*args, **kwargs)

            m.forward = wrapped
        return saved

    def detach(saved: list) -> None:
        for m, previous in saved:
            if previous is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = previous

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    cuda = device.type == "cuda"
    chunks = max(min(chunks, iterations // 2), 1)
    per_chunk = max(iterations // chunks, 1)
    passes: list[dict[str, Any]] = []  # per profiled pass: total µs and µs per unit
    plain: list[float] = []
    handles: list = []
    try:
        with torch.inference_mode():
            for _ in range(max(chunks, 1)):
                for _ in range(per_chunk):  # unprofiled passes (no hooks either)
                    _sync(device)
                    t0 = time.perf_counter()
                    module(x)
                    _sync(device)
                    plain.append((time.perf_counter() - t0) * 1e3)
                handles = attach()
                with profile(activities=activities, record_shapes=False, with_stack=False,
                             profile_memory=False) as prof:
                    for _ in range(per_chunk):
                        with record_function("falcon::pass"):
                            module(x)
                            _sync(device)
                detach(handles)
                handles = []
                passes.extend(_passes_of(prof.events(), cuda))
    finally:
        detach(handles)
    event_us, range_us = (0.0, 0.0) if cuda else _calibrate(ranged, activities)
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
    per_cat = {c: 0.0 for c in CATEGORIES}
    for name, ms in per_unit.items():
        per_cat[cats.get(name) or "other"] += ms
    per_cat["other"] = max(total - sum(v for c, v in per_cat.items() if c != "other"), 0.0)
    overhead = (sum(p["all_events"] for p in kept) * event_us + sum(len(p["units"]) + 1 for p in kept) * range_us) / n / 1e3
    return Profile(per_cat, per_unit, total, _iqr_mean(plain), len(passes), overhead)


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
    from torch.profiler import profile

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
        with profile(activities=activities, record_shapes=False, with_stack=False, profile_memory=False):
            prof_ops.append(ops())
            prof_ranges.append(ranges(wrapped))
    event_us = max(min(prof_ops) - min(plain_ops), 0.0) / calls * 1e6
    range_us = max(min(prof_ranges) - min(plain_calls), 0.0) / calls * 1e6
    return event_us, range_us


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


def _recategorize(profile: Profile, module: nn.Module, replaced: Iterable[str]) -> dict[str, float]:
    """The categories of a profile for another set of replaced convs (the units' times do not change)."""
    replaced = set(replaced)
    kinds = {name: _category(name, m, replaced) for name, m in _profile_units(module)}
    cats = {c: 0.0 for c in CATEGORIES}
    for name, ms in profile.units.items():
        cats[kinds.get(name) or "other"] += ms
    cats["other"] = max(profile.total_ms - sum(v for c, v in cats.items() if c != "other"), 0.0)
    return cats


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


# ----------------------------------------------------------------------------------------------
# the measurement
def measure_model(
    model: Any = "vgg19-cifar",
    weights: str | None = None,
    conv: str | Sequence = "falcon",
    rank: int | None = 1,
    batch_size: int = 1,
    input_size: Any = None,
    runtimes: str | Sequence[str] = ("eager",),
    memory_format: str = "auto",
    threads: int | None = None,
    device: str = "auto",
    rounds: int = DEFAULT_ROUNDS,
    min_run_time: float = 0.2,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    breakdown: bool = True,
    num_classes: int | None = None,
    seed: int = 0,
    memory_budget_bytes: int | None = None,
    retain_memory: bool = True,
    compile_memory_format: str | None = None,
    prepared: PreparedModels | None = None,
    **hp: Any,
) -> ModelBenchResult:
    """Time ``model`` and its conversion(s) to ``conv`` (rank ``rank``; other hyper-parameters in ``hp``)
    in each of ``runtimes`` (see the module docstring). ``conv`` may be a list (names or (name, hparams)
    pairs): every conversion is measured against the same original, in the same interleaved rounds.

    ``threads``: CPU threads (default ``torch.get_num_threads()``), set for the run and restored after.
    ``memory_format``: ``auto``/``both`` (contiguous and channels_last for eager and compile), or one of them.
    ``compile_memory_format``: the layouts for ``compile`` if not those of ``memory_format`` (compiling is the
    slow part of a run). ``breakdown``: profile where the time goes (eager). ``memory_budget_bytes`` overrides
    the memory budget. ``prepared``: models already built (:func:`prepared_from_modules`, e.g. a fine-tuned
    conversion) instead of converting ``model`` here; ``conv``/``rank``/``hp`` are then ignored.
    """
    t_start = time.perf_counter()
    parse_int(batch_size, "batch_size", "batch size")
    parse_int(rounds, "rounds")
    parse_float(min_run_time, "min_run_time", "min run time")
    threads = torch.get_num_threads() if threads is None else parse_int(threads, "threads")
    dev = resolve_device(device)
    layouts = _layouts(memory_format)
    runtime_layouts = {"eager": layouts, "onnxruntime": ["contiguous"],
                       "compile": _layouts(compile_memory_format) if compile_memory_format else layouts}
    wanted = parse_runtimes(runtimes)
    if prepared is not None:
        model, input_size = prepared.original.module, prepared.input_size
        conversions = [(c.conv, dict(c.hparams)) for c in prepared.converted]
    else:
        conversions = parse_conversions(conv, rank, **hp)
    infos = [runtime_info(r, dev) for r in wanted]
    available = [i.name for i in infos if i.available]

    # 1. memory guard, before anything is allocated
    # per model: its training form and deployable form, one per compiled layout (frozen weights), one in ONNX
    # Runtime, and the conv weights once more per further eager layout (the other tensors are shared); an upper
    # bound: converted models are smaller
    per_instance = 2 + (len(runtime_layouts["compile"]) if "compile" in available else 0) + ("onnxruntime" in available)
    n_all = 1 + len(conversions)
    plan = plan_memory(model, batch_size, input_size, num_classes, n_all * per_instance,
                       n_all * (len(layouts) - 1 if "eager" in available else 0))
    budget, source = (memory_budget_bytes, "given budget") if memory_budget_bytes is not None else memory_budget(dev)
    if budget is not None and plan.total_bytes > budget:
        raise FalconError(
            f"not enough memory: measuring {_entry_of(model, input_size).name} at batch {batch_size} needs about "
            f"{fmt_bytes(plan.total_bytes)} (largest activations {fmt_bytes(plan.activation_bytes)} per pass, weights "
            f"{fmt_bytes(plan.weight_bytes)} × {plan.copies} copies); the budget is {fmt_bytes(budget)} ({source}); "
            "use a smaller batch or input size")

    per_model = sum(len(runtime_layouts[r]) for r in available)
    n_models = 1 + len(conversions)
    # load, a deployable form per model, per task: prepare + warm-up + rounds; the breakdowns
    total_steps = [1 + n_models + n_models * per_model * (rounds + 2) + (2 * len(conversions) if breakdown else 0)]

    done = [0]

    def tick(message: str, steps: int = 1) -> None:
        done[0] += steps
        if progress is not None:
            progress(min(done[0] / max(total_steps[0], 1), 1.0), message)

    result: ModelBenchResult | None = None
    saved_threads = torch.get_num_threads()
    saved_cudnn = torch.backends.cudnn.benchmark
    with ExitStack() as stack:
        torch.set_num_threads(threads)
        stack.callback(torch.set_num_threads, saved_threads)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
            stack.callback(setattr, torch.backends.cudnn, "benchmark", saved_cudnn)
        retained = stack.enter_context(retained_memory(retain_memory and dev.type == "cpu"))
        if "compile" in available:
            from torch import _dynamo as dynamo
            from torch._inductor import config as inductor_config

            stack.enter_context(inductor_config.patch(freezing=True))
            limit = 8 * (1 + len(conversions)) * len(runtime_layouts["compile"]) + 8
            key = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
            stack.enter_context(dynamo.config.patch(**{key: max(limit, 8)},
                                                           accumulated_cache_size_limit=max(256, 4 * limit)))

        def stopped() -> bool:
            return should_stop is not None and bool(should_stop())

        if prepared is None:
            prepared = prepare_models(model, weights, conversions, None, input_size, num_classes, seed,
                                      progress=lambda m: tick(m, 0))
        tick(f"{prepared.name} loaded and converted")
        cpu_count = os.cpu_count()
        result = ModelBenchResult(
            model=prepared.name, weights=prepared.weights, input_size=list(prepared.input_size), batch_size=batch_size,
            device=dev.type if dev.type == "cpu" else str(dev), device_name=device_name(dev), threads=threads,
            torch_version=torch.__version__, cpu_count=cpu_count, rounds=rounds, min_run_time=min_run_time,
            memory_formats=layouts, runtimes=infos, original_macs=prepared.original.macs,
            memory_estimate_bytes=plan.total_bytes, memory_budget=f"{fmt_bytes(budget)} ({source})" if budget else source,
            allocator="retain" if retained else "default", notes=list(prepared.notes),
            cache_bytes=last_level_cache_bytes(dev))
        for info in infos:
            if not info.available:
                result.notes.append(info.reason)
        load_before = _loadavg()
        if dev.type == "cpu" and load_before is not None and cpu_count and load_before > cpu_count - threads + 0.9:
            result.notes.append(f"the machine was busy (load average {load_before:g} on {cpu_count} CPUs) before "
                                f"measuring with {threads} thread{'s' if threads != 1 else ''}: timings are noisy")
        for c in prepared.converted:
            result.conversions.append(Conversion(c.label, c.conv, c.hparams, c.macs,
                                                 prepared.original.macs / c.macs if c.macs else float("nan"),
                                                 len(c.replaced), c.init, c.fit_error))
        models = [prepared.original, *prepared.converted]
        gen = torch.Generator().manual_seed(seed)
        base = torch.randn((batch_size, *prepared.input_size), generator=gen)
        inputs = {lay: base.to(dev).contiguous(memory_format=MEMORY_FORMATS[lay]) for lay in MEMORY_FORMATS}
        reference_input = inputs["contiguous"]

        # 2. the deployable forms and the tasks
        tasks: list[_Task] = []
        for pm in models:
            if stopped():
                result.stopped = True
                break
            module = (pm.module if dev.type == "cpu" else copy.deepcopy(pm.module).to(dev)).eval()  # the caller's stays
            with torch.inference_mode():
                reference = module(reference_input).detach().float().cpu()
            try:
                deployed, dinfo = deploy_form(module, reference_input)
                portable = None
                if any(r in available for r in ("compile", "onnxruntime")):
                    portable = make_portable(_shared_copy(deployed))
            except FalconError as e:
                result.notes.append(f"{pm.label}: {e}")
                continue
            finally:
                pm.module = module = None  # the training form is not needed any more (memory: big models)
            dinfo_dict = {**dinfo.as_dict(), "weight_bytes": _weight_bytes(deployed)}
            if pm.role == "original":
                result.original_deploy = dinfo_dict
            else:
                next(c for c in result.conversions if c.label == pm.label).deploy = dinfo_dict
            tick(f"{pm.label}: deployable form ({dinfo.describe()})")
            for runtime in available:
                for layout in runtime_layouts[runtime]:
                    if stopped():
                        result.stopped = True
                        break
                    timing = Timing(pm.label, pm.role, runtime, layout)
                    x = inputs[layout]
                    t0 = time.perf_counter()
                    task_module = None
                    try:
                        if runtime == "eager":
                            task_module = (deployed if layout == runtime_layouts["eager"][-1] else
                                           _shared_copy(deployed, keep_4d=False))
                            task_module = task_module.to(memory_format=MEMORY_FORMATS[layout])
                            call = (lambda m, x: (lambda: m(x)))(task_module, x)
                        elif runtime == "compile":
                            tick(f"compiling {pm.label} ({layout})", 0)
                            m = copy.deepcopy(portable).to(memory_format=MEMORY_FORMATS[layout])
                            compiled = torch.compile(m, backend="inductor")
                            call = (lambda m, x: (lambda: m(x)))(compiled, x)
                        else:
                            from falcon.export import export_onnx, onnx_session

                            tick(f"exporting {pm.label} to ONNX", 0)
                            data = export_onnx(_shared_copy(portable).cpu(), reference_input.cpu(),
                                               dynamic_batch=False)
                            session = onnx_session(data, threads, dev)
                            del data
                            call = _ort_call(session, x, dev)
                        with torch.inference_mode():
                            out = call()  # compile: the compilation happens here
                            _sync(dev)
                        check = parity(reference, out)
                    except Exception as e:  # noqa: BLE001 - a runtime failing on this model: one line
                        if isinstance(e, KeyboardInterrupt):
                            raise
                        timing.status, timing.message = "failed", _line(f"{type(e).__name__}: {e}")
                        check = None
                    timing.prepare_seconds = time.perf_counter() - t0
                    if check is not None:
                        timing.max_abs_error, timing.relative_error = check.max_abs_error, check.relative_error
                        if not check.ok:
                            timing.status = "failed"
                            timing.message = f"output differs from eager fp32 ({check.describe()}); not timed"
                    result.timings.append(timing)
                    task = _Task(pm, runtime, layout, call if timing.status == "ok" else (lambda: None), timing,
                                 module=task_module, x=x)
                    if timing.status == "ok":
                        task.timer = benchmark.Timer(stmt="call()", globals={"call": task.call}, num_threads=threads,
                                                     label=prepared.name, sub_label=f"{runtime} {layout}",
                                                     description=pm.label)
                        tasks.append(task)
                    tick(f"prepared {task.name}")
                if result.stopped:
                    break
            if result.stopped:
                break

        # 3. warm-up, then interleaved rounds
        with torch.inference_mode():
            for task in tasks:
                if result.stopped or stopped():
                    result.stopped = True
                    break
                task.timer.timeit(WARMUP_CALLS)
                tick(f"warm-up {task.name}")
            for r in range(rounds):
                if result.stopped:
                    break
                shift = r % max(len(tasks), 1)
                for task in tasks[shift:] + tasks[:shift]:
                    if stopped():
                        result.stopped = True
                        break
                    m = task.timer.blocked_autorange(min_run_time=min_run_time)
                    task.times.extend(m.times)
                    task.timing.calls_per_sample = m.number_per_run
                    tick(f"round {r + 1}/{rounds}: {task.name}")
        for task in tasks:
            if task.times:
                q1, med, q3 = _quartiles(task.times)
                task.timing.median_ms, task.timing.iqr_ms = med * 1e3, (q3 - q1) * 1e3
                task.timing.min_ms, task.timing.samples = min(task.times) * 1e3, len(task.times)
            elif result.stopped:
                task.timing.status = "stopped"
        _speedups(result)

        # 4. where the time goes
        if breakdown and not result.stopped:
            profiles: dict[str, Profile] = {}
            for pm, c in zip(prepared.converted, result.conversions):
                eager = [t for t in tasks if t.runtime == "eager" and t.model is pm and t.timing.median_ms]
                if not eager or stopped():
                    result.stopped = result.stopped or stopped()
                    break
                best = min(eager, key=lambda t: t.timing.median_ms)
                orig = next((t for t in tasks if t.runtime == "eager" and t.model is prepared.original
                             and t.layout == best.layout and t.timing.median_ms), None)
                if orig is None:
                    continue
                tick(f"profiling {pm.label} ({best.layout})", 0)
                c.breakdown = _breakdown(orig, best, pm, prepared.original, dev,
                                         min(max(rounds * min_run_time, 0.2), 2.0), profiles)
                eager_speedup = orig.timing.median_ms / best.timing.median_ms
                c.breakdown.explanation = _explain(get_conv_type(pm.conv).label, eager_speedup, c.mac_ratio,
                                                   c.breakdown)
                if not c.breakdown.adds_up:
                    result.notes.append(
                        f"{pm.label}: the breakdown's parts add up to {c.breakdown.original_ratio:.0%} (original) and "
                        f"{c.breakdown.converted_ratio:.0%} (converted) of the timed medians, beyond ±"
                        f"{BREAKDOWN_TOLERANCE:.0%} (profiler overhead, or the machine changed speed)")
                tick(f"profiled {pm.label}", 2)
        result.load_average = None if load_before is None else [load_before, _loadavg()]
        tasks = []
        if "compile" in available:  # the compiled graphs hold frozen copies of every model's weights: let them go
            import gc

            from torch import _dynamo as dynamo

            dynamo.reset()
            try:  # inductor keeps the compiled modules (and their frozen constants) in its code cache
                from torch._inductor.utils import clear_inductor_caches

                clear_inductor_caches()
            except ImportError:  # pragma: no cover - older torch
                pass
            gc.collect()
    if result is None:  # pragma: no cover - prepare_models raised
        raise FalconError("nothing was measured")
    result.seconds = time.perf_counter() - t_start
    if progress is not None:
        progress(1.0, "stopped" if result.stopped else "done")
    return result


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


# ----------------------------------------------------------------------------------------------
# command line: python -m falcon.modelbench (and the helpers for `python -m falcon bench --model`)
def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The flags only the whole-model benchmark has (``--model``, ``--weights``, ``--runtime``, ...)."""
    from falcon.models import MODEL_HELP

    parser.add_argument("--model", default=None, help="measure a whole model: " + MODEL_HELP)
    parser.add_argument("--weights", default=None,
                        help="pretrained, random, or a checkpoint file (default: digits-vgg's bundled weights, "
                             "random init for the others: fine for timing)")
    parser.add_argument("--num-classes", type=int_flag("num_classes"), default=None, help="classes of the model (default: its own)")
    parser.add_argument("--runtime", default="eager", metavar="LIST",
                        help=f"comma-separated runtimes: {', '.join(RUNTIMES)} or all (default eager)")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the profile of where the time goes")


def main_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every flag of ``python -m falcon.modelbench`` on ``parser``."""
    from falcon.convtypes import all_hparams

    add_model_args(parser)
    parser.set_defaults(model="vgg19-cifar")
    parser.add_argument("--conv", default="falcon", metavar="TYPES",
                        help=f"conv type(s) to convert to, comma-separated: {', '.join(CONV_TYPES)} (default falcon)")
    for h in all_hparams().values():
        parser.add_argument(h.flag, dest=h.name, type=hparam_flag(h), default=None,
                            help=f"{h.help} (default {h.default})")
    parser.add_argument("--batch-size", "-B", type=int_flag("batch_size"), default=1, help="batch size (default 1)")
    parser.add_argument("--input-size", "-H", type=int_flag("input_size"), default=None, help="input height = width (default: the model's)")
    parser.add_argument("--memory-format", default="auto", choices=("auto", "both", *MEMORY_FORMATS),
                        help="eager/compile layouts: auto = both (default)")
    parser.add_argument("--threads", type=int_flag("threads"), default=None, help="CPU threads (default: torch.get_num_threads())")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = CUDA if available")
    parser.add_argument("--rounds", type=int_flag("rounds"), default=DEFAULT_ROUNDS, help=f"interleaved rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--min-run-time", type=float_flag("min_run_time"), default=0.2, help="seconds per entry and round (default 0.2)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return parser


def _conv_from_args(args: argparse.Namespace) -> list[tuple[str, dict]]:
    from falcon.convtypes import all_hparams

    text = getattr(args, "conv", None) or "falcon"
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    given = {h.name: getattr(args, h.name, None) for h in all_hparams().values()}
    hp = {k: v for k, v in given.items() if v is not None}
    rank = hp.pop("rank", None)
    out = parse_conversions(names, rank if rank is not None else 1, **hp)
    if not out:
        raise FalconError("--conv needs a conv type to convert to (standard is the original, always measured)")
    return out


def _progress_line(fraction: float, message: str) -> None:
    sys.stderr.write(f"\r[{fraction:4.0%}] {message:<70.70}")
    if fraction >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()


def print_report(result: ModelBenchResult, out=None) -> None:
    from falcon.cli.common import print_table

    out = out or sys.stdout
    c, h, w = result.input_size
    print(f"{result.model} ({result.weights}), input {c}×{h}×{w}, batch {result.batch_size}", file=out)
    threads = f"{result.threads} thread" + ("s" if result.threads != 1 else "")
    rts = "; ".join(f"{i.name}: {i.version}" for i in result.runtimes if i.available)
    print(f"device {result.device} ({result.device_name}), {threads}, torch {result.torch_version}; {rts}", file=out)
    print_table(result.rows(), ["model", "runtime", "layout", "median_ms", "iqr_ms", "speedup", "rel_error", "status"],
                out=out)
    for conv in result.conversions:
        b = conv.breakdown
        if b is None:
            continue
        overhead = ", ".join(f"{v:.2f} ms" for v in b.overhead_ms.values())
        print(f"\nwhere the time goes, eager {b.layout}, ms per pass ({b.profiler}, {b.iterations} passes; profiler "
              f"overhead {overhead or '-'} calibrated and removed):", file=out)
        rows = [{"part": CATEGORY_LABELS[k], "original": b.original_ms[k], conv.label: b.converted_ms[k]}
                for k in CATEGORIES]
        rows.append({"part": "sum of the parts", "original": b.original_total_ms, conv.label: b.converted_total_ms})
        rows.append({"part": "unprofiled passes", "original": b.original_measured_ms or float("nan"),
                     conv.label: b.converted_measured_ms or float("nan")})
        rows.append({"part": "timed rounds, median", "original": b.original_timed_ms or float("nan"),
                     conv.label: b.converted_timed_ms or float("nan")})
        print_table(rows, ["part", "original", conv.label], out=out)
        verdict = "within" if b.adds_up else "NOT within"
        print(f"parts / unprofiled passes: {b.original_ratio:.2f} (original), {b.converted_ratio:.2f} (converted): "
              f"{verdict} ±{BREAKDOWN_TOLERANCE:.0%}", file=out)
        if b.layers:
            print_table([{"layer": lt.name, "original_ms": lt.original_ms, "converted_ms": lt.converted_ms,
                          "speedup": lt.speedup if lt.speedup is not None else "-",
                          "mac_ratio": lt.mac_ratio if lt.mac_ratio is not None else "-"} for lt in b.layers],
                        out=out)
        if b.explanation:
            print(f"why: {b.explanation}", file=out)
    print("", file=out)
    for line in result.summary_lines():
        print(line, file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)
    from falcon.reliability import assess_model

    for reason in assess_model(result).reasons:
        print(f"unreliable: {reason}", file=out)
    if result.stopped:
        print("stopped before the end: results so far", file=out)


def run(args: argparse.Namespace) -> int:
    """Run the whole-model benchmark from parsed flags (:func:`main_args`, or ``bench``'s with ``--model``)."""
    import signal
    import threading

    runtimes = getattr(args, "runtime", "eager") or "eager"
    runtimes = list(RUNTIMES) if runtimes == "all" else parse_runtimes(runtimes)
    show = not getattr(args, "quiet", False) and sys.stderr.isatty()
    interrupted: list[bool] = []

    def on_sigint(signum, frame):  # first Ctrl-C: stop after the current step and report; second: abort
        interrupted.append(True)
        signal.signal(signal.SIGINT, previous)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    memory_format = getattr(args, "memory_format", "auto")
    try:
        result = measure_model(
            model=args.model, weights=getattr(args, "weights", None), conv=_conv_from_args(args),
            batch_size=getattr(args, "batch_size", 1) or 1, input_size=getattr(args, "input_size", None),
            runtimes=runtimes, memory_format=memory_format, threads=getattr(args, "threads", None),
            device=getattr(args, "device", "auto"), rounds=getattr(args, "rounds", None) or DEFAULT_ROUNDS,
            min_run_time=getattr(args, "min_run_time", 0.2), breakdown=getattr(args, "breakdown", True),
            num_classes=getattr(args, "num_classes", None), progress=_progress_line if show else None,
            should_stop=lambda: bool(interrupted))
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if getattr(args, "json", False):
        from falcon.reliability import assess_model

        json.dump({**result.as_dict(), **assess_model(result).as_dict()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(result)
    return 0


def main(argv: list[str] | None = None) -> int:
    from falcon.cli import _Parser  # argparse's errors in one line, as python -m falcon's

    parser = _Parser(prog="python -m falcon.modelbench",
                     description="Whole-model latency: the original vs its converted form, per runtime, with where "
                                 "the time goes.")
    main_args(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FalconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

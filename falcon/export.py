"""The deployable form of a model, and writing it out (ONNX, TorchScript) with a parity check.

:func:`deploy_form` is what a user would run in production, and what :mod:`falcon.modelbench` times:

* every BatchNorm2d that directly follows a conv (the conv's output is the BN's input, each called once)
  is folded into that conv: a plain ``nn.Conv2d`` through ``torch.nn.utils.fusion.fuse_conv_bn_eval``, a
  block of a conv type with a deploy rule by its registry entry (:meth:`falcon.convtypes.ConvType.deploy`:
  FALCON's k branches fused into two convolutions, the BN in the grouped conv; DSConv's into the pointwise
  conv of each branch; Tucker-2's and CP's into the last 1×1 conv, spatial low-rank's into the 1×D conv);
  a block without one is looked into, its convs folded one by one. The BN becomes ``nn.Identity``. The same
  happens in the original model, so both sides are compared in the form a deployment runs (ONNX Runtime
  folds BN into convs on its own anyway);
* every block with a fused form (FALCON) and no BN after it is fused too;
* ``portable=True`` replaces each fused FALCON block by :class:`PortableFalconConv`, the same computation as
  plain ``F.conv2d`` calls (no oneDNN-only op, no cached derived weights): what ``torch.onnx.export``,
  ``torch.jit.trace`` and ``torch.compile`` take.

The result is checked against the model it came from on a sample input (relative error = max |Δ| /
max |reference|); a fold that changes the output by more than :data:`PARITY_RTOL` is undone.

:func:`falcon.deploy.export_model` (``python -m falcon export``) converts a model, takes its portable deployable form and
writes ONNX (``torch.onnx.export``, the TorchScript-based exporter: ``dynamo=False``, which needs no
onnxscript) or TorchScript (``torch.jit.trace``), then loads the file back (ONNX Runtime; ``torch.jit.load``)
and prints the errors against eager fp32 PyTorch on the same input.
"""
from __future__ import annotations

import copy
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from falcon.blocks import ConvBlock
from falcon.convtypes import ConvType, parse_variant
from falcon.errors import FalconError
from falcon.fused import FusedFalconConv
from falcon.surgery import set_module

#: a runtime (or a deployable form) whose output differs from eager fp32 by more than this, relative to the
#: largest magnitude of the reference output, is reported as failed
PARITY_RTOL = 1e-3
FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


# ----------------------------------------------------------------------------------------------
# errors between two outputs
@dataclass(frozen=True)
class Parity:
    """How far an output is from the eager fp32 reference on the same input."""

    max_abs_error: float
    relative_error: float  # max |Δ| / max |reference|
    tolerance: float = PARITY_RTOL

    @property
    def ok(self) -> bool:
        return math.isfinite(self.relative_error) and self.relative_error <= self.tolerance

    def as_dict(self) -> dict:
        return {"max_abs_error": self.max_abs_error, "relative_error": self.relative_error,
                "tolerance": self.tolerance, "ok": self.ok}

    def describe(self) -> str:
        return f"max abs error {self.max_abs_error:.3g}, relative {self.relative_error:.3g} " \
               f"({'within' if self.ok else 'beyond'} {self.tolerance:g})"


def parity(reference, output, tolerance: float = PARITY_RTOL) -> Parity:
    """Errors of ``output`` (a tensor or numpy array, or a list/tuple whose first item is one) against ``reference``."""
    ref = _as_tensor(reference)
    out = _as_tensor(output)
    if out.shape != ref.shape:
        return Parity(math.inf, math.inf, tolerance)
    diff = (out - ref).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    if not math.isfinite(max_abs):
        return Parity(math.inf, math.inf, tolerance)
    return Parity(max_abs, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf), tolerance)


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, (list, tuple)):
        value = value[0]
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64)
    return torch.as_tensor(value).to(torch.float64)


# ----------------------------------------------------------------------------------------------
# the deployable form
class PortableFalconConv(ConvBlock):
    """A fused FALCON block as plain ``F.conv2d`` calls (no oneDNN-only op, no cached derived weights): the form
    exporters and compilers take. Same function as :class:`~falcon.fused.FusedFalconConv`.

    ``strategy="depthwise"`` (default): at rank k ≥ 2 the 1×1 conv's rows in rank-major order, its output
    viewed as (B, N, H, W·k) (a reshape and one transpose of the intermediate) and one depthwise conv with a
    D×(D·k) kernel, stride (s, s·k), padding (p, p·k) (the trick of :mod:`falcon.fused`); measured faster than
    the grouped conv with k inputs per group in ONNX Runtime and torch.compile on CPU (vgg19-cifar, rank 3:
    5.1 vs 8.6 ms and 5.8 vs 14.4 ms). ``"grouped"``: the literal two convolutions. Rank 1: the two convs.
    """

    conv_type = FusedFalconConv.conv_type

    def __init__(self, fused: FusedFalconConv, strategy: str = "depthwise"):
        super().__init__(fused.spec, {"rank": fused.rank})
        if strategy not in ("depthwise", "grouped"):
            raise FalconError(f"strategy must be depthwise or grouped, got {strategy!r}")
        self.rank = fused.rank
        self.view = strategy == "depthwise" and fused.rank > 1
        g = fused.grouped
        self.stride, self.padding = g.stride, g.padding
        with torch.no_grad():
            weight, bias = fused.pointwise.weight, fused.pointwise.bias
            kernel = g.weight
            if self.view:
                n, k = fused.spec.N, fused.rank
                order = torch.arange(k * n, device=weight.device).view(n, k).t().reshape(-1)  # r-major r·N + n
                weight = weight.index_select(0, order)
                bias = bias.index_select(0, order) if bias is not None else None
                kernel = g.weight.permute(0, 2, 3, 1).reshape(n, 1, g.weight.shape[2], -1)  # [n, 0, i, j·k + r]
        self.pointwise_weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.pointwise_bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.kernel = nn.Parameter(kernel.detach().clone().contiguous(), requires_grad=False)
        self.bias = None if g.bias is None else nn.Parameter(g.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.spec.N, self.rank
        y = F.conv2d(x, self.pointwise_weight, self.pointwise_bias)
        (s, _), (p, _) = self.stride, self.padding
        if not self.view:
            return F.conv2d(y, self.kernel, self.bias, self.stride, self.padding, 1, n)
        b, _, h, w = y.shape
        wide = y.reshape(b, k, n, h, w).permute(0, 2, 3, 4, 1).reshape(b, n, h, w * k)
        return F.conv2d(wide, self.kernel, self.bias, (s, s * k), (p, p * k), 1, n)


@dataclass
class DeployInfo:
    """What :func:`deploy_form` did."""

    folded_bn: int = 0  # BatchNorms folded into the conv before them
    fused_falcon: int = 0  # blocks rewritten in their fused form (FALCON's: two convolutions)
    kept_bn: int = 0  # BatchNorms left as they are (no conv right before them)
    portable: bool = False
    parity: Parity | None = None  # the deployable form against the model it came from
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"folded_bn": self.folded_bn, "fused_falcon": self.fused_falcon, "kept_bn": self.kept_bn,
                "portable": self.portable, "parity": None if self.parity is None else self.parity.as_dict(),
                "notes": list(self.notes)}

    def describe(self) -> str:
        parts = []
        if self.fused_falcon:
            parts.append(f"{self.fused_falcon} block{'s' if self.fused_falcon != 1 else ''} fused")
        parts.append(f"{self.folded_bn} BN folded" + (f", {self.kept_bn} kept" if self.kept_bn else ""))
        return ", ".join(parts)


def _entry(module: nn.Module) -> tuple[ConvType, bool] | None:
    """(registry entry, whether it is the fused form) of a conv-type block; None for any other module."""
    name = getattr(module, "conv_type", "") if isinstance(module, ConvBlock) else ""
    try:
        return parse_variant(name) if name else None
    except FalconError:
        return None


def _deploy_rule(module: nn.Module) -> ConvType | None:
    """The registry entry that rewrites ``module`` for deployment (a block whose type has a deploy rule)."""
    entry = _entry(module)
    return entry[0] if entry is not None and not entry[1] and entry[0].deployable else None


def _stops(module: nn.Module) -> bool:
    """Modules the fold treats as one unit (their inside is not searched for conv→BN pairs): blocks with a deploy
    rule, fused forms, leaves."""
    entry = _entry(module)
    return _deploy_rule(module) is not None or (entry is not None and entry[1]) or not any(module.children())


def _fold_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    units = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if _stops(child):
                units.append((full, child))
            else:
                walk(full, child)

    walk("", model)
    return units


def _conv_bn_pairs(model: nn.Module, sample: torch.Tensor) -> tuple[list[tuple[str, str]], int]:
    """(conv name, BN name) pairs where the BN's input is the conv's output and both run once; and the number
    of BatchNorm2d modules that ran."""
    units = _fold_units(model)
    calls: dict[str, int] = {}
    last: list[Any] = [None]  # (name, output) of the unit that ran last
    pairs: list[tuple[str, str]] = []
    bns: set[str] = set()

    def pre(name):
        def hook(module, inputs):
            if isinstance(module, nn.BatchNorm2d):
                bns.add(name)
                if last[0] is not None and inputs and inputs[0] is last[0][1]:
                    pairs.append((last[0][0], name))
        return hook

    def post(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            last[0] = (name, output)
        return hook

    handles = []
    for name, module in units:
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    last[0] = None
    once = [(c, b) for c, b in pairs if calls.get(c) == 1 and calls.get(b) == 1]
    return once, len(bns)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        return False
    if isinstance(conv, nn.Conv2d):
        return conv.out_channels == bn.num_features and conv.padding_mode == "zeros"
    return _deploy_rule(conv) is not None and conv.spec.N == bn.num_features


def _apply(model: nn.Module, sample: torch.Tensor, fold_bn: bool, info: DeployInfo) -> nn.Module:
    pairs, bn_count = _conv_bn_pairs(model, sample) if fold_bn else ([], 0)
    done_bn = set()
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not _foldable(conv, bn):
            continue
        rule = _deploy_rule(conv)
        if rule is not None:
            new = rule.deploy(conv, bn)
            info.fused_falcon += rule.fused_name is not None
        else:
            new = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        set_module(model, conv_name, new)
        set_module(model, bn_name, nn.Identity())
        done_bn.add(bn_name)
    info.folded_bn = len(done_bn)
    info.kept_bn = max(bn_count - len(done_bn), 0) if fold_bn else sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for name, module in list(model.named_modules()):
        rule = _deploy_rule(module)
        if rule is not None and rule.fused_name is not None:
            set_module(model, name, rule.deploy(module))
            info.fused_falcon += 1
    return model


def make_portable(model: nn.Module) -> nn.Module:
    """Every :class:`~falcon.fused.FusedFalconConv` of ``model`` (in place) as a :class:`PortableFalconConv`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FusedFalconConv):
            set_module(model, name, PortableFalconConv(module))
    return model


def deploy_form(model: nn.Module, sample: torch.Tensor, *, portable: bool = False, fold_bn: bool = True,
                tolerance: float = PARITY_RTOL) -> tuple[nn.Module, DeployInfo]:
    """A copy of ``model`` in its deployable form (see the module docstring), in eval mode, and what was done.

    ``sample``: an input batch (on the model's device) used to find which BN follows which conv and to
    check the result against ``model``. A fold that changes the output beyond ``tolerance`` (relative) is
    undone (BN kept, noted); if even the fusion alone does, a :class:`FalconError`.
    """
    if not isinstance(model, nn.Module):
        raise FalconError(f"deploy_form takes a torch.nn.Module, got {type(model).__name__}")
    model = model.eval()
    with torch.no_grad():
        reference = model(sample)
    attempts = (True, False) if fold_bn else (False,)
    for fold in attempts:
        info = DeployInfo(portable=portable)
        deployed = _apply(copy.deepcopy(model).eval(), sample, fold, info)
        if portable:
            make_portable(deployed)
        with torch.no_grad():
            info.parity = parity(reference, deployed(sample), tolerance)
        if info.parity.ok:
            if fold_bn and not fold:
                info.notes.append("folding BN into the convs changed the output; BN kept as it is")
            return deployed.eval(), info
    raise FalconError(f"the deployable form does not compute what the model does ({info.parity.describe()})")


# ----------------------------------------------------------------------------------------------
# writing it out
def export_onnx(model: nn.Module, sample: torch.Tensor, destination: str | os.PathLike | io.BytesIO | None = None,
                dynamic_batch: bool = True, opset: int = ONNX_OPSET) -> bytes | Path:
    """``model`` (a portable deployable form, on CPU) as ONNX: to ``destination`` (a path: returned) or as bytes.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs nothing beyond torch and onnx. A path is
    written whole or not at all (:func:`falcon.outputs.write_bytes`: a temporary file beside it, renamed into place).
    """
    _need("onnx", "ONNX export")
    if destination is not None and not isinstance(destination, io.BytesIO):
        from falcon.outputs import check_target, write_bytes

        check_target(destination)
        return write_bytes(destination, export_onnx(model, sample, None, dynamic_batch, opset))
    model = model.eval()
    target = io.BytesIO() if destination is None else destination
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                  do_constant_folding=True)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (sample,), target, dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch: the legacy exporter is its only one
            torch.onnx.export(model, (sample,), target, **kwargs)
        except Exception as e:  # noqa: BLE001 - an op the exporter cannot write: one line for the user
            raise FalconError(f"torch.onnx.export failed ({type(e).__name__}: {_line(e)})") from None
    return target.getvalue() if destination is None else destination


def export_torchscript(model: nn.Module, sample: torch.Tensor) -> torch.jit.ScriptModule:
    """``model`` (a portable deployable form) traced with ``torch.jit.trace`` and frozen for inference."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model.eval(), (sample,), check_trace=False)
        except Exception as e:  # noqa: BLE001
            raise FalconError(f"torch.jit.trace failed ({type(e).__name__}: {_line(e)})") from None
    return traced


def _line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FalconError(f"{what} needs the {module} package, which is not installed "
                          f"(pip install 'falcon-explorer[onnx]' or pip install onnx onnxruntime)") from None


def onnx_providers(device: torch.device | str = "cpu") -> list[str]:
    """ONNX Runtime's execution providers for ``device``: CUDA first when the device is CUDA and ORT has it."""
    ort = _need("onnxruntime", "ONNX Runtime")
    available = ort.get_available_providers()
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise FalconError("onnxruntime has no CUDAExecutionProvider here (the CPU-only onnxruntime package is "
                              "installed; onnxruntime-gpu has it)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(model_bytes_or_path, threads: int = 1, device: torch.device | str = "cpu"):
    """An ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads, one inter-op thread, all graph
    optimizations, and (more than one thread) no spin-waiting, so that its idle threads leave the cores to
    whatever runs next."""
    ort = _need("onnxruntime", "ONNX Runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model_bytes_or_path) if isinstance(model_bytes_or_path, (str, os.PathLike)) else model_bytes_or_path
    try:
        return ort.InferenceSession(source, options, providers=onnx_providers(device))
    except FalconError:
        raise
    except Exception as e:  # noqa: BLE001
        raise FalconError(f"ONNX Runtime could not load the model ({type(e).__name__}: {_line(e)})") from None


def onnx_predict(session, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``images`` (N, C, H, W) from an ONNX Runtime session, in batches."""
    import numpy as np

    name = session.get_inputs()[0].name
    outs = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size].detach().to("cpu", torch.float32).contiguous().numpy()
        outs.append(torch.from_numpy(np.asarray(session.run(None, {name: chunk})[0])))
    return torch.cat(outs)

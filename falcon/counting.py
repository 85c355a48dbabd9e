"""Counting parameters and MACs on real modules, under a declared convention.

The counter runs a real forward pass (on the ``meta`` device by default: shapes only, no memory, no
arithmetic) with a hook on every leaf module, and groups what it sees into *units*: a conv block of
the registry counts as one unit, every other leaf as its own.

Conventions (what each one counts):

``paper``
    The rules that reproduce the FALCON thesis's Params/FLOPs columns (docs/method.md §4):
    MACs of a conv = N·(D²·M/groups + 1 if it has a bias)·H'·W'; of a linear layer in·out + out;
    BN, activations and pooling count 0. Params = every parameter of the model, plus the BN (2·N)
    that the reference FALCON module creates per replaced layer and never uses.
``clean``
    The same as ``paper`` without that unused BN: what the model really holds.
``thop``
    What thop 0.1.1 reports on the built model (profiled on a deep copy). thop also counts BN
    (2 per element), pooling and some activations, and only the parameters of modules it knows.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import DeviceContext, _device_constructors

from falcon.blocks import ConvBlock
from falcon.errors import FalconError

CONVENTIONS = {
    "paper": "the thesis's rules (conv/linear MACs incl. bias, all params + the reference FALCON's unused BN)",
    "clean": "the thesis's rules without the reference FALCON's unused BN (what the model really holds)",
    "thop": "what thop 0.1.1 reports on the built model (also counts BN, pooling; params of known modules)",
}


def conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    """N·(D²·M/groups + bias)·H'·W' per image: one multiply-add per weight per output position."""
    per_output = module.weight.shape[1] * module.weight[0, 0].numel() + (1 if module.bias is not None else 0)
    return int(output.shape[1:].numel()) * per_output


def linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    """in·out + out per image (the bias add counted as one MAC per output, as the thesis did)."""
    return int(output.shape[1:].numel()) * (module.in_features + (1 if module.bias is not None else 0))


def leaf_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        return conv_macs(module, output)
    if isinstance(module, nn.Linear):
        return linear_macs(module, output)
    return 0


@dataclass
class UnitCount:
    """One row of a per-layer table."""

    name: str
    kind: str  # a conv type name for conv units, else the module class
    shape: str
    input_size: tuple[int, ...] | None
    output_size: tuple[int, ...] | None
    params: int = 0
    macs: int = 0
    unused_params: int = 0  # counted by the paper convention only
    hparams: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": self.shape,
            "input": "×".join(map(str, self.input_size)) if self.input_size else "",
            "output": "×".join(map(str, self.output_size)) if self.output_size else "",
            "params": self.params,
            "macs": self.macs,
        }


@dataclass
class ModelCount:
    convention: str
    params: int
    macs: int
    units: list[UnitCount]

    def table(self) -> list[dict]:
        return [u.as_dict() for u in self.units]


def _describe(module: nn.Module) -> tuple[str, str]:
    if isinstance(module, ConvBlock):
        s = module.spec
        return module.conv_type, f"{s.M}→{s.N} {s.D}×{s.D}/{s.stride}"
    if isinstance(module, nn.Conv2d):
        k = "×".join(map(str, module.kernel_size))
        g = f" g{module.groups}" if module.groups > 1 else ""
        return "standard" if module.groups == 1 else "conv", f"{module.in_channels}→{module.out_channels} {k}/{module.stride[0]}{g}"
    if isinstance(module, nn.Linear):
        return "linear", f"{module.in_features}→{module.out_features}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn", f"{module.num_features}"
    return type(module).__name__, ""


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv blocks as one unit each; every other leaf module on its own."""
    units: list[tuple[str, nn.Module]] = []
    inside: set[str] = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(".".join(parts[:i]) in inside for i in range(1, len(parts))):  # inside a block already taken
            continue
        if isinstance(module, ConvBlock):
            inside.add(name)
            units.append((name, module))
        elif not list(module.children()):
            units.append((name, module))
    return units


#: Leaf modules whose output has the shape of their input and that count no MACs under the paper and
#: clean conventions: normalizations, activations, dropout.
SHAPE_KEEPING: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity,
)


def _shape_keeping() -> tuple[type, ...]:
    try:  # torchvision's stochastic depth (drop path) keeps the shape too
        from torchvision.ops import StochasticDepth
    except ImportError:  # pragma: no cover - torchvision is a requirement
        return SHAPE_KEEPING
    return SHAPE_KEEPING + (StochasticDepth,)


#: What torch.nn.init does to a new weight: the init functions themselves (those that dispatch through
#: ``__torch_function__``) and the in-place ops that fill it (reached by the others). On ``meta`` they do
#: nothing observable (there is no data) but run PyTorch's Python decompositions (densenet201: 0.5 s of
#: kaiming_normal_). All work in place and keep the shape: on a meta tensor, returning it is the exact result.
_INIT_OPS = frozenset(getattr(owner, name) for owner, names in (
    (torch.Tensor, ("uniform_", "normal_", "erfinv_", "clamp_", "log_normal_", "exponential_", "cauchy_",
                    "geometric_", "random_", "bernoulli_")),
    (nn.init, ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
               "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")),
) for name in names if hasattr(owner, name))


class _SkipInitOnMeta(TorchFunctionMode):
    """A torch-function mode (modes are per thread) that returns a meta tensor untouched from the ops above."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = _skipped_init(func, args, kwargs)
        return tensor if tensor is not None else func(*args, **kwargs)


def _skipped_init(func, args, kwargs):
    """The meta tensor that ``func`` would initialize (then skip it), else None."""
    if func in _INIT_OPS:
        tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes its tensor by keyword when it dispatches
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
    return None


@contextlib.contextmanager
def no_init_on_meta():
    """While it lasts, in the calling thread only, initializing a ``meta`` tensor leaves it untouched; any
    other tensor is initialized as usual, and other threads are not affected at all (a torch-function
    mode is thread-local; nothing of torch is replaced). For building modules only to count them."""
    with _SkipInitOnMeta():
        yield


class _MetaWithoutInit(DeviceContext):
    """``torch.device("meta")`` and :func:`no_init_on_meta` as one mode: one Python dispatch per op, not two."""

    def __init__(self) -> None:
        super().__init__("meta")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = _skipped_init(func, args, kwargs)
        if tensor is not None:
            return tensor
        if func in _device_constructors() and kwargs.get("device") is None:
            kwargs["device"] = self.device
        return func(*args, **kwargs)


def on_meta_without_init():
    """The same as ``with torch.device("meta"), no_init_on_meta():`` (thread-local too), for building
    modules to count them; faster (one Python dispatch per torch call instead of two)."""
    return _MetaWithoutInit()


@contextlib.contextmanager
def shape_only(model: nn.Module):
    """On the ``meta`` device, let shape-keeping leaves (BN, LayerNorm, activations, dropout) pass their
    input through unchanged.

    On ``meta`` these run through PyTorch's Python decompositions (batch_norm ~3 ms a call, layer_norm
    ~6 ms); they count no MACs under the paper/clean conventions and their hooks still fire with an
    output of the right shape, so the counts are unchanged (``tests/test_sizing.py`` checks models that
    use each of these against the plain forward pass). A subclass that overrides ``forward`` with a
    shape-changing one is left alone.
    """
    patched = []
    if any(p.is_meta for p in model.parameters()):
        kinds = _shape_keeping()
        for m in model.modules():
            if isinstance(m, kinds) and not list(m.children()) and _forward_is_stock(m, kinds):
                m.forward = _identity
                patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _identity(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return x


def _forward_is_stock(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    """True when ``module``'s forward is the one of a class in ``kinds`` (not a subclass's own)."""
    fwd = type(module).forward
    return any(fwd is k.forward for k in kinds) or any(
        fwd is base.forward for base in type(module).__mro__[1:] if base in kinds)


def _input_tensor(input_size: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.zeros((1, *input_size), device=device)


def count_model(model: nn.Module, input_size: tuple[int, int, int], convention: str = "paper",
                unused_params: dict[str, int] | None = None) -> ModelCount:
    """Count ``model`` on one image of ``input_size`` (C, H, W) under ``convention``.

    ``unused_params`` maps unit names to parameters that the reference code would also have held
    (the unused BN of its FALCON module); the ``paper`` convention adds them.
    """
    if convention not in CONVENTIONS:
        raise FalconError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if convention == "thop":
        return count_thop(model, input_size)
    device = next((p.device for p in model.parameters()), torch.device("meta"))
    rows: dict[str, UnitCount] = {}
    owner: dict[nn.Module, str] = {}
    units_of_model = _units(model)
    for name, unit in units_of_model:
        kind, shape = _describe(unit)
        extra = (unused_params or {}).get(name, 0) if convention == "paper" else 0
        rows[name] = UnitCount(name, kind, shape, None, None,
                               params=sum(p.numel() for p in unit.parameters()) + extra,
                               unused_params=extra,
                               hparams=getattr(unit, "hparams", {}))
        for sub in unit.modules():
            owner.setdefault(sub, name)
        owner[unit] = name

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        row = rows[owner[module]]
        row.macs += leaf_macs(module, output)

    def unit_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        row = rows[owner[module]]
        if row.input_size is None and inputs and isinstance(inputs[0], torch.Tensor):
            row.input_size = tuple(inputs[0].shape[1:])
        if isinstance(output, torch.Tensor):
            row.output_size = tuple(output.shape[1:])

    handles = []
    try:
        for module, name in owner.items():
            if not list(module.children()):
                handles.append(module.register_forward_hook(hook))
        for name, unit in units_of_model:
            handles.append(unit.register_forward_hook(unit_hook))
        was_training = model.training
        model.eval()
        with torch.inference_mode(), shape_only(model):
            model(_input_tensor(input_size, device))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    units = list(rows.values())
    # parameters not inside any unit (e.g. registered directly on a container) still count
    in_units = sum(sum(p.numel() for p in m.parameters()) for _, m in units_of_model)
    loose = sum(p.numel() for p in model.parameters()) - in_units
    params = sum(u.params for u in units) + loose
    return ModelCount(convention, params, sum(u.macs for u in units), units)


def count_thop(model: nn.Module, input_size: tuple[int, int, int], copy_model: bool = True) -> ModelCount:
    """thop's MACs and params, profiled on a deep copy (thop leaves buffers on the modules it sees);
    ``copy_model=False`` profiles ``model`` itself, for a caller that built it only for this."""
    from thop import profile  # imported here: thop prints on import of some versions and is slow-ish

    clone = (copy.deepcopy(model) if copy_model else model).eval()
    device = next((p.device for p in clone.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        macs, params = profile(clone, inputs=(_input_tensor(input_size, device),), verbose=False)
    rows = []
    for name, unit in _units(clone):
        kind, shape = _describe(unit)
        ops = sum(float(m.total_ops.item()) for m in unit.modules() if hasattr(m, "total_ops") and not list(m.children()))
        prm = sum(float(m.total_params.item()) for m in unit.modules() if hasattr(m, "total_params") and not list(m.children()))
        rows.append(UnitCount(name, kind, shape, None, None, params=int(prm), macs=int(ops)))
    return ModelCount("thop", int(params), int(macs), rows)


def count_module(module: nn.Module, input_size: Iterable[int], convention: str = "clean") -> ModelCount:
    """Count a single layer or block (bare blocks: weights and MACs of the closed forms)."""
    return count_model(module, tuple(input_size), convention)


def thop_check(spec, hparams: dict[str, dict] | None = None):
    """Each type's bare block built on PyTorch's ``meta`` device and profiled by thop, next to the closed form."""
    import pandas as pd

    from falcon.convtypes import CONV_TYPES

    hparams = hparams or {}
    rows = []
    for name, ct in CONV_TYPES.items():
        hp = hparams.get(name, {})
        try:
            cost = ct.cost(spec, **hp)
        except FalconError:
            continue  # the calculator shows that type's error already
        with on_meta_without_init():  # shapes only: nothing to initialize
            module = ct.build(spec, **hp)
        # the block's own input width: ShuffleUnit α× reads α·M channels
        first = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
        counted = count_thop(module, (first.in_channels, spec.height, spec.width), copy_model=False)
        rows.append({"conv": name, "conv type": ct.display_name(**ct.resolve(spec, **hp)),
                     "closed-form params": cost.params, "thop params": counted.params,
                     "closed-form MACs": cost.macs, "thop MACs": counted.macs,
                     "agree": cost.params == counted.params and cost.macs == counted.macs})
    return pd.DataFrame(rows).set_index("conv")

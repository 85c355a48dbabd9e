"""Counting parameters and MACs on real modules, under a declared convention.

The counter runs a real forward pass (on the ``meta`` device by default: shapes only, no memory, no
arithmetic) and sees every operator that runs, at PyTorch's dispatch level (a
:class:`~torch.utils._python_dispatch.TorchDispatchMode`, as ``torch.utils.flop_counter.FlopCounterMode``
does, with its own rules). Each operator with a cost is put in one of four kinds (:data:`MAC_KINDS`):

``conv``       a convolution (any ``aten`` convolution, module or functional): per image
               N·D²·M/groups·H'·W' (transposed: per input element);
``linear``     a matrix product with a parameter operand (``nn.Linear``, ``F.linear``, ``addmm``/``mm``/
               ``bmm``/``matmul`` with a weight): in·out per output row;
``attention``  a parameter-free matrix product (``bmm``/``matmul``/``baddbmm`` of two activations,
               ``scaled_dot_product_attention``: Lq·Lk·(E + Ev) per head);
``bias``       the bias add of a conv or linear operator (or an add of a 1-D parameter): 1 per output,

and attributed to the *unit* that ran it: a conv block of the registry counts as one unit, every other
leaf module as its own, and an operator that runs in a non-leaf module's own forward (nn.MultiheadAttention's
projections and attention, Swin's qkv) gives that module a row of its own.

Conventions (what each one counts; docs/method.md §4):

``paper``
    The rules that reproduce the FALCON thesis's Params/FLOPs columns: conv, linear and their bias adds,
    only of operators that an ``nn.Conv*``/``nn.Linear`` module runs (its forward): a conv costs
    N·(D²·M/groups + 1 if it has a bias)·H'·W', a linear layer in·out + out; BN, activations and pooling
    count 0. Params = every parameter of the model, plus the BN (2·N) that the reference FALCON module
    creates per replaced layer and never uses.
``clean``
    The same rules without that unused BN, counting every conv, linear and bias add however it is
    called (functional too) and the attention matmuls: what the model really holds and computes.
``torchvision``
    The rule of the ``_ops`` figure ("GFLOPS", giga-MACs in fact) of torchvision's weights metadata,
    i.e. ``FlopCounterMode``'s count halved: conv, linear and attention MACs, no bias adds;
    params as ``clean`` (``meta["num_params"]``).
``thop``
    What thop 0.1.1 reports on the built model (profiled on a deep copy). thop also counts BN
    (2 per element), pooling and some activations, and only the parameters of modules it knows.

No silent zeros: an operator with a cost that the convention does not count (under ``paper`` a
functional linear, under ``torchvision`` a bias add) or that no rule knows (a fused RNN, a quantized
matmul) is listed in :attr:`ModelCount.not_counted`.
"""
from __future__ import annotations

import contextlib
import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import DeviceContext, _device_constructors
from torch.utils._python_dispatch import TorchDispatchMode

from falcon.blocks import ConvBlock
from falcon.errors import FalconError

CONVENTIONS = {
    "paper": "the thesis's rules (conv/linear MACs incl. bias of nn.Conv/nn.Linear modules, all params + the "
             "reference FALCON's unused BN)",
    "clean": "the thesis's rules without the reference FALCON's unused BN, counting every conv and linear however "
             "it is called and the attention matmuls (what the model really holds and computes)",
    "torchvision": "the rule of torchvision's `_ops` metadata (FlopCounterMode halved): conv, linear and attention "
                   "MACs without bias adds",
    "thop": "what thop 0.1.1 reports on the built model (also counts BN, pooling; params of known modules)",
}

#: The kinds of MACs, in the order tables show them.
MAC_KINDS = ("conv", "linear", "attention", "bias")
KIND_LABELS = {"conv": "conv", "linear": "linear", "attention": "attention matmuls", "bias": "bias adds"}

#: convention -> (the kinds it counts, whether only operators run by an nn.Conv*/nn.Linear module count)
COUNTED: dict[str, tuple[frozenset[str], bool]] = {
    "paper": (frozenset({"conv", "linear", "bias"}), True),
    "clean": (frozenset(MAC_KINDS), False),
    "torchvision": (frozenset({"conv", "linear", "attention"}), False),
}

#: the modules whose own operators the ``paper`` convention counts
_COUNTED_MODULES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class UnitCount:
    """One row of a per-layer table."""

    name: str
    kind: str  # a conv type name for conv units, else the module class
    shape: str
    input_size: tuple[int, ...] | None
    output_size: tuple[int, ...] | None
    params: int = 0
    macs: int = 0  # the total under the convention: the sum of macs_by_kind
    unused_params: int = 0  # counted by the paper convention only
    hparams: dict = field(default_factory=dict)
    macs_by_kind: dict[str, int] = field(default_factory=dict)  # counted MACs per kind of MAC_KINDS

    def as_dict(self) -> dict:
        d = {
            "name": self.name,
            "kind": self.kind,
            "shape": self.shape,
            "input": "×".join(map(str, self.input_size)) if self.input_size else "",
            "output": "×".join(map(str, self.output_size)) if self.output_size else "",
            "params": self.params,
            "macs": self.macs,
        }
        if self.macs_by_kind:
            d.update({f"{k}_macs": self.macs_by_kind.get(k, 0) for k in MAC_KINDS})
        return d


@dataclass(frozen=True)
class NotCounted:
    """Operators of one name and kind whose cost the convention left out (or that no rule knows)."""

    op: str  # "aten.linear"
    kind: str  # one of MAC_KINDS, or "unknown" (no rule knows its cost)
    calls: int
    macs: int | None  # None when no rule knows the cost
    why: str
    modules: tuple[str, ...] = ()  # the rows that ran them, in order

    def __str__(self) -> str:
        cost = (f"{self.macs:,} MACs of {KIND_LABELS[self.kind]}" if self.macs is not None else "cost unknown")
        where = ""
        if self.modules:
            first = self.modules[0] or "(the model itself)"
            where = f" in {first}" + (f" and {len(self.modules) - 1} more" if len(self.modules) > 1 else "")
        return f"{self.op} × {self.calls}{where}: {cost} ({self.why})"


@dataclass
class ModelCount:
    convention: str
    params: int
    macs: int
    units: list[UnitCount]
    macs_by_kind: dict[str, int] = field(default_factory=dict)  # counted MACs per kind (sums to macs)
    not_counted: list[NotCounted] = field(default_factory=list)  # costs seen and left out: never silent

    def table(self) -> list[dict]:
        return [u.as_dict() for u in self.units]

    def as_dict(self) -> dict:
        return {"convention": self.convention, "params": self.params, "macs": self.macs,
                "macs_by_kind": dict(self.macs_by_kind), "not_counted": [str(n) for n in self.not_counted],
                "layers": self.table()}


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
    if isinstance(module, nn.MultiheadAttention):
        return "MultiheadAttention", f"{module.embed_dim} {module.num_heads} heads"
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


# ------------------------------------------------------------------------------------ operator rules
#
# A rule sees one operator call (its arguments and output: shapes only, never data) and returns
# [(kind, MACs), ...]; the kind of a matrix product is decided by its operands (linear when one is
# a parameter, attention otherwise). Formulas count one multiply-add per weight per output, per image
# (the counter runs a batch of one).

def _numel(shape) -> int:
    return math.prod(shape)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class _Args:
    """Positional lookup of an operator's arguments by schema name, defaults included (the dispatcher
    drops trailing defaults)."""

    __slots__ = ("index", "defaults")

    def __init__(self, func) -> None:
        arguments = func._schema.arguments
        self.index = {a.name: i for i, a in enumerate(arguments)}
        self.defaults = {a.name: a.default_value for a in arguments if a.has_default_value()}

    def get(self, args, kwargs, name, default=None):
        i = self.index.get(name)
        if i is None:
            return default
        if i < len(args):
            return args[i]
        return kwargs.get(name, self.defaults.get(name, default))


def _conv_rule(func) -> Callable:
    a = _Args(func)
    by_flag = "transposed" in a.index
    by_name = "transpose" in func._overloadpacket.__name__

    def rule(counter, args, kwargs, out):
        x, w, y = args[0], args[1], _first(out)
        transposed = bool(a.get(args, kwargs, "transposed", False)) if by_flag else by_name
        per = _numel(w.shape[1:])  # (M/groups)·D² weights per output (transposed: (N/groups)·D² per input)
        found = [("conv", (x.numel() if transposed else y.numel()) * per)]
        if a.get(args, kwargs, "bias") is not None:
            found.append(("bias", y.numel()))
        return found
    return rule


def _product_kind(counter, *operands) -> str:
    return "linear" if any(counter.is_param(t) for t in operands) else "attention"


def _linear_rule(func) -> Callable:
    a = _Args(func)

    def rule(counter, args, kwargs, out):
        y, w = _first(out), args[1]
        found = [("linear", y.numel() * w.shape[-1])]
        if a.get(args, kwargs, "bias") is not None:
            found.append(("bias", y.numel()))
        return found
    return rule


def _product_rule(func) -> Callable:
    """mm, bmm, matmul, mv, dot and their add- forms: (output elements)·(inner size)."""
    name = func._overloadpacket.__name__
    a = _Args(func)
    names = [n for n in a.index if n not in ("beta", "alpha", "out")]
    added = name.startswith("add") or name.startswith("badd") or name == "_addmm_activation"
    left, right = (names[1], names[2]) if added else (names[0], names[1])

    def rule(counter, args, kwargs, out):
        x, other, y = a.get(args, kwargs, left), a.get(args, kwargs, right), _first(out)
        inner = x.shape[-1] if x.dim() else 1
        products = y.numel() * inner
        if name == "addbmm":  # sums the batch: every batch contributes a full product
            products *= x.shape[0]
        found = [(_product_kind(counter, x, other), products)]
        if added and a.get(args, kwargs, "beta", 1) != 0 and a.get(args, kwargs, names[0]) is not None:
            found.append(("bias", y.numel()))
        return found
    return rule


def _sdpa_rule(func) -> Callable:
    a = _Args(func)

    def rule(counter, args, kwargs, out):
        q, k, v = a.get(args, kwargs, "query"), a.get(args, kwargs, "key"), a.get(args, kwargs, "value")
        return [("attention", _numel(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1]))]
    return rule


def _native_mha_rule(func) -> Callable:
    """The fused nn.MultiheadAttention of CPU/CUDA inference (one operator for the whole layer)."""
    a = _Args(func)

    def rule(counter, args, kwargs, out):
        q, k, v = (a.get(args, kwargs, n) for n in ("query", "key", "value"))
        e = int(a.get(args, kwargs, "embed_dim"))
        rows = (q.numel() + k.numel() + v.numel()) // e + q.numel() // e  # in-projection of q, k, v; out-projection
        found = [("linear", rows * e * e), ("attention", (q.numel() // e) * k.shape[-2] * 2 * e)]
        biases = ((rows - q.numel() // e) * e if a.get(args, kwargs, "qkv_bias") is not None else 0) + (
            q.numel() if a.get(args, kwargs, "proj_bias") is not None else 0)
        if biases:
            found.append(("bias", biases))
        return found
    return rule


def _bias_add_rule(func) -> Callable:
    """``x + b`` with a 1-D parameter ``b``: the bias add of a matmul written out (``x @ W.t() + b``)."""
    def rule(counter, args, kwargs, out):
        if len(args) >= 2 and any(counter.is_bias(t) for t in args[:2]):
            return [("bias", _first(out).numel())]
        return ()
    return rule


_CONV_OPS = frozenset({
    "convolution", "_convolution", "_convolution_mode", "convolution_overrideable", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "cudnn_convolution", "cudnn_convolution_transpose", "miopen_convolution",
    "miopen_convolution_transpose", "miopen_depthwise_convolution", "mkldnn_convolution", "_slow_conv2d_forward",
    "slow_conv3d_forward", "slow_conv3d", "thnn_conv2d", "slow_conv_dilated2d", "slow_conv_dilated3d",
    "slow_conv_transpose2d", "slow_conv_transpose3d", "_conv_depthwise2d", "conv_depthwise3d",
    "_nnpack_spatial_convolution", "_mps_convolution", "_mps_convolution_transpose",
})
_PRODUCT_OPS = frozenset({"mm", "addmm", "_addmm_activation", "bmm", "baddbmm", "addbmm", "matmul", "mv", "addmv",
                          "dot", "vdot"})
_SDPA_OPS = frozenset({"scaled_dot_product_attention", "_scaled_dot_product_attention_math",
                       "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
                       "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                       "_scaled_dot_product_fused_attention_overrideable"})
#: names of operators that have a cost in MACs; one of these without a rule is listed as not counted
_COSTLY = re.compile(r"conv(?!ert)|mm|matmul|einsum|attention|transformer|linear|lstm|gru|rnn|dot|^mv$")


def _costly(name: str) -> bool:
    """Whether an operator's name says it multiplies (resampling and grid sampling do not count)."""
    return bool(_COSTLY.search(name)) and not re.search(r"upsample|sampler|interp", name)
#: composite operators without a cost of their own that need not be decomposed (the hot ones; any other
#: composite operator without a rule is decomposed, so that the products inside it are seen)
_FREE_COMPOSITES = frozenset({
    "flatten", "reshape", "contiguous", "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    "view_as", "expand_as", "type_as", "to", "unflatten", "chunk", "split", "unsafe_chunk", "squeeze", "unsqueeze",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d", "relu6", "hardtanh", "hardswish", "hardsigmoid", "silu", "mish", "softmax", "log_softmax",
    "layer_norm", "group_norm", "batch_norm", "instance_norm", "pad", "channel_shuffle", "pixel_shuffle",
    "stack", "cat", "concat", "concatenate", "hstack", "vstack", "size", "numel", "dim", "is_floating_point",
    "repeat_interleave", "roll", "narrow", "select_backward", "swapaxes", "movedim", "moveaxis", "t", "transpose",
    "permute", "flip", "norm", "linalg_vector_norm", "clamp_min", "clip", "sigmoid", "tanh", "gelu", "relu",
    "where", "index_select", "embedding", "native_channel_shuffle", "_shape_as_tensor", "meshgrid", "tile",
    "scalar_tensor", "result_type", "expand", "sum_to_size",
})

_RUN, _DECOMPOSE = object(), object()
#: OpOverload -> _RUN, _DECOMPOSE, or a rule; filled on first sight of each operator
_ACTIONS: dict[Any, Any] = {}


def _action(func):
    name = func._overloadpacket.__name__
    if name in _CONV_OPS:
        return _conv_rule(func)
    if name == "linear":
        return _linear_rule(func)
    if name in _PRODUCT_OPS:
        return _product_rule(func)
    if name in _SDPA_OPS:
        return _sdpa_rule(func)
    if name == "_native_multi_head_attention":
        return _native_mha_rule(func)
    if name in ("add", "add_") and "other" in _Args(func).index:
        return _bias_add_rule(func)
    if name not in _FREE_COMPOSITES and torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), torch._C.DispatchKey.CompositeImplicitAutograd):
        return _DECOMPOSE
    return _unknown_rule if _costly(name) else _RUN


def _unknown_rule(counter, args, kwargs, out):
    return [("unknown", None)]


class _Frame:
    """A row being counted: the module that owns it, what its operators cost, its first input/output size."""

    __slots__ = ("name", "module", "params", "seen", "input_size", "output_size")

    def __init__(self, name: str, module: nn.Module, params: int) -> None:
        self.name, self.module, self.params = name, module, params  # a block's params, else the module's own
        self.seen: dict[tuple[str, str, bool], list] = {}  # (op, kind, run by a conv/linear module) -> [calls, MACs]
        self.input_size = self.output_size = None


class _OpCounter(TorchDispatchMode):
    """Every operator of a forward pass, attributed to the frame on top of ``stack`` (the module running)."""

    def __init__(self, model: nn.Module, stack: list, root: tuple) -> None:
        super().__init__()
        self.stack, self.root = stack, root
        params = list(model.parameters())
        self.param_storages = {_storage(p) for p in params}
        self.bias_storages = {_storage(p) for p in params if p.dim() == 1}

    def is_param(self, t) -> bool:
        return isinstance(t, torch.Tensor) and _storage(t) in self.param_storages

    def is_bias(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() <= 1 and _storage(t) in self.bias_storages

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        action = _ACTIONS.get(func)
        if action is None:
            action = _ACTIONS[func] = _action(func)
        if action is _RUN:
            return func(*args, **kwargs)
        if action is _DECOMPOSE:
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            _ACTIONS[func] = _unknown_rule if _costly(func._overloadpacket.__name__) else _RUN
            return self.__torch_dispatch__(func, types, args, kwargs)
        out = func(*args, **kwargs)
        found = action(self, args, kwargs, out)
        if found:
            frame, by_module = self.stack[-1] if self.stack else self.root
            op = f"aten.{func._overloadpacket.__name__}"
            for kind, macs in found:
                key = (op, kind, by_module)
                tally = frame.seen.get(key)
                if tally is None:
                    frame.seen[key] = [1, macs]
                else:
                    tally[0] += 1
                    if macs is not None:
                        tally[1] += macs
        return out


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # a tensor without storage (a subclass): never a parameter
        return 0


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


def _frames(model: nn.Module, unused_params: dict[str, int] | None, convention: str):
    """The rows: every unit (a conv block, a leaf) and, lazily, every non-leaf module that runs an operator
    in its own forward. Returns (rows of the units, frame per unit or non-leaf, (frame, run by a conv/linear
    module) per module)."""
    rows: dict[str, UnitCount] = {}
    frames: dict[str, _Frame] = {}
    per_module: dict[nn.Module, tuple[_Frame, bool]] = {}
    block = None  # the conv block being walked (named_modules walks a block's modules right after it), "name."
    for name, module in model.named_modules():
        if block is not None and name.startswith(block):  # inside a block: its row
            per_module[module] = (frames[block[:-1]], isinstance(module, _COUNTED_MODULES))
            continue
        is_block, is_leaf = isinstance(module, ConvBlock), not next(module.children(), None)
        params = (sum(p.numel() for p in module.parameters()) if is_block
                  else sum(p.numel() for p in module._parameters.values() if p is not None))
        frames[name] = _Frame(name, module, params)
        per_module[module] = (frames[name], isinstance(module, _COUNTED_MODULES))
        block = name + "." if is_block else None
        if is_block or is_leaf:
            kind, shape = _describe(module)
            extra = (unused_params or {}).get(name, 0) if convention == "paper" else 0
            rows[name] = UnitCount(name, kind, shape, None, None, params=params + extra,
                                   unused_params=extra, hparams=getattr(module, "hparams", {}))
    return rows, frames, per_module


def count_model(model: nn.Module, input_size: tuple[int, int, int], convention: str = "paper",
                unused_params: dict[str, int] | None = None) -> ModelCount:
    """Count ``model`` on one image of ``input_size`` (C, H, W) under ``convention``.

    Every operator of the forward pass is seen (at the dispatch level, on ``meta`` when the model is
    there) and attributed to the unit that ran it; ``unused_params`` maps unit names to parameters that
    the reference code would also have held (the unused BN of its FALCON module); the ``paper``
    convention adds them.
    """
    if convention not in CONVENTIONS:
        raise FalconError(f"unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if convention == "thop":
        return count_thop(model, input_size)
    device = next((p.device for p in model.parameters()), torch.device("meta"))
    rows, frames, per_module = _frames(model, unused_params, convention)
    stack: list[tuple[_Frame, bool]] = []

    def enter(module: nn.Module, inputs: tuple) -> None:
        top = per_module[module]
        stack.append(top)
        frame = top[0]
        if frame.module is module and frame.input_size is None and inputs and isinstance(inputs[0], torch.Tensor):
            frame.input_size = tuple(inputs[0].shape[1:])

    def leave(module: nn.Module, inputs: tuple, output: Any) -> None:
        frame = stack.pop()[0]
        if frame.module is module and frame.output_size is None:
            output = _first(output)  # nn.MultiheadAttention returns (output, weights)
            if isinstance(output, torch.Tensor):
                frame.output_size = tuple(output.shape[1:])

    handles = []
    was_training = model.training
    try:
        for module in per_module:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        model.eval()
        counter = _OpCounter(model, stack, (frames[""], False))
        with torch.inference_mode(), shape_only(model), counter:
            model(_input_tensor(input_size, device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return _tally(model, convention, rows, frames)


def _tally(model: nn.Module, convention: str, rows: dict[str, UnitCount], frames: dict[str, _Frame]) -> ModelCount:
    """Apply the convention's rules to what each frame saw: the rows, the totals and what was left out."""
    kinds, by_modules_only = COUNTED[convention]
    left_out: dict[tuple[str, str, str], list] = {}  # (op, kind, why) -> [calls, MACs or None, rows]
    extra_rows: list[str] = []
    for name, frame in frames.items():
        if name not in rows:
            if not frame.seen:
                continue
            kind, shape = _describe(frame.module)
            rows[name] = UnitCount(name, kind, shape, None, None, params=frame.params)
            extra_rows.append(name)
        row = rows[name]
        row.input_size, row.output_size = frame.input_size, frame.output_size
        row.macs_by_kind = dict.fromkeys(MAC_KINDS, 0)
        for (op, kind, by_module), (calls, macs) in frame.seen.items():
            if kind in kinds and (by_module or not by_modules_only) and macs is not None:
                row.macs_by_kind[kind] += macs
                continue
            if macs is None:
                why = "no counting rule for this operator"
            elif kind not in kinds:
                why = f"the {convention} rule counts no {KIND_LABELS[kind]}"
            else:
                why = f"run outside an nn.Conv/nn.Linear forward, the only place the {convention} rule counts"
            tally = left_out.setdefault((op, kind, why), [0, None if macs is None else 0, []])
            tally[0] += calls
            if macs is not None:
                tally[1] += macs
            tally[2].append(name)
        row.macs = sum(row.macs_by_kind.values())
    units = list(rows.values())
    if extra_rows:  # in the model's order: a module's own row before its children's
        order = {name: i for i, name in enumerate(frames)}
        units.sort(key=lambda u: order[u.name])
    # parameters not inside any row (e.g. registered directly on a container) still count
    in_rows = sum(frames[u.name].params for u in units)
    loose = sum(p.numel() for p in model.parameters()) - in_rows
    by_kind = {k: sum(u.macs_by_kind[k] for u in units) for k in MAC_KINDS}
    not_counted = [NotCounted(op, kind, calls, macs, why, tuple(dict.fromkeys(names)))
                   for (op, kind, why), (calls, macs, names) in left_out.items()]
    not_counted.sort(key=lambda n: (n.macs is not None, -(n.macs or 0)))  # unknown costs first, then the largest
    return ModelCount(convention, sum(u.params for u in units) + loose, sum(by_kind.values()), units, by_kind,
                      not_counted)


def count_thop(model: nn.Module, input_size: tuple[int, int, int], copy_model: bool = True) -> ModelCount:
    """thop's MACs and params, profiled on a deep copy (thop leaves buffers on the modules it sees);
    ``copy_model=False`` profiles ``model`` itself, for a caller that built it only for this."""
    from thop import profile  # imported here: thop prints on import of some versions and is slow-ish

    clone = (copy.deepcopy(model) if copy_model else model).eval()
    device = next((p.device for p in clone.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        macs, params, tree = profile(clone, inputs=(_input_tensor(input_size, device),), verbose=False,
                                     ret_layer_info=True)
    rows = []
    for name, unit in _units(clone):
        kind, shape = _describe(unit)
        ops, prm = _thop_entry(tree, name)
        rows.append(UnitCount(name, kind, shape, None, None, params=int(prm), macs=int(ops)))
    return ModelCount("thop", int(params), int(macs), rows)


def _thop_entry(tree: dict, name: str) -> tuple[float, float]:
    """thop's (MACs, params) of the module ``name`` (dotted) from ``profile(..., ret_layer_info=True)``'s tree:
    child name -> (ops, params, children). thop removes its per-module counters when it returns, so the rows
    of a per-layer table come from here (they add up to thop's totals)."""
    ops = prm = 0.0
    for part in name.split("."):
        if part not in tree:
            return 0.0, 0.0
        ops, prm, tree = tree[part]
    return ops, prm


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

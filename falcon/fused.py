"""A FALCON block for inference: rank-k branches fused into two convolutions, BN folded in.

A rank-k :class:`~falcon.blocks.FalconConv` computes ``Σ_r DW_r(PW_r(x))``: k pointwise convs M→N and
k depthwise D×D convs on N channels, whose outputs are summed. Stacking the pointwise weights gives one
1×1 conv M→kN; the depthwise kernels of output channel n over the k branches form one group of a
grouped D×D conv kN→N with ``groups=N`` (k inputs, 1 output per group), and that conv does the sum.
A BatchNorm that follows the block (eval mode: running statistics) is an affine map per output channel,
so it folds into the grouped conv's weights and bias. The result computes the same function with two
convolutions (:func:`fuse_falcon`; exact up to floating-point summation order).

Channel order of the fused 1×1 conv: channel ``n·k + r`` is branch r's pointwise row n, so the
grouped conv's group n reads channels ``[n·k, (n+1)·k)``.

How it runs (same math, different kernels; measurements in docs/latency.md):

* ``strategy="grouped"``: literally the two convolutions above (the CUDA default, not measured here).
* ``strategy="depthwise"`` (the default off CUDA): oneDNN has a fast depthwise kernel but no fast kernel
  for a grouped conv with k inputs per group, so the grouped conv runs as one depthwise conv on a
  zero-copy view of the 1×1 conv's output. With the 1×1 rows in rank-major order the channels-last output
  has memory (B, H, W, k, N), i.e. it is a channels-last (B, N, H, W·k) tensor; a D×(D·k) depthwise
  kernel with stride (s, s·k) and padding (p, p·k) covers D pixels × k ranks per window. At rank ≥ 2 an NCHW
  input is laid out channels-last for the two convolutions and the output laid back (the copies are part
  of what the module costs; at rank 3 still faster than the NCHW forms measured); at rank 1 in NCHW the two
  convolutions run as they are.
* On CPU in float32 the 1×1 conv calls oneDNN (``torch.mkldnn_convolution``) directly: PyTorch's
  convolution dispatcher sends a single-threaded 1×1 conv at batch < 16 to its own GEMM path, which is
  ~20% slower here. Used only when no gradient is needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from falcon.blocks import ConvBlock, FalconConv
from falcon.errors import FalconError
from falcon.spec import LayerSpec

STRATEGIES = ("auto", "grouped", "depthwise")


class FusedFalconConv(ConvBlock):
    """Rank-k FALCON as one 1×1 conv M→kN (``pointwise``) and one grouped D×D conv kN→N with
    ``groups=N`` (``grouped``); BN of the model, if folded, lives in ``grouped.bias``.

    Build it with :func:`fuse_falcon` from a trained :class:`~falcon.blocks.FalconConv`; the
    constructor makes an uninitialized one of the right shape.
    """

    #: the registry's name of FALCON's inference form (its type's name + convtypes.FUSED_SUFFIX; the registry
    #: imports this module, so this one does not import it back; tests/test_fused.py checks they agree)
    conv_type = FalconConv.conv_type + "-fused"

    def __init__(self, spec: LayerSpec, rank: int = 1, pointwise_bias: bool = False, bias: bool = False,
                 strategy: str = "auto"):
        super().__init__(spec, {"rank": rank})
        if strategy not in STRATEGIES:
            raise FalconError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        n, k = spec.N, rank
        self.rank = rank
        self.strategy = strategy
        self.pointwise = nn.Conv2d(spec.M, k * n, 1, bias=pointwise_bias)
        self.grouped = nn.Conv2d(k * n, n, spec.D, stride=spec.stride, padding=spec.padding, groups=n, bias=bias)
        # r-major order (channel r·N + n) of the n-major fused channels, for the depthwise-sum strategy
        order = torch.arange(k * n).view(n, k).t().reshape(-1)  # r-major position r·N + n -> n·k + r
        self.register_buffer("_rank_major", order, persistent=False)
        self._cache: tuple | None = None  # (parameter versions, derived weights) for inference

    def resolved_strategy(self, device_type: str) -> str:
        """The strategy used on a device: ``auto`` = ``grouped`` on CUDA, ``depthwise`` elsewhere."""
        if self.strategy != "auto":
            return self.strategy
        return "grouped" if device_type == "cuda" else "depthwise"

    def _pointwise(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled and not torch.is_grad_enabled()):
            return torch.mkldnn_convolution(x, weight, bias, [0, 0], [1, 1], [1, 1], 1)
        return F.conv2d(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pw, g = self.pointwise, self.grouped
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        if self.resolved_strategy(x.device.type) == "grouped" or (self.rank == 1 and not channels_last):
            y = self._pointwise(x, pw.weight, pw.bias)
            return F.conv2d(y, g.weight, g.bias, g.stride, g.padding, groups=self.spec.N)
        if channels_last:
            return self._depthwise(x)
        # rank ≥ 2, NCHW in and out: channels-last in between, where the depthwise conv on the view is
        # fast (the two layout copies are part of what this module costs; still faster than the grouped
        # conv in NCHW at rank 3; at rank 1 they are not, see above)
        return self._depthwise(x.contiguous(memory_format=torch.channels_last)).contiguous()

    def _depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last ``x``. With the 1×1 rows in rank-major order the 1×1 output's memory is
        (B, H, W, k, N), i.e. a channels-last (B, N, H, W·k) tensor whose column w·k + r holds rank r of
        pixel w. On it the grouped conv is ONE depthwise conv with a D×(D·k) kernel, stride (s, s·k) and
        padding (p, p·k): each window covers D pixels × k ranks. No copy, no separate sum."""
        g = self.grouped
        n, k = self.spec.N, self.rank
        (s, _), (p, _) = g.stride, g.padding
        weight, bias, kernel = self._depthwise_weights()
        y = self._pointwise(x, weight, bias)
        b, _, h, w = y.shape
        wide = y.permute(0, 2, 3, 1).reshape(b, h, w * k, n).permute(0, 3, 1, 2)
        return F.conv2d(wide, kernel, g.bias, (s, s * k), (p, p * k), groups=n)

    def _depthwise_weights(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(rank-major 1×1 weight, its bias, the D×(D·k) depthwise kernel), derived from the parameters.
        Without autograd they are cached until a parameter changes (new tensor or in-place update)."""
        pw, g = self.pointwise, self.grouped
        params = [t for t in (pw.weight, pw.bias, g.weight) if t is not None]
        # inference tensors (made under torch.inference_mode) have no version counter: without one an
        # in-place update could not be seen, so their derived weights are computed each call, not cached
        key = None if any(t.is_inference() for t in params) else \
            tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in params)
        if key is not None and not torch.is_grad_enabled() and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        n, k = self.spec.N, self.rank
        weight, bias = pw.weight, pw.bias
        if k > 1:
            weight = weight.index_select(0, self._rank_major)
            bias = bias.index_select(0, self._rank_major) if bias is not None else None
        kernel = g.weight.permute(0, 2, 3, 1).reshape(n, 1, g.weight.shape[2], -1)  # [n, 0, i, j·k + r]
        kernel = kernel.contiguous(memory_format=torch.channels_last)
        derived = (weight, bias, kernel)
        if key is not None and not torch.is_grad_enabled():
            self._cache = (key, derived)
        return derived


def _falcon_branches(block: nn.Module) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
    branches = getattr(block, "branches", None)
    if branches is None or not len(branches):
        raise FalconError(f"fuse_falcon needs a FalconConv block (with .branches), got {type(block).__name__}")
    pairs = []
    for i, branch in enumerate(branches):
        pw, dw = getattr(branch, "pointwise", None), getattr(branch, "depthwise", None)
        if not isinstance(pw, nn.Conv2d) or not isinstance(dw, nn.Conv2d):
            raise FalconError(f"branch {i} of {type(block).__name__} is not a FALCON branch (pointwise, depthwise)")
        pairs.append((pw, dw))
    return pairs


def _check_shapes(spec: LayerSpec, pairs: list[tuple[nn.Conv2d, nn.Conv2d]]) -> None:
    m, n, d = spec.M, spec.N, spec.D
    for i, (pw, dw) in enumerate(pairs):
        if pw.weight.shape != (n, m, 1, 1) or pw.groups != 1 or pw.stride != (1, 1) or pw.padding != (0, 0):
            raise FalconError(f"branch {i}: pointwise conv is not a 1×1 conv {m}→{n} (weight {tuple(pw.weight.shape)})")
        if (dw.weight.shape != (n, 1, d, d) or dw.groups != n or dw.stride != (spec.stride, spec.stride)
                or dw.padding != (spec.padding, spec.padding) or dw.dilation != (1, 1)):
            raise FalconError(f"branch {i}: depthwise conv is not a {d}×{d} depthwise conv on {n} channels "
                              f"with stride {spec.stride}, padding {spec.padding}")


def fuse_falcon(block: nn.Module, bn: nn.BatchNorm2d | None = None, strategy: str = "auto") -> FusedFalconConv:
    """The rank-k FALCON ``block`` (and the BatchNorm2d ``bn`` that follows it, if given) as a
    :class:`FusedFalconConv` computing the same function; returned in eval mode on the block's
    device and dtype. ``bn`` is folded with its running statistics, i.e. as it acts in eval mode.
    """
    spec = getattr(block, "spec", None)
    if not isinstance(spec, LayerSpec):
        raise FalconError(f"fuse_falcon needs a FalconConv block (with a .spec), got {type(block).__name__}")
    pairs = _falcon_branches(block)
    _check_shapes(spec, pairs)
    k, n = len(pairs), spec.N
    ref = pairs[0][0].weight
    pointwise_bias = any(pw.bias is not None for pw, _ in pairs)
    has_bias = bn is not None or any(dw.bias is not None for _, dw in pairs)
    fused = FusedFalconConv(spec, rank=k, pointwise_bias=pointwise_bias, bias=has_bias, strategy=strategy)
    fused = fused.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        # channel n·k + r of the fused 1×1 conv = branch r's pointwise row n
        p = torch.stack([pw.weight for pw, _ in pairs], dim=1)  # (N, k, M, 1, 1)
        grouped = torch.stack([dw.weight[:, 0] for _, dw in pairs], dim=1)  # (N, k, D, D)
        bias = torch.zeros(n, dtype=ref.dtype, device=ref.device)
        for _, dw in pairs:
            if dw.bias is not None:
                bias += dw.bias
        if bn is not None:
            if not isinstance(bn, nn.BatchNorm2d):
                raise FalconError(f"bn must be a BatchNorm2d, got {type(bn).__name__}")
            if bn.num_features != n:
                raise FalconError(f"bn has {bn.num_features} features, the block has {n} output channels")
            if bn.running_mean is None or bn.running_var is None:
                raise FalconError("bn has no running statistics (track_running_stats=False); it cannot be folded")
            scale = torch.rsqrt(bn.running_var.to(ref.dtype) + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.to(ref.dtype)
            shift = bn.bias.to(ref.dtype) if bn.bias is not None else torch.zeros_like(scale)
            grouped = grouped * scale.view(n, 1, 1, 1)
            bias = (bias - bn.running_mean.to(ref.dtype)) * scale + shift
        fused.pointwise.weight.copy_(p.reshape(k * n, spec.M, 1, 1))
        if pointwise_bias:
            pb = torch.stack([pw.bias if pw.bias is not None else torch.zeros(n, dtype=ref.dtype, device=ref.device)
                              for pw, _ in pairs], dim=1)  # (N, k)
            fused.pointwise.bias.copy_(pb.reshape(k * n))
        fused.grouped.weight.copy_(grouped)
        if has_bias:
            fused.grouped.bias.copy_(bias)
    return fused.eval()

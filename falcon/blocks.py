"""The convolution blocks of every conv type, as real ``nn.Module`` s.

Each block keeps the layer it replaces in ``self.spec`` (a :class:`~falcon.spec.LayerSpec`) and its
hyper-parameters in ``self.hparams`` so that counters, fitters and tables can describe it; ``conv_type`` names
its entry in the registry (:data:`falcon.convtypes.CONV_TYPES`, which builds it: the registry imports no torch,
so the link is written on this side).

Kernels are indexed in PyTorch's weight order ``(N, M, D, D)``: ``K[n, m, i, j]`` for output channel n, input
channel m and kernel position (i, j); a pointwise kernel is ``P[n, m]``, a depthwise one ``D[c, i, j]`` on
channel c (as in :mod:`falcon.ehp`).

Two layouts:

* ``bare``: only the convolutions the formulas of docs/method.md §2 count (no bias, no BN, no activation);
  the closed-form cost of a conv type equals the weights and MACs of its bare block exactly.
* ``paper``: the block as the FALCON experiments placed it inside a model (docs/method.md §4), with the
  internal BN/activations and shortcuts of each competitor. The model's own BN and ReLU that follow
  the replaced conv stay where they were.
"""
from __future__ import annotations

import torch
from torch import nn

from falcon.spec import LayerSpec, expanded_channels, shuffle_widths  # noqa: F401 (re-exported)


class ConvBlock(nn.Module):
    """Base class: a block that stands in for one standard convolution."""

    conv_type: str = ""

    def __init__(self, spec: LayerSpec, hparams: dict):
        super().__init__()
        self.spec = spec
        self.hparams = dict(hparams)

    def extra_repr(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"{self.spec.describe()}" + (f", {hp}" if hp else "")


def _pointwise(cin: int, cout: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False, groups=groups)


def _depthwise(channels: int, spec: LayerSpec) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, spec.kernel_size, stride=spec.stride, padding=spec.padding,
                     groups=channels, bias=False)


class StandardConv(ConvBlock):
    """One D×D convolution M→N (the layer FALCON replaces)."""

    conv_type = "standard"

    def __init__(self, spec: LayerSpec, bias: bool = False):
        super().__init__(spec, {})
        self.conv = nn.Conv2d(spec.M, spec.N, spec.D, stride=spec.stride, padding=spec.padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FalconBranch(nn.Module):
    """Pointwise M→N at input resolution, then depthwise D×D on N channels with the layer's stride."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.pointwise = _pointwise(spec.M, spec.N)
        self.depthwise = _depthwise(spec.N, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(self.pointwise(x))


class FalconConv(ConvBlock):
    """Rank-k FALCON: k FALCON branches whose outputs are summed.

    Its kernel is the EHP ``K[n,m,i,j] = Σ_r P⁽ʳ⁾[n,m]·D⁽ʳ⁾[n,i,j]`` (common axis: output channel).
    The same module serves both layouts: FALCON adds nothing inside; the model's own BN/ReLU follow it.
    """

    conv_type = "falcon"

    def __init__(self, spec: LayerSpec, rank: int = 1):
        super().__init__(spec, {"rank": rank})
        self.branches = nn.ModuleList(FalconBranch(spec) for _ in range(rank))

    @property
    def rank(self) -> int:
        return len(self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DSConvBranch(nn.Module):
    """Depthwise D×D on M channels (the layer's stride), [BN, ReLU in the paper layout], pointwise M→N."""

    def __init__(self, spec: LayerSpec, inner_bn: bool):
        super().__init__()
        self.depthwise = _depthwise(spec.M, spec)
        self.inner = nn.Sequential(nn.BatchNorm2d(spec.M), nn.ReLU(inplace=True)) if inner_bn else nn.Identity()
        self.pointwise = _pointwise(spec.M, spec.N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.inner(self.depthwise(x)))


class DSConv(ConvBlock):
    """Rank-k depthwise separable conv (MobileNet): k branches summed.

    Bare, its kernel is the EHP ``K[n,m,i,j] = Σ_r P⁽ʳ⁾[n,m]·D⁽ʳ⁾[m,i,j]`` (common axis: input channel).
    """

    conv_type = "dsconv"

    def __init__(self, spec: LayerSpec, rank: int = 1, inner_bn: bool = False):
        super().__init__(spec, {"rank": rank})
        self.branches = nn.ModuleList(DSConvBranch(spec, inner_bn) for _ in range(rank))

    @property
    def rank(self) -> int:
        return len(self.branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class MobileConvV2(ConvBlock):
    """MobileNetV2's inverted residual as a conv replacement: pointwise M→T, depthwise D×D, pointwise T→N.

    Paper layout: BN+ReLU6 after the expansion and the depthwise conv, BN after the projection, and a
    shortcut when the stride is 1 (identity when M = N, else a 1×1 conv + BN).
    """

    conv_type = "mobilev2"

    def __init__(self, spec: LayerSpec, expansion: float = 0.5, paper: bool = False):
        super().__init__(spec, {"expansion": expansion})
        hidden = expanded_channels(spec.M, expansion)
        bn_act = (lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU6(inplace=True))) if paper else (lambda c: nn.Identity())
        self.expand = _pointwise(spec.M, hidden)
        self.expand_act = bn_act(hidden)
        self.depthwise = _depthwise(hidden, spec)
        self.depthwise_act = bn_act(hidden)
        self.project = _pointwise(hidden, spec.N)
        self.project_bn = nn.BatchNorm2d(spec.N) if paper else nn.Identity()
        self.shortcut: nn.Module | None = None
        if paper and spec.stride == 1 and spec.output_size == (spec.height, spec.width):
            if spec.M == spec.N:
                self.shortcut = nn.Identity()
            else:
                self.shortcut = nn.Sequential(_pointwise(spec.M, spec.N), nn.BatchNorm2d(spec.N))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand_act(self.expand(x))
        out = self.depthwise_act(self.depthwise(out))
        out = self.project_bn(self.project(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (g, C/g) → (C/g, g) across the channel axis."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(ConvBlock):
    """ShuffleNet unit as a conv replacement: group pointwise M'→B (g groups), channel shuffle,
    depthwise D×D on B (the layer's stride), group pointwise B→N' (g groups); M' = αM, N' = αN.

    Paper layout adds BN after each conv and ReLU after the first. With α ≠ 1 the block takes M'
    channels and gives N'; inside a model ``in_width``/``out_width`` override them where the unit
    meets the unwidened stem or head (see :func:`falcon.surgery.widen_for_shuffle`).
    """

    conv_type = "shuffle"

    def __init__(self, spec: LayerSpec, groups: int = 2, width_mult: float = 1.0, paper: bool = False,
                 in_width: int | None = None, out_width: int | None = None):
        super().__init__(spec, {"groups": groups, "width_mult": width_mult})
        m, n, b = shuffle_widths(spec, width_mult)
        m, n = in_width or m, out_width or n
        bn = (lambda c: nn.BatchNorm2d(c)) if paper else (lambda c: nn.Identity())
        self.compress = nn.Conv2d(m, b, 1, groups=groups, bias=False)
        self.compress_bn = bn(b)
        self.compress_act = nn.ReLU(inplace=True) if paper else nn.Identity()
        self.shuffle = ChannelShuffle(groups)
        self.depthwise = nn.Conv2d(b, b, spec.D, stride=spec.stride, padding=spec.padding, groups=b, bias=False)
        self.depthwise_bn = bn(b)
        self.expand = nn.Conv2d(b, n, 1, groups=groups, bias=False)
        self.expand_bn = bn(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.compress_act(self.compress_bn(self.compress(x)))
        out = self.depthwise_bn(self.depthwise(self.shuffle(out)))
        return self.expand_bn(self.expand(out))


def _strip(cin: int, cout: int, spec: LayerSpec, vertical: bool, groups: int = 1) -> nn.Conv2d:
    """A D×1 (``vertical``: the layer's stride and padding on rows) or 1×D conv (on columns)."""
    d, s, p = spec.D, spec.stride, spec.padding
    size, stride, pad = ((d, 1), (s, 1), (p, 0)) if vertical else ((1, d), (1, s), (0, p))
    return nn.Conv2d(cin, cout, size, stride=stride, padding=pad, groups=groups, bias=False)


class Tucker2Conv(ConvBlock):
    """Tucker-2 (Kim et al., 2016): 1×1 M→R₃, D×D R₃→R₄ with the layer's stride and padding, 1×1 R₄→N.

    Its kernel is ``K[n,m,i,j] = Σ last[n,b]·core[b,a,i,j]·first[a,m]`` (:mod:`falcon.fits.tucker`)."""

    conv_type = "tucker2"

    def __init__(self, spec: LayerSpec, rank_in: int = 8, rank_out: int = 8, bias: bool = False):
        super().__init__(spec, {"rank_in": rank_in, "rank_out": rank_out})
        self.first = _pointwise(spec.M, rank_in)
        self.core = nn.Conv2d(rank_in, rank_out, spec.D, stride=spec.stride, padding=spec.padding, bias=False)
        self.last = nn.Conv2d(rank_out, spec.N, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))


class CPConv(ConvBlock):
    """CP (Lebedev et al., 2015): 1×1 M→R, D×1 depthwise (stride on rows), 1×D depthwise (stride on columns),
    1×1 R→N. Its kernel is ``K[n,m,i,j] = Σ_r last[n,r]·vertical[r,i]·horizontal[r,j]·first[r,m]``."""

    conv_type = "cp"

    def __init__(self, spec: LayerSpec, rank: int = 8, bias: bool = False):
        super().__init__(spec, {"rank": rank})
        self.first = _pointwise(spec.M, rank)
        self.vertical = _strip(rank, rank, spec, vertical=True, groups=rank)
        self.horizontal = _strip(rank, rank, spec, vertical=False, groups=rank)
        self.last = nn.Conv2d(rank, spec.N, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))


class SpatialConv(ConvBlock):
    """Spatial low-rank (Jaderberg et al., 2014): D×1 M→K (stride and padding on rows), 1×D K→N (on columns).
    Its kernel is ``K[n,m,i,j] = Σ_c horizontal[n,c,j]·vertical[c,m,i]`` (:mod:`falcon.fits.spatial`)."""

    conv_type = "spatial"

    def __init__(self, spec: LayerSpec, rank: int = 8, bias: bool = False):
        super().__init__(spec, {"rank": rank})
        self.vertical = _strip(spec.M, rank, spec, vertical=True)
        self.horizontal = _strip(rank, spec.N, spec, vertical=False)
        if bias:
            self.horizontal.bias = nn.Parameter(torch.zeros(spec.N))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.horizontal(self.vertical(x))

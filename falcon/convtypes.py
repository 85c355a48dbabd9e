"""The registry of conv types: one entry per type drives the calculator, sizing, plots, CLI and app.

Each :class:`ConvType` knows how to

* build its bare block for a :class:`~falcon.spec.LayerSpec` (``build``) and the block the paper's
  experiments put in a model (``block``),
* give its closed-form parameters and MACs (``cost``; weights only, no bias, no BN; docs/method.md §2),
  with the formulas as LaTeX,
* declare and validate its hyper-parameters (:class:`HParam`),
* where it can be fitted to a trained kernel, say how (:class:`FitRule`): its fitter (in :mod:`falcon.fits`,
  imported when a fit runs), its ranked hyper-parameters and its full ranks.
* build the form a deployment runs (``deploy``): its fused form (``_fuse``: FALCON's k branches as two convs), or
  the conv a following BatchNorm folds into (``bn_into``: Tucker-2's and CP's last 1×1, spatial's 1×D conv).

Adding a conv type is one more entry in :data:`CONV_TYPES`: its block, its entry, and (for a fittable one) its fitter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from falcon.errors import FalconError
from falcon.spec import LayerSpec, expanded_channels, shuffle_widths

if TYPE_CHECKING:
    from torch import nn

# The registry itself does not import torch (the first page of the app draws with the registry's
# colours before torch is imported); the blocks, which need it, are imported when one is built.


def _blocks():
    from falcon import blocks

    return blocks


def _fused():
    from falcon import fused

    return fused


def _folding():
    from falcon import folding

    return folding


#: The name of a type's inference form is its name with this suffix ("falcon-fused").
FUSED_SUFFIX = "-fused"


@dataclass(frozen=True)
class HParam:
    """A hyper-parameter of a conv type, with its valid range."""

    name: str
    label: str
    kind: type  # int or float
    default: Any
    minimum: Any
    maximum: Any
    help: str
    symbol: str = ""
    step: Any = None  # a number input's step (default: 1 for int, 0.01 for float)

    @property
    def widget_step(self) -> Any:
        return self.step if self.step is not None else (1 if self.kind is int else 0.01)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any) -> Any:
        """``value`` checked by falcon.limits against this range (ASCII digits, finite, not a bool); a whole
        float (2.0 from a number input) is an int."""
        from falcon.limits import hparam_bound, parse

        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        return parse(value, hparam_bound(self), self.label)


@dataclass(frozen=True)
class CostPart:
    """One convolution inside a block: what it is, its weights and its MACs."""

    name: str
    params: int
    macs: int


@dataclass(frozen=True)
class Cost:
    """Closed-form weights and multiply-accumulates of one layer, with the parts that make them up."""

    params: int
    macs: int
    parts: tuple[CostPart, ...] = ()

    @classmethod
    def of(cls, *parts: CostPart, times: int = 1) -> "Cost":
        scaled = tuple(CostPart(p.name, p.params * times, p.macs * times) for p in parts)
        return cls(sum(p.params for p in scaled), sum(p.macs for p in scaled), scaled)


@dataclass(frozen=True)
class FitRule:
    """How a conv type is fitted to a trained kernel ``(N, M, D, D)`` (conversion, the probe, budgets ask this).

    ``fitter``: ``"module:attribute"`` of its :class:`falcon.fits.base.Fitter` (the fit: closed form, iterative
    where it has one; how factors load into the block). ``ranks``: its ranked hyper-parameters (one or several).
    ``full_ranks(N, M, D)``: per ranked hyper-parameter, the rank from which the fit is exact; ``formula``: the same
    in words."""

    fitter: str
    ranks: tuple[str, ...]
    full_ranks: Callable[[int, int, int], dict[str, int]] = field(repr=False)
    formula: str = ""


@dataclass(frozen=True)
class ConvType:
    name: str
    label: str
    color: str
    summary: str
    hparams: tuple[HParam, ...]
    latex_params: str
    latex_macs: str
    _cost: Callable[[LayerSpec, dict], Cost] = field(repr=False)
    _build: Callable[[LayerSpec, dict], nn.Module] = field(repr=False)
    _block: Callable[[LayerSpec, dict, bool], nn.Module] = field(repr=False)
    _check: Callable[[LayerSpec, dict], None] = field(default=lambda spec, hp: None, repr=False)
    #: how the type is fitted to a trained kernel (None: it cannot be; it is then converted with a random init)
    fit: FitRule | None = None
    reference_unused_params: Callable[[LayerSpec, dict], int] = field(default=lambda spec, hp: 0, repr=False)
    symbol: str = "circle"  # plot marker
    #: the hyper-parameters the thesis's tables used (None: not in the thesis); a rank left out means any rank
    paper_hparams: dict | None = field(default=None, compare=False, hash=False)
    #: how closely this project reproduces the thesis's counts for the type, where that needs saying
    paper_agreement: str = ""
    #: whether these hyper-parameters change the widths of the model around the layer (ShuffleUnit α≠1)
    _widens: Callable[[dict], bool] = field(default=lambda hp: False, repr=False)
    #: the inference form, where the type has one: the trained bare block rewritten for deployment (FALCON's
    #: k branches as two convolutions, :func:`falcon.fused.fuse_falcon`), with the BatchNorm2d that follows the
    #: block (or None) folded in; named ``{name}-fused``
    _fuse: Callable[[nn.Module, Any], nn.Module] | None = field(default=None, repr=False)
    #: where a BatchNorm2d that follows the block folds (a type without a fused form): the path, inside the block,
    #: of its last linear op ("last": Tucker-2's 1×1 R₄→N); "branches.*.pointwise": that conv of each of the
    #: branches the block sums. Empty: the deployment looks inside the block instead (its convs fold one by one)
    bn_into: str = ""

    @property
    def fused_name(self) -> str | None:
        return f"{self.name}{FUSED_SUFFIX}" if self._fuse is not None else None

    def fuse(self, block: nn.Module, bn: Any = None) -> nn.Module:
        if self._fuse is None:
            raise FalconError(f"{self.name} has no fused (inference) form")
        return self._fuse(block, bn)

    @property
    def deployable(self) -> bool:
        """Whether a deployment rewrites the type's block as one unit (:meth:`deploy`)."""
        return self._fuse is not None or bool(self.bn_into)

    def deploy(self, block: nn.Module, bn: Any = None) -> nn.Module:
        """The block in the form a deployment runs (:func:`falcon.export.deploy_form`), with ``bn`` (the
        BatchNorm2d that follows it, or None) folded in: its fused form where it has one, else the block with the
        BN folded into its ``bn_into`` conv(s)."""
        if self._fuse is not None:
            return self._fuse(block, bn)
        if not self.bn_into:
            raise FalconError(f"{self.name} has no deployable form of its own; its convs fold one by one")
        return _folding().fold_bn_into(block, self.bn_into, bn)

    @property
    def ranked(self) -> bool:
        """Whether the type has ranked hyper-parameters (a rank k, R, K; Tucker-2's R₃ and R₄)."""
        return bool(self.rank_names)

    @property
    def rank_names(self) -> tuple[str, ...]:
        """The names of its ranked hyper-parameters (empty for an unranked type)."""
        return self.fit.ranks if self.fit is not None else ()

    @property
    def fittable(self) -> bool:
        """Whether the type can be fitted to (and converted from) trained weights."""
        return self.fit is not None

    def rank_hparams(self, rank: int | dict) -> dict:
        """Its ranked hyper-parameters at one uniform ``rank`` (every one the same), or those of a dict of them."""
        if isinstance(rank, dict):
            return {n: rank[n] for n in self.rank_names if n in rank}
        return {n: rank for n in self.rank_names}

    def full_ranks(self, n: int, m: int, d: int) -> dict[str, int]:
        """Per ranked hyper-parameter, the rank from which the fit of an (N, M, D, D) kernel is exact."""
        if self.fit is None:
            raise FalconError(f"{self.name} cannot be fitted to a trained kernel")
        return self.fit.full_ranks(n, m, d)

    def full_rank(self, n: int, m: int, d: int) -> int:
        """The uniform rank from which every ranked hyper-parameter's fit is exact (the largest full rank)."""
        return max(self.full_ranks(n, m, d).values())

    def widens(self, **hp: Any) -> bool:
        return self._widens(self.resolve(**hp))

    def resolve(self, spec: LayerSpec | None = None, **hp: Any) -> dict:
        """Fill defaults, coerce types, check ranges; with a spec, also check it fits the layer."""
        known = {h.name: h for h in self.hparams}
        resolved = {}
        for name, h in known.items():
            value = hp.get(name)
            resolved[name] = h.default if value is None else h.coerce(value)
        if spec is not None:
            self._check(spec, resolved)
        return resolved

    def cost(self, spec: LayerSpec, **hp: Any) -> Cost:
        return self._cost(spec, self.resolve(spec, **hp))

    def build(self, spec: LayerSpec, **hp: Any) -> nn.Module:
        """The bare block: exactly the convolutions the closed form counts."""
        return self._build(spec, self.resolve(spec, **hp))

    def block(self, spec: LayerSpec, bias: bool = False, **hp: Any) -> nn.Module:
        """The block the paper's experiments put in a model in place of a standard conv."""
        return self._block(spec, self.resolve(spec, **hp), bias)

    def display_name(self, short: bool = False, **hp: Any) -> str:
        """The one label of a configured type: "FALCON (k=2)", "ShuffleUnit (g=2, α=1)"; ``short`` (run lists
        and legends): "FALCON k=2", and the bare label when no hyper-parameter is given."""
        if short and (not hp or (self.ranked and any(hp.get(n) is None for n in self.rank_names))):
            return self.label
        if short and self.ranked:
            symbols = {h.name: h.symbol or h.name for h in self.hparams}
            return f"{self.label} " + " ".join(f"{symbols[n]}={int(hp[n])}" for n in self.rank_names)
        resolved = self.resolve(**hp)
        if not resolved:
            return self.label
        return f"{self.label} (" + ", ".join(f"{h.symbol or h.name}={resolved[h.name]:g}" for h in self.hparams) + ")"


# ----------------------------------------------------------------------------------------------
# closed forms (docs/method.md §2): H, W input; H', W' output; stride only in the D×D conv
def _standard_cost(s: LayerSpec, hp: dict) -> Cost:
    hw_out = s.out_height * s.out_width
    return Cost.of(CostPart("D×D conv M→N", s.D**2 * s.M * s.N, hw_out * s.D**2 * s.M * s.N))


def _dsconv_cost(s: LayerSpec, hp: dict) -> Cost:
    hw_out = s.out_height * s.out_width
    return Cost.of(
        CostPart("depthwise D×D on M", s.D**2 * s.M, hw_out * s.D**2 * s.M),
        CostPart("pointwise M→N", s.M * s.N, hw_out * s.M * s.N),
        times=hp["rank"],
    )


def _falcon_cost(s: LayerSpec, hp: dict) -> Cost:
    hw_in, hw_out = s.height * s.width, s.out_height * s.out_width
    return Cost.of(
        CostPart("pointwise M→N", s.M * s.N, hw_in * s.M * s.N),
        CostPart("depthwise D×D on N", s.D**2 * s.N, hw_out * s.D**2 * s.N),
        times=hp["rank"],
    )


def _mobilev2_cost(s: LayerSpec, hp: dict) -> Cost:
    t = expanded_channels(s.M, hp["expansion"])
    hw_in, hw_out = s.height * s.width, s.out_height * s.out_width
    return Cost.of(
        CostPart("pointwise M→T", s.M * t, hw_in * s.M * t),
        CostPart("depthwise D×D on T", s.D**2 * t, hw_out * s.D**2 * t),
        CostPart("pointwise T→N", t * s.N, hw_out * t * s.N),
    )


def _shuffle_cost(s: LayerSpec, hp: dict) -> Cost:
    g = hp["groups"]
    m, n, b = shuffle_widths(s, hp["width_mult"])
    hw_in, hw_out = s.height * s.width, s.out_height * s.out_width
    return Cost.of(
        CostPart("group pointwise M'→B", m * b // g, hw_in * m * b // g),
        CostPart("depthwise D×D on B", s.D**2 * b, hw_out * s.D**2 * b),
        CostPart("group pointwise B→N'", b * n // g, hw_out * b * n // g),
    )


def _tucker2_cost(s: LayerSpec, hp: dict) -> Cost:
    r3, r4 = hp["rank_in"], hp["rank_out"]
    hw_in, hw_out = s.height * s.width, s.out_height * s.out_width
    return Cost.of(
        CostPart("pointwise M→R₃", s.M * r3, hw_in * s.M * r3),
        CostPart("D×D conv R₃→R₄", s.D**2 * r3 * r4, hw_out * s.D**2 * r3 * r4),
        CostPart("pointwise R₄→N", r4 * s.N, hw_out * r4 * s.N),
    )


def _cp_cost(s: LayerSpec, hp: dict) -> Cost:
    r = hp["rank"]
    hw_in, rows, hw_out = s.height * s.width, s.out_height * s.width, s.out_height * s.out_width
    return Cost.of(
        CostPart("pointwise M→R", s.M * r, hw_in * s.M * r),
        CostPart("depthwise D×1 on R", s.D * r, rows * s.D * r),
        CostPart("depthwise 1×D on R", s.D * r, hw_out * s.D * r),
        CostPart("pointwise R→N", r * s.N, hw_out * r * s.N),
    )


def _spatial_cost(s: LayerSpec, hp: dict) -> Cost:
    k = hp["rank"]
    rows, hw_out = s.out_height * s.width, s.out_height * s.out_width
    return Cost.of(
        CostPart("D×1 conv M→K", s.D * s.M * k, rows * s.D * s.M * k),
        CostPart("1×D conv K→N", s.D * k * s.N, hw_out * s.D * k * s.N),
    )


# ----------------------------------------------------------------------------------------------
# validation
def _check_mobilev2(s: LayerSpec, hp: dict) -> None:
    t = expanded_channels(s.M, hp["expansion"])
    if t < 1:
        raise FalconError(
            f"expansion {hp['expansion']:g} gives int(t·M) = int({hp['expansion']:g}·{s.M}) = {t} hidden channels; "
            f"use t ≥ {1 / s.M:.3g}"
        )


def _check_shuffle(s: LayerSpec, hp: dict) -> None:
    g, a = hp["groups"], hp["width_mult"]
    m, n, b = shuffle_widths(s, a)
    if m < 1 or b < 1:
        raise FalconError(
            f"ShuffleUnit {a:g}× on {s.M}→{s.N} channels gives M'={m}, bottleneck B=N'/4={b}; "
            "it needs at least 4·g output channels"
        )
    for what, value in (("α·M (input channels)", m), ("the bottleneck B = α·N/4", b), ("α·N (output channels)", n)):
        if value % g:
            raise FalconError(f"groups g={g} does not divide {what} = {value}; pick g that divides it")


RANK = HParam("rank", "rank k", int, 1, 1, 256, "number of summed branches (rank-k)", "k", 1)
EXPANSION = HParam("expansion", "expansion ratio t", float, 0.5, 0.01, 16.0, "hidden width T = int(t·M)", "t", 0.05)
GROUPS = HParam("groups", "groups g", int, 2, 1, 64, "groups of the pointwise convolutions", "g", 1)
WIDTH = HParam("width_mult", "width multiplier α", float, 1.0, 0.125, 8.0, "M' = αM, N' = αN", "α", 0.125)


#: The ranks of the tensor decompositions (Tucker-2, CP, spatial low-rank): up to a layer's full rank.
TUCKER_IN = HParam("rank_in", "input rank R₃", int, 8, 1, 65536, "channels after the first 1×1 conv (Tucker-2)", "R₃", 1)
TUCKER_OUT = HParam("rank_out", "output rank R₄", int, 8, 1, 65536, "channels into the last 1×1 conv (Tucker-2)", "R₄", 1)
CP_RANK = HParam("rank", "CP rank R", int, 8, 1, 65536, "components of the CP decomposition", "R", 1)
SPATIAL_RANK = HParam("rank", "rank K", int, 8, 1, 65536, "channels between the D×1 and 1×D convs", "K", 1)


def _fit(fitter: str, ranks: tuple[str, ...], full: Callable[[int, int, int], tuple[int, ...]], formula: str) -> FitRule:
    return FitRule(f"falcon.fits.{fitter}", ranks, lambda n, m, d: dict(zip(ranks, full(n, m, d))), formula)


def _falcon_unused_bn(s: LayerSpec, hp: dict) -> int:
    """The reference FALCON module creates a BatchNorm2d(N) it never uses: 2N parameters."""
    return 2 * s.N


CONV_TYPES: dict[str, ConvType] = {
    c.name: c
    for c in (
        ConvType(
            "standard", "StConv", "#636efa",
            "One D×D convolution from M to N channels: the layer being compressed.",
            (),
            r"D^2 M N", r"H' W' D^2 M N",
            _standard_cost,
            lambda s, hp: _blocks().StandardConv(s),
            lambda s, hp, bias: _blocks().StandardConv(s, bias=bias),
            symbol="star", paper_hparams={},
        ),
        ConvType(
            "falcon", "FALCON", "#ef553b",
            "Pointwise M→N at the input resolution, then depthwise D×D on N with the stride; "
            "rank k sums k such branches. Kernel = EHP along the output channel.",
            (RANK,),
            r"k\,(M N + D^2 N)", r"k\,(H W M N + H' W' D^2 N)",
            _falcon_cost,
            lambda s, hp: _blocks().FalconConv(s, rank=hp["rank"]),
            lambda s, hp, bias: _blocks().FalconConv(s, rank=hp["rank"]),
            fit=_fit("ehp:FALCON", ("rank",), lambda n, m, d: (min(m, d * d),), "min(M, D²)"),
            reference_unused_params=_falcon_unused_bn,
            symbol="circle", paper_hparams={},
            _fuse=lambda block, bn: _fused().fuse_falcon(block, bn),
        ),
        ConvType(
            "dsconv", "DSConv", "#00cc96",
            "MobileNet's depthwise separable conv: depthwise D×D on M with the stride, then pointwise M→N; "
            "rank k sums k branches. Kernel = EHP along the input channel.",
            (RANK,),
            r"k\,(D^2 M + M N)", r"k\,(H' W' D^2 M + H' W' M N)",
            _dsconv_cost,
            lambda s, hp: _blocks().DSConv(s, rank=hp["rank"]),
            lambda s, hp, bias: _blocks().DSConv(s, rank=hp["rank"], inner_bn=True),
            fit=_fit("ehp:DSCONV", ("rank",), lambda n, m, d: (min(n, d * d),), "min(N, D²)"),
            symbol="diamond", paper_hparams={"rank": 1}, bn_into="branches.*.pointwise",
        ),
        ConvType(
            "mobilev2", "MobileConvV2", "#ab63fa",
            "MobileNetV2's inverted residual: pointwise M→T (T = int(t·M)), depthwise D×D, pointwise T→N.",
            (EXPANSION,),
            r"T M + D^2 T + T N,\ T=\lfloor tM \rfloor", r"H W M T + H' W' D^2 T + H' W' T N",
            _mobilev2_cost,
            lambda s, hp: _blocks().MobileConvV2(s, expansion=hp["expansion"]),
            lambda s, hp, bias: _blocks().MobileConvV2(s, expansion=hp["expansion"], paper=True),
            _check=_check_mobilev2,
            symbol="triangle-up", paper_hparams={"expansion": 0.5},
            paper_agreement="MobileConvV2's published parameter counts are reproduced within 0.7% (MACs exactly).",
        ),
        ConvType(
            "shuffle", "ShuffleUnit", "#ffa15a",
            "ShuffleNet's unit: group pointwise αM→B (g groups), channel shuffle, depthwise D×D on "
            "B = αN/4, group pointwise B→αN.",
            (GROUPS, WIDTH),
            r"\frac{M' B}{g} + D^2 B + \frac{B N'}{g}",
            r"H W \frac{M' B}{g} + H' W' D^2 B + H' W' \frac{B N'}{g}",
            _shuffle_cost,
            lambda s, hp: _blocks().ShuffleUnit(s, groups=hp["groups"], width_mult=hp["width_mult"]),
            lambda s, hp, bias: _blocks().ShuffleUnit(s, groups=hp["groups"], width_mult=hp["width_mult"], paper=True),
            _check=_check_shuffle,
            symbol="square", paper_hparams={"groups": 2, "width_mult": 2.0},
            paper_agreement="ShuffleUnit's reference code was never published: the layout used here is the closest "
                            "found to the published counts, which no layout tried reproduces better than ~6–8%.",
            _widens=lambda hp: hp["width_mult"] != 1,
        ),
        ConvType(
            "tucker2", "Tucker-2", "#19d3f3",
            "Tucker-2 decomposition (Kim et al., 2016): pointwise M→R₃, a D×D conv R₃→R₄ with the stride, "
            "pointwise R₄→N. Fitted by HOSVD refined by HOOI; ranks by EVBMF when not given.",
            (TUCKER_IN, TUCKER_OUT),
            r"M R_3 + D^2 R_3 R_4 + R_4 N", r"H W M R_3 + H' W' D^2 R_3 R_4 + H' W' R_4 N",
            _tucker2_cost,
            lambda s, hp: _blocks().Tucker2Conv(s, hp["rank_in"], hp["rank_out"]),
            lambda s, hp, bias: _blocks().Tucker2Conv(s, hp["rank_in"], hp["rank_out"], bias=bias),
            fit=_fit("tucker:TUCKER2", ("rank_in", "rank_out"), lambda n, m, d: (min(m, n * d * d), min(n, m * d * d)),
                     "R₃: min(M, N·D²), R₄: min(N, M·D²)"),
            symbol="pentagon", bn_into="last",
        ),
        ConvType(
            "cp", "CP", "#ff6692",
            "CP decomposition (Lebedev et al., 2015): pointwise M→R, depthwise D×1 then 1×D on R (the stride on "
            "rows, then columns), pointwise R→N. Fitted by ALS (seeded); degenerate fits are refused.",
            (CP_RANK,),
            r"R\,(M + N + 2D)", r"H W M R + H' W D R + H' W' D R + H' W' R N",
            _cp_cost,
            lambda s, hp: _blocks().CPConv(s, hp["rank"]),
            lambda s, hp, bias: _blocks().CPConv(s, hp["rank"], bias=bias),
            fit=_fit("cp:CP", ("rank",), lambda n, m, d: (min(m, n) * d * d,), "min(M, N)·D²"),
            symbol="hexagon", bn_into="last",
        ),
        ConvType(
            "spatial", "Spatial low-rank", "#b6e880",
            "Spatial low-rank (Jaderberg et al., 2014): a D×1 conv M→K with the stride on rows, then a 1×D conv "
            "K→N with the stride on columns. Fitted in closed form by the SVD of the kernel as an (M·D)×(N·D) matrix.",
            (SPATIAL_RANK,),
            r"D K\,(M + N)", r"H' W D M K + H' W' D K N",
            _spatial_cost,
            lambda s, hp: _blocks().SpatialConv(s, hp["rank"]),
            lambda s, hp, bias: _blocks().SpatialConv(s, hp["rank"], bias=bias),
            fit=_fit("spatial:SPATIAL", ("rank",), lambda n, m, d: (d * min(m, n),), "D·min(M, N)"),
            symbol="cross", bn_into="horizontal",
        ),
    )
}

#: Types with a rank k, and types that can be fitted to a trained kernel (the EHP), from the entries' facts.
RANKED: tuple[str, ...] = tuple(n for n, c in CONV_TYPES.items() if c.ranked)
FITTABLE: tuple[str, ...] = tuple(n for n, c in CONV_TYPES.items() if c.fittable)


def variant_names() -> tuple[str, ...]:
    """Every conv type, then the inference form of each type that has one: what a benchmark can time."""
    return (*CONV_TYPES, *(c.fused_name for c in CONV_TYPES.values() if c.fused_name))


def parse_variant(name: str) -> tuple[ConvType, bool]:
    """``"falcon"`` → (the falcon entry, False); ``"falcon-fused"`` → (the falcon entry, True)."""
    if name in CONV_TYPES:
        return CONV_TYPES[name], False
    for c in CONV_TYPES.values():
        if c.fused_name == name:
            return c, True
    raise FalconError(f"unknown conv type {name!r}; choose from {', '.join(variant_names())}")


def variant_label(name: str) -> str:
    """"FALCON", or "FALCON fused" for an inference form."""
    ct, fused = parse_variant(name)
    return f"{ct.label} fused" if fused else ct.label


def label_of(conv: str, hparams: dict[str, Any] | None = None) -> str:
    """"FALCON k=2", "MobileConvV2 (t=0.5)": the short label of a configured type (runs, plans, legends;
    :meth:`ConvType.display_name` with ``short``); hyper-parameters the type does not take are ignored, and an
    unknown name is returned as it is."""
    ct = CONV_TYPES.get(conv)
    if ct is None:
        return conv
    known = {h.name for h in ct.hparams}
    return ct.display_name(short=True, **{k: v for k, v in (hparams or {}).items() if k in known})


def get_conv_type(name: str) -> ConvType:
    try:
        return CONV_TYPES[name]
    except KeyError:
        raise FalconError(f"unknown conv type {name!r}; choose one of {', '.join(CONV_TYPES)}") from None


def all_hparams() -> dict[str, HParam]:
    """Every hyper-parameter of every conv type, by name (the CLI builds its flags from this)."""
    out: dict[str, HParam] = {}
    for c in CONV_TYPES.values():
        for h in c.hparams:
            out.setdefault(h.name, h)
    return out


@dataclass(frozen=True)
class LayerComparison:
    """A conv type's cost next to the standard conv's, for one layer spec."""

    conv: str
    hparams: dict
    cost: Cost
    standard: Cost

    @property
    def compression_rate(self) -> float:
        return self.standard.params / self.cost.params

    @property
    def computation_reduction_rate(self) -> float:
        return self.standard.macs / self.cost.macs


def compare(spec: LayerSpec, conv: str, **hp: Any) -> LayerComparison:
    ct = get_conv_type(conv)
    resolved = ct.resolve(spec, **hp)
    return LayerComparison(conv, resolved, ct._cost(spec, resolved), CONV_TYPES["standard"].cost(spec))


def break_even_rank(spec: LayerSpec, conv: str = "falcon", by: str = "params") -> int:
    """The smallest rank k at which rank-k ``conv`` costs at least as much as the standard conv.

    Ranks below it save; from it on they do not. ``by`` is ``"params"`` or ``"macs"``.
    """
    ct = get_conv_type(conv)
    if not ct.ranked:
        raise FalconError(f"{conv} has no rank")
    std = CONV_TYPES["standard"].cost(spec)
    total = std.params if by == "params" else std.macs
    base = ct.resolve()

    def cost(k: int) -> int:  # the closed form at uniform rank k (past the hyper-parameters' range too)
        c = ct._cost(spec, {**base, **ct.rank_hparams(k)})
        return c.params if by == "params" else c.macs

    hi = 1
    while cost(hi) < total:  # costs grow with the rank: double, then bisect
        hi *= 2
    lo = hi // 2  # cost(lo) < total, or lo == 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) < total else (lo, mid)
    return hi

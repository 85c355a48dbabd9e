"""The registry: closed forms == the built modules' weights == MACs counted on a real forward pass."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from falcon.blocks import ConvBlock
from falcon.convtypes import CONV_TYPES, RANKED, break_even_rank, compare, get_conv_type
from falcon.counting import count_module, count_thop
from falcon.errors import FalconError
from falcon.spec import LayerSpec

N_CONFIGS = 200
#: The tensor decompositions get the sweep the issue asks for (≥ 1,000 configs each, on the meta device).
N_CONFIGS_OF = {"tucker2": 1000, "cp": 1000, "spatial": 1000}


def random_config(conv: str, rng: random.Random) -> tuple[LayerSpec, dict]:
    """A random valid (spec, hparams) for ``conv``; shuffle's channels are drawn to satisfy its groups."""
    while True:
        d = rng.choice([1, 3, 5, 7])
        s = rng.choice([1, 1, 2, 3])
        p = rng.choice([0, d // 2, d // 2 + 1])
        h = rng.randint(max(1, d - 2 * p), 20)
        w = rng.choice([h, rng.randint(max(1, d - 2 * p), 20)])
        m, n = rng.randint(1, 48), rng.randint(1, 48)
        hp: dict = {}
        if conv in ("falcon", "dsconv"):
            hp = {"rank": rng.randint(1, 4)}
        elif conv == "mobilev2":
            hp = {"expansion": rng.choice([0.25, 0.5, 1.0, 2.0, 6.0])}
        elif conv == "shuffle":
            g = rng.choice([1, 2, 3, 4])
            a = rng.choice([0.5, 1.0, 2.0])
            m, n = g * rng.randint(1, 8) * 4, g * rng.randint(1, 6) * 4
            hp = {"groups": g, "width_mult": a}
        elif conv == "tucker2":
            hp = {"rank_in": rng.randint(1, 40), "rank_out": rng.randint(1, 40)}
        elif conv in ("cp", "spatial"):
            hp = {"rank": rng.randint(1, 60)}
        try:
            spec = LayerSpec(m, n, d, h, w, stride=s, padding=p)
            get_conv_type(conv).resolve(spec, **hp)
            return spec, hp
        except FalconError:
            continue


@pytest.mark.parametrize("conv", list(CONV_TYPES))
def test_closed_form_equals_module_and_counted_macs(conv):
    rng = random.Random(f"configs-{conv}")
    ct = CONV_TYPES[conv]
    for _ in range(N_CONFIGS_OF.get(conv, N_CONFIGS)):
        spec, hp = random_config(conv, rng)
        cost = ct.cost(spec, **hp)
        with torch.device("meta"):
            module = ct.build(spec, **hp)
        weights = sum(p.numel() for p in module.parameters())
        in_ch = module.compress.in_channels if conv == "shuffle" else spec.M
        counted = count_module(module, (in_ch, spec.height, spec.width))
        assert (cost.params, cost.macs) == (weights, counted.macs), (conv, spec, hp)
        assert cost.params == sum(p.params for p in cost.parts)
        assert cost.macs == sum(p.macs for p in cost.parts)


@pytest.mark.parametrize("conv", list(CONV_TYPES))
def test_thop_agrees_on_bare_blocks(conv):
    """thop (an independent counter) sees the same MACs on the bare blocks (convs only, no bias)."""
    rng = random.Random(f"thop-{conv}")
    ct = CONV_TYPES[conv]
    for _ in range(10):
        spec, hp = random_config(conv, rng)
        module = ct.build(spec, **hp)
        in_ch = module.compress.in_channels if conv == "shuffle" else spec.M
        t = count_thop(module, (in_ch, spec.height, spec.width))
        cost = ct.cost(spec, **hp)
        assert t.macs == cost.macs and t.params == cost.params
        assert not hasattr(module, "total_ops"), "thop must profile a copy"


@pytest.mark.parametrize("conv", list(CONV_TYPES))
def test_output_shape_is_the_layer_output(conv):
    spec = LayerSpec(8, 16, 3, 9, 7, stride=2, padding=1)
    hp = {"groups": 2, "width_mult": 1.0} if conv == "shuffle" else {}
    module = CONV_TYPES[conv].build(spec, **hp)
    y = module(torch.randn(2, 8, 9, 7))
    assert tuple(y.shape) == (2, 16, *spec.output_size)
    assert isinstance(module, ConvBlock) and module.spec == spec


def test_standard_block_is_a_real_convolution():
    spec = LayerSpec(3, 5, 3, 6, stride=2, padding=0)
    block = CONV_TYPES["standard"].build(spec)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(block(x), nn.functional.conv2d(x, block.conv.weight, stride=2))


def test_formulas_of_method_md_on_a_known_layer():
    # 256→256, 3×3, 32×32: theoretical falcon CRR 8.69× (docs/method.md §5)
    spec = LayerSpec(256, 256, 3, 32)
    c = compare(spec, "falcon")
    assert c.standard.params == 9 * 256 * 256
    assert c.cost.params == 256 * 256 + 9 * 256
    assert c.cost.macs == 32 * 32 * 256 * 256 + 32 * 32 * 9 * 256
    assert round(c.computation_reduction_rate, 2) == 8.69
    # stride 2: falcon's pointwise runs at the input resolution, dsconv's at the output one
    s2 = LayerSpec(64, 128, 3, 16, stride=2)
    assert compare(s2, "falcon").cost.macs == 16 * 16 * 64 * 128 + 8 * 8 * 9 * 128
    assert compare(s2, "dsconv").cost.macs == 8 * 8 * 9 * 64 + 8 * 8 * 64 * 128
    # mobilev2 T = int(t·M); shuffle M' = αM, N' = αN, B = N'/4
    assert compare(s2, "mobilev2", expansion=0.5).cost.params == 64 * 32 + 9 * 32 + 32 * 128
    assert compare(s2, "shuffle", groups=2, width_mult=2.0).cost.params == 128 * 64 // 2 + 9 * 64 + 64 * 256 // 2


def test_formulas_of_the_tensor_decompositions_on_a_known_layer():
    """Tucker-2, CP and spatial low-rank by hand on 64→128, 3×3, stride 2, 16×16 (H' = W' = 8)."""
    s2 = LayerSpec(64, 128, 3, 16, stride=2)
    tucker = compare(s2, "tucker2", rank_in=16, rank_out=32).cost
    assert tucker.params == 64 * 16 + 9 * 16 * 32 + 32 * 128  # M·R₃ + R₃·R₄·D² + R₄·N
    assert tucker.macs == 16 * 16 * 64 * 16 + 8 * 8 * 9 * 16 * 32 + 8 * 8 * 32 * 128
    cp = compare(s2, "cp", rank=10).cost
    assert cp.params == 10 * (64 + 128 + 2 * 3)  # R·(M + N + 2D)
    assert cp.macs == 16 * 16 * 64 * 10 + 8 * 16 * 3 * 10 + 8 * 8 * 3 * 10 + 8 * 8 * 10 * 128  # D×1 on H'×W rows
    spatial = compare(s2, "spatial", rank=12).cost
    assert spatial.params == 3 * 12 * (64 + 128)  # D·K·(M + N)
    assert spatial.macs == 8 * 16 * 3 * 64 * 12 + 8 * 8 * 3 * 12 * 128
    assert CONV_TYPES["tucker2"].display_name(short=True, rank_in=16, rank_out=32) == "Tucker-2 R₃=16 R₄=32"


def test_break_even_rank_of_a_type_whose_cost_is_not_linear_in_the_rank():
    spec = LayerSpec(256, 256, 3, 32)
    std = CONV_TYPES["standard"].cost(spec).params
    for conv in ("tucker2", "cp", "spatial"):
        ct = CONV_TYPES[conv]
        k = break_even_rank(spec, conv)
        assert ct._cost(spec, ct.rank_hparams(k)).params >= std > ct._cost(spec, ct.rank_hparams(k - 1)).params
    assert break_even_rank(spec, "spatial") == 384  # 3·K·512 ≥ 9·256·256 from K = 384 on


def test_rank_scales_linearly():
    spec = LayerSpec(32, 64, 3, 8)
    one = compare(spec, "falcon", rank=1).cost
    three = compare(spec, "falcon", rank=3).cost
    assert (three.params, three.macs) == (3 * one.params, 3 * one.macs)


def test_break_even_rank():
    spec = LayerSpec(256, 256, 3, 32)
    k = break_even_rank(spec, "falcon")
    std = CONV_TYPES["standard"].cost(spec).params
    assert CONV_TYPES["falcon"].cost(spec, rank=k).params >= std > CONV_TYPES["falcon"].cost(spec, rank=k - 1).params
    assert k == 9  # 9·256·256 / (256·256 + 9·256) = 8.69 → rank 9 stops saving
    with pytest.raises(FalconError):
        break_even_rank(spec, "mobilev2")


@pytest.mark.parametrize(
    "kwargs, conv, hp, message",
    [
        (dict(in_channels=0, out_channels=4, kernel_size=3, height=8), "falcon", {}, "in channels must be an integer in 1..16384"),
        (dict(in_channels=4, out_channels=-1, kernel_size=3, height=8), "falcon", {}, "out channels must be an integer in 1..16384"),
        (dict(in_channels=4, out_channels=4, kernel_size=9, height=4, padding=1), "falcon", {}, "larger than the padded input"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, height=8), "falcon", {"rank": 0}, "rank k must be an integer in 1..256"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, height=8), "dsconv", {"rank": 1.5}, "rank k must be an integer"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, height=8), "mobilev2", {"expansion": 0.1}, "int(t·M)"),
        (dict(in_channels=6, out_channels=8, kernel_size=3, height=8), "shuffle", {"groups": 4}, "does not divide"),
        (dict(in_channels=4, out_channels=2, kernel_size=3, height=8), "shuffle", {"groups": 1}, "at least 4·g"),
        (dict(in_channels=4, out_channels=8, kernel_size=3, height=8, stride=0), "falcon", {}, "stride must be an integer in 1..4096"),
    ],
)
def test_invalid_input_gives_one_line_error(kwargs, conv, hp, message):
    with pytest.raises(FalconError) as err:
        CONV_TYPES[conv].cost(LayerSpec(**kwargs), **hp)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_conv_type():
    with pytest.raises(FalconError, match="unknown conv type"):
        get_conv_type("winograd")


def test_every_entry_declares_what_the_app_and_cli_need():
    for ct in CONV_TYPES.values():
        assert ct.label and ct.color.startswith("#") and ct.summary and ct.latex_params and ct.latex_macs
        for h in ct.hparams:
            assert h.minimum <= h.default <= h.maximum
            assert h.coerce(h.default) == h.default


# ---------------------------------------------------------------------------------------------- a new entry
class _GroupedConv(__import__("falcon.blocks", fromlist=["ConvBlock"]).ConvBlock):
    """A throw-away conv type for the registry test: one D×D conv with g groups."""

    conv_type = "toy-grouped"

    def __init__(self, spec, groups):
        import torch.nn as tnn

        super().__init__(spec, {"groups": groups})
        self.conv = tnn.Conv2d(spec.M, spec.N, spec.D, stride=spec.stride, padding=spec.padding, groups=groups,
                               bias=False)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def toy_conv_type(monkeypatch):
    """One more registry entry, added only through the registry (nothing else is edited)."""
    from falcon import convtypes
    from falcon.convtypes import ConvType, Cost, CostPart, HParam

    groups = HParam("groups", "groups g", int, 4, 1, 64, "groups of the D×D conv", "g", 1)

    def cost(s, hp):
        return Cost.of(CostPart("grouped D×D", s.D**2 * s.M * s.N // hp["groups"],
                                s.out_height * s.out_width * s.D**2 * s.M * s.N // hp["groups"]))

    def check(s, hp):
        if s.M % hp["groups"] or s.N % hp["groups"]:
            raise FalconError(f"groups g={hp['groups']} must divide M={s.M} and N={s.N}")

    entry = ConvType("toy-grouped", "Grouped", "#123456", "A grouped D×D conv.", (groups,),
                     r"D^2 M N / g", r"H' W' D^2 M N / g", cost,
                     lambda s, hp: _GroupedConv(s, hp["groups"]), lambda s, hp, bias: _GroupedConv(s, hp["groups"]),
                     _check=check, symbol="x")
    monkeypatch.setitem(convtypes.CONV_TYPES, entry.name, entry)
    return entry


def test_a_new_registry_entry_reaches_calculator_sizing_cli_and_figures(toy_conv_type):
    from falcon import costs
    from falcon.cli import build_parser
    from falcon.counting import count_module
    from falcon.sizing import size_model
    from falcon.views.figures import conv_color, conv_label, conv_symbol
    from falcon.views.tables import layer_table, with_formulas

    spec = LayerSpec(64, 128, 3, 16)
    # the calculator's rows and table
    rows = with_formulas(costs.layer_rows(spec))
    toy = next(r for r in rows if r["conv"] == "toy-grouped")
    assert toy["params"] == 9 * 64 * 128 // 4 and toy["latex_params"] == r"D^2 M N / g"
    assert layer_table(rows).loc["toy-grouped", "CR (params)"] == pytest.approx(4.0)
    # its module counts what its closed form says
    counted = count_module(toy_conv_type.build(spec), (64, 16, 16))
    assert (counted.params, counted.macs) == (toy["params"], toy["macs"])
    # whole-model sizing replaces the model's convs with it
    r = size_model("vgg19-cifar", "toy-grouped", groups=4)
    assert r.params < r.standard.params and r.macs < r.standard.macs
    # the CLI offers it, with its hyper-parameter as a flag
    args = build_parser("layer").parse_args(["layer", "-M", "64", "-N", "128", "-D", "3", "-H", "16", "--conv", "toy-grouped",
                                      "--groups", "8"])
    assert args.conv == "toy-grouped" and args.groups == 8
    # the figures take its colour, label and marker from the registry
    assert (conv_color("toy-grouped"), conv_label("toy-grouped"), conv_symbol("toy-grouped")) == ("#123456", "Grouped", "x")
    # not fittable, not ranked: the lists derived from the registry leave it out
    assert not toy_conv_type.fittable and not toy_conv_type.ranked and "toy-grouped" not in RANKED

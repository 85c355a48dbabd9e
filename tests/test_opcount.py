"""Operator-level counting (falcon/counting.py): torchvision's published figures, attention layers, functional
code, and no silent zeros."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from falcon.counting import MAC_KINDS, count_model, on_meta_without_init
from falcon.models import torchvision_classification_models
from falcon.sizing import build_sized, size_model

WEIGHTS = [(name, w) for name in torchvision_classification_models()
           for w in torchvision.models.get_model_weights(name)]


def _built(name: str, crop: int) -> nn.Module:
    """``name`` on ``meta`` as sizing builds it; a ViT whose weights were trained at another size is built at
    it (its position embedding, hence its parameter count, depends on the image size)."""
    if name.startswith("vit_"):  # built for this crop (the default entry is built for the DEFAULT weights' crop)
        with on_meta_without_init():
            return torchvision.models.get_model(name, weights=None, image_size=crop)
    return build_sized(name, None, crop, "standard")[0]


def _aux_params(name: str) -> int:
    """inception_v3's metadata counts its auxiliary head (a train-only classifier, ``aux_logits=True``), which
    the model as built here (``aux_logits=False``) does not hold; in eval it never runs, so the MACs do not
    include it either way. googlenet's metadata counts no aux heads, like the model built here."""
    if name != "inception_v3":
        return 0
    from torchvision.models.inception import InceptionAux

    with on_meta_without_init():
        return sum(p.numel() for p in InceptionAux(768, 1000).parameters())


@pytest.mark.parametrize("name, weights", WEIGHTS, ids=[f"{n}-{w.name}" for n, w in WEIGHTS])
def test_torchvision_convention_reproduces_the_weights_metadata(name, weights):
    """Every torchvision classification model, at each of its weights' eval crop sizes: the parameters are
    ``meta["num_params"]`` and the ``torchvision`` convention's MACs are ``meta["_ops"]`` (called GFLOPS,
    giga-MACs in fact) to its three decimals: conv, linear and attention MACs without bias adds."""
    crop = weights.transforms.keywords["crop_size"]
    count = count_model(_built(name, crop), (3, crop, crop), "torchvision")
    assert count.params + _aux_params(name) == weights.meta["num_params"]
    assert abs(count.macs / 1e9 - weights.meta["_ops"]) <= 0.0005 + 1e-12, (count.macs, weights.meta["_ops"])
    assert count.macs_by_kind["bias"] == 0
    assert all(n.kind == "bias" for n in count.not_counted), count.not_counted  # only what the rule leaves out


def test_the_bias_adds_are_what_torchvision_leaves_out():
    """squeezenet's convs all have a bias: with them its MACs would miss ``_ops`` by 0.5%."""
    w = torchvision.models.SqueezeNet1_0_Weights.DEFAULT
    clean = size_model("squeezenet1_0", "standard", input_size=224, convention="clean")
    tv = size_model("squeezenet1_0", "standard", input_size=224, convention="torchvision")
    assert clean.macs - tv.macs == clean.count.macs_by_kind["bias"] > 0
    assert round(tv.macs / 1e9, 3) == w.meta["_ops"] != round(clean.macs / 1e9, 3)
    assert [n.kind for n in tv.count.not_counted] == ["bias"]
    assert sum(n.macs for n in tv.count.not_counted) == clean.count.macs_by_kind["bias"]


def _row(count, name):
    return next(u for u in count.units if u.name == name)


def test_vit_attention_layers_have_their_macs():
    """nn.MultiheadAttention runs its projections through F.linear in its own forward: they count, on its row."""
    r = size_model("vit_b_16", "standard", input_size=224, convention="clean")
    tokens, e = 197, 768
    att = _row(r.count, "encoder.layers.encoder_layer_0.self_attention")
    assert att.macs_by_kind == {"conv": 0, "linear": 4 * tokens * e * e, "attention": 2 * tokens * tokens * e,
                                "bias": 4 * tokens * e}
    assert att.macs == sum(att.macs_by_kind.values()) > 0
    assert att.params == 3 * e * e + 3 * e  # in_proj weight and bias (out_proj keeps its own row)
    assert r.count.table()[[u.name for u in r.count.units].index(att.name)]["attention_macs"] == 2 * tokens * tokens * e
    assert r.count.not_counted == []
    paper = size_model("vit_b_16", "standard", input_size=224, convention="paper")
    assert paper.macs == 11_280_354_280  # what the module hooks counted before: the thesis's rule, unchanged
    missing = {(n.op, n.kind): n for n in paper.count.not_counted}
    assert missing[("aten.linear", "linear")].macs == 12 * 4 * tokens * e * e
    assert missing[("aten.linear", "linear")].modules[0] == att.name
    assert missing[("aten.scaled_dot_product_attention", "attention")].calls == 12
    assert paper.macs + sum(n.macs for n in paper.count.not_counted) == r.macs


def test_swin_window_attention_has_its_macs():
    r = size_model("swin_t", "standard", input_size=224, convention="clean")
    att = _row(r.count, "features.1.0.attn")  # ShiftedWindowAttention: F.linear on its qkv/proj weights
    tokens, c, heads, window = 56 * 56, 96, 3, 7 * 7
    assert att.macs_by_kind["linear"] == tokens * c * (3 * c) + tokens * c * c
    assert att.macs_by_kind["attention"] == (tokens // window) * heads * window * window * (c // heads) * 2
    assert att.macs_by_kind["bias"] == tokens * (3 * c + c)
    assert _row(r.count, "features.1.0.attn.qkv").macs == 0  # its forward never runs


class Functional(nn.Module):
    """Everything through functions: F.linear, torch.matmul/@ (with and without a weight), an einsum,
    F.conv2d, and a bias written out as ``x @ W.t() + b``."""

    def __init__(self, c: int = 4, d: int = 6, e: int = 5):
        super().__init__()
        self.w = nn.Parameter(torch.empty(e, d))
        self.b = nn.Parameter(torch.empty(e))
        self.v = nn.Parameter(torch.empty(e, e))
        self.k = nn.Parameter(torch.empty(c, c, 3, 3))
        self.head = nn.Linear(e, 2)

    def forward(self, x):  # x: (1, C, L, D)
        x = F.conv2d(x, self.k, padding=1)
        h = F.linear(x, self.w, self.b)  # (1, C, L, E)
        a = torch.matmul(h, h.transpose(-1, -2))  # (1, C, L, L), parameter-free
        y = torch.einsum("bcij,bcje->bcie", a, h)  # (1, C, L, E), parameter-free
        z = y @ self.v.t() + self.b  # (1, C, L, E), a weight and a bias
        return self.head(z)


def _brute_force(c: int, length: int, d: int, e: int) -> dict[str, int]:
    """One multiply-add per (output element, inner index) of each product, one add per bias output."""
    conv = sum(1 for _ in range(c) for _ in range(length) for _ in range(d) for _ in range(c * 9))
    linear = c * length * e * d + c * length * e * e + c * length * 2 * e
    attention = c * length * length * e + c * length * e * length
    bias = c * length * e + c * length * e + c * length * 2
    return {"conv": conv, "linear": linear, "attention": attention, "bias": bias}


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_functional_code_is_counted_exactly(device):
    c, length, d, e = 4, 7, 6, 5
    with torch.device(device):
        model = Functional(c, d, e)
    if device == "cpu":
        for p in model.parameters():
            nn.init.normal_(p)
    count = count_model(model, (c, length, d), "clean")
    assert count.macs_by_kind == _brute_force(c, length, d, e)
    assert count.macs == sum(_brute_force(c, length, d, e).values())
    assert count.not_counted == []
    root = _row(count, "")  # the model's own forward ran them: it has a row
    assert root.macs == count.macs - _row(count, "head").macs
    assert count.params == sum(p.numel() for p in model.parameters()) == sum(u.params for u in count.units)
    tv = count_model(model, (c, length, d), "torchvision")
    assert tv.macs == count.macs - count.macs_by_kind["bias"]


def test_not_counted_is_listed_never_dropped():
    """Under ``paper`` only nn.Conv/nn.Linear modules count: the functional products are listed, with their MACs."""
    c, length, d, e = 4, 7, 6, 5
    with torch.device("meta"):
        model = Functional(c, d, e)
    paper = count_model(model, (c, length, d), "paper")
    clean = count_model(model, (c, length, d), "clean")
    assert paper.macs == 2 * c * length * e + c * length * 2  # the head's in·out + out only
    ops = {n.op for n in paper.not_counted}
    assert {"aten.conv2d", "aten.linear", "aten.matmul", "aten.bmm"} <= ops  # the einsum runs as a bmm
    assert paper.macs + sum(n.macs for n in paper.not_counted) == clean.macs
    assert all(str(n).startswith(f"{n.op} × {n.calls} in (the model itself)") for n in paper.not_counted)


def test_an_operator_without_a_rule_is_listed():
    class Bilinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.empty(3, 8, 8, device="meta"))

        def forward(self, x):
            x = x.flatten(1)
            return F.bilinear(x, x, self.w)

    count = count_model(Bilinear(), (1, 2, 4), "clean")
    unknown = [n for n in count.not_counted if n.macs is None]
    assert unknown and "cost unknown" in str(unknown[0])


@pytest.mark.parametrize("convention", ["paper", "clean"])
def test_a_plain_cnn_leaves_nothing_out(convention):
    for model in ("resnet18", "vgg19-cifar", "mobilenet_v2"):
        r = size_model(model, "falcon", convention=convention)
        assert r.count.not_counted == [] and r.standard.not_counted == []
        assert r.macs == sum(r.count.macs_by_kind.values()) == sum(u.macs for u in r.count.units)
        assert r.count.macs_by_kind["attention"] == 0


def test_multihead_attention_fast_path_counts_like_meta():
    """On the CPU in inference mode nn.MultiheadAttention runs as one fused operator; it counts the same."""
    counts = []
    for device in ("cpu", "meta"):
        with torch.device(device):
            model = nn.Sequential(nn.Flatten(1, 1), nn.MultiheadAttention(16, 2, batch_first=True))
        model[1].forward = _self_attention(model[1])
        counts.append(count_model(model, (5, 16), "clean"))
    assert counts[0].macs_by_kind == counts[1].macs_by_kind
    assert counts[0].macs_by_kind["attention"] == 2 * 5 * 5 * 16 > 0


def _self_attention(mha):
    forward = mha.forward

    def self_attention(x):
        return forward(x, x, x, need_weights=False)[0]
    return self_attention


def test_rows_and_totals_agree_under_every_convention():
    for convention in ("paper", "clean", "torchvision"):
        r = size_model("convnext_tiny", "falcon", convention=convention)
        table = r.count.table()
        assert sum(row["macs"] for row in table) == r.macs
        for kind in MAC_KINDS:
            assert sum(row[f"{kind}_macs"] for row in table) == r.count.macs_by_kind[kind]
        d = r.count.as_dict()
        assert d["macs_by_kind"] == r.count.macs_by_kind and isinstance(d["not_counted"], list)

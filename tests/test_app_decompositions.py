"""The app's pages read the registry: Tucker-2, CP and spatial low-rank show up in the calculator, sizing (with
its budget) and the fit page, with the library's numbers, and nothing crashes."""
from __future__ import annotations

import pytest

from falcon.convtypes import CONV_TYPES, compare
from falcon.spec import LayerSpec
from test_app import assert_clean, cost_table, metrics, open_page

NEW = ("tucker2", "cp", "spatial")


def test_calculator_shows_the_new_types_with_formulas_and_counts():
    at = open_page("calculator")
    table = cost_table(at)
    spec = LayerSpec(256, 256, 3, 32)
    for conv in NEW:
        ct = CONV_TYPES[conv]
        c = compare(spec, conv)
        row = table[ct.display_name(**c.hparams)]
        assert row["params"] == f"{c.cost.params:,}" and row["macs"] == f"{c.cost.macs:,}"
        assert row["latex_params"] == ct.latex_params and row["latex_macs"] == ct.latex_macs
    be = next(md.value for md in at.markdown if "stops saving" in md.value)
    assert "**Tucker-2**" in be and "**CP**" in be and "**Spatial low-rank**" in be


@pytest.mark.parametrize("conv", NEW)
def test_sizing_and_budget_with_the_new_types(conv):
    from falcon.sizing import size_for_target, size_model

    at = open_page("sizing", model="resnet18", conv=conv)
    r = size_model("resnet18", conv)
    assert metrics(at)["parameters"] == f"{r.params:,}" and metrics(at)["MACs per image"] == f"{r.macs:,}"
    budget = size_for_target("resnet18", conv, crr=4)
    assert any(budget.summary() == s.value for s in at.success)


@pytest.mark.parametrize("conv, method", [("tucker2", "hooi"), ("tucker2", "hosvd"), ("cp", "als"), ("spatial", "svd")])
def test_fit_page_with_the_new_types(conv, method):
    from falcon.fits import fit_kernel
    from falcon.probe import load_for_fit

    at = open_page("ehp_fit", layer="features.10", fit=conv, k=3, **{f"method_{conv}": method})
    assert_clean(at)
    fit = fit_kernel(load_for_fit("digits-vgg").kernel("features.10"), conv, 3, method)
    assert metrics(at)["relative error"] == f"{fit.relative_error:.4f}"
    assert metrics(at)["full rank"] == f"{fit.full_rank}"

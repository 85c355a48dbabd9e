"""The pages' words and numbers that were wrong or silent (issue #20 items 4-5), through AppTest: each is compared
with a number computed here from the library or from scratch, not with a fixed text.

* thop convention: a per-layer chart with bars (it was empty) and a budget ceiling that is not 1.00×;
* the EHP fit summary: "1.4% more weights" where the fit costs more (it said "1.0× fewer");
* the measure hint: the worker's estimate for this model and these settings (it said "about 30 s" for any model);
* upload errors: what is wrong and what to do, without Python's class names (UnpicklingError, KeyError, Tensor);
* gradient descent: the default is paced to be watched (seconds, the error shown as it falls);
* the 95%-energy rank: pointed at on the singular-value chart;
* inputs: a value outside the allowed range, typed or from a link, is refused with the range and the value used;
* links: a layer chosen on Model sizing opens on the EHP fit page and back, a link's unusable value is named.
"""
from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
import torch

from test_app import assert_clean, metrics, open_page, plotly_specs

from falcon.convtypes import compare
from falcon.spec import LayerSpec


def chart_named(at, trace_name: str) -> dict:
    return next(s for s in plotly_specs(at) if any(t.get("name") == trace_name for t in s["data"]))


# ---------------------------------------------------------------------------------------------- thop
def test_thop_convention_fills_the_per_layer_chart_and_the_ceiling():
    """Every bar and the ceiling from thop's own per-module counts of torchvision's resnet18 (profiled here)."""
    import torchvision
    from thop import profile

    at = open_page("sizing", convention="thop")
    total, _, tree = profile(torchvision.models.resnet18().eval(), inputs=(torch.zeros(1, 3, 224, 224),),
                             verbose=False, ret_layer_info=True)

    def thop_macs(name: str) -> float:
        node = (0.0, 0.0, tree)
        for part in name.split("."):
            node = node[2][part]
        return node[0]

    per_layer = chart_named(at, "standard model")
    standard = next(t for t in per_layer["data"] if t["name"] == "standard model")
    names = list(standard["x"])
    assert len(names) > 20 and all(v > 0 for v in standard["y"])  # it was empty: every row 0
    assert standard["y"] == pytest.approx([thop_macs(n) for n in names])
    replaced = [n for n in names if "conv" in n and n != "conv1"]  # FALCON replaces every conv but the stem
    ceiling = total / (total - sum(thop_macs(n) for n in replaced))
    budget = next(s for s in plotly_specs(at) if s["layout"].get("title", {}).get("text", "").startswith("CRR by rank"))
    texts = [a["text"] for a in budget["layout"].get("annotations", [])]
    assert f"ceiling {ceiling:.2f}× (replaced convs free)" in texts and "ceiling 1.00×" not in " ".join(texts)


# ---------------------------------------------------------------------------------------------- EHP fit summary
def test_fit_summary_says_more_when_the_fit_costs_more():
    """features.14 of digits-vgg (64→128, 3×3) at FALCON rank 8: 8·(64·128 + 9·128) = 74,752 > 73,728 weights."""
    at = open_page("ehp_fit", layer="features.14", k=8)
    c = compare(LayerSpec(64, 128, 3, 8), "falcon", rank=8)
    assert c.cost.params > c.standard.params
    summary = next(m.value for m in at.markdown if m.value.startswith("Layer **features.14**"))
    more = f"{c.cost.params / c.standard.params - 1:.1%} more weights"
    assert more in summary and more == "1.4% more weights"  # the case, computed
    assert "× fewer**" not in summary
    at = open_page("ehp_fit", layer="features.14", k=1)
    c = compare(LayerSpec(64, 128, 3, 8), "falcon", rank=1)
    assert f"{c.standard.params / c.cost.params:.1f}× fewer weights" in next(
        m.value for m in at.markdown if m.value.startswith("Layer **features.14**"))


# ---------------------------------------------------------------------------------------------- measure hint
@pytest.mark.parametrize("model", ["digits-vgg", "resnet18"])
def test_measure_hint_is_the_estimate_for_this_model(model, monkeypatch):
    import streamlit as st

    from falcon.modelbench import DEFAULT_ROUNDS
    from falcon.models import registry_entry
    from falcon.worker import estimate_model

    monkeypatch.setattr("falcon.worker.busy_factor", lambda device="auto": 1.7)  # the page's and the test's alike
    st.cache_data.clear()
    at = open_page("sizing", model=model)
    hint = next(i.value for i in at.info if i.value.startswith("Press Measure."))
    entry = registry_entry(model, "test")
    e = estimate_model(entry, [("falcon", {"rank": 1})], entry.input_size, entry.default_classes, ("eager",), "auto",
                       1, torch.get_num_threads(), DEFAULT_ROUNDS, 0.2)
    assert e.describe() in hint and "about 30 s" not in hint.replace(e.describe(), "")


# ---------------------------------------------------------------------------------------------- uploads
def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("name, data, says", [
    ("random", b"\x00\x01garbage" * 100, "neither the zip archive nor the pickle that torch.save writes"),
    ("text", b"hello world\n" * 10, "it is a text file"),
    ("list", _saved([1, 2, 3]), "holds a list, not a state_dict"),
    ("tensor", _saved(torch.zeros(3)), "holds a single tensor, not a state_dict"),
], ids=["random", "text", "list", "tensor"])
def test_upload_errors_say_what_is_wrong_in_words(name, data, says):
    at = open_page("ehp_fit", source="checkpoint", ckpt_model="digits-vgg", clean=False)
    at.file_uploader(key="ckpt_file").set_value(("model.pt", data, "application/octet-stream")).run()
    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert says in message and "torch.save(model.state_dict(), path)" in message
    assert not re.search(r"\b\w+Error\b|KeyError|Unsupported operand|\bTensor\b|holds list,", message), message


# ---------------------------------------------------------------------------------------------- gradient descent
def test_gradient_descent_default_is_paced_to_be_watched():
    from falcon.ehp import GD_STEPS

    at = open_page("ehp_fit", method_falcon="gd")
    assert at.session_state["gd_pace"] == "watch" and int(at.number_input(key="gd_steps").value) == GD_STEPS
    at.button(key="gd_start").click().run()
    time.sleep(2.0)
    at.run()
    job = at.session_state["fit_job"]
    assert job.running and 0 < len(job.records) < GD_STEPS  # still going after 2 s, its error recorded live
    assert re.search(r"step \d+ / 600: relative error 0\.\d{5}", job.label)
    deadline = time.monotonic() + 60
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.3)
    at.run()
    at.run()
    assert job.seconds >= 8.0 and job.result.steps == GD_STEPS
    assert any("paced to be watched" in c.value and "finished after 600 steps" in c.value for c in at.caption)
    assert job.seconds - job.paused < job.seconds / 2  # most of the time was the pace, not the fit


# ---------------------------------------------------------------------------------------------- 95% energy
def test_energy_chart_points_at_the_95_percent_ranks():
    """The ranks from the kernel's own singular values: per output channel n, K[n] as an M × D² matrix."""
    from falcon.probe import load_for_fit

    at = open_page("ehp_fit", layer="features.10")
    kernel = load_for_fit("digits-vgg").kernel("features.10").double()
    s = torch.linalg.svdvals(kernel.reshape(kernel.shape[0], kernel.shape[1], -1))  # (N, min(M, D²))
    energy = (s ** 2).cumsum(1) / (s ** 2).sum(1, keepdim=True)
    median = int(np.argmax(np.median(energy.numpy(), axis=0) >= 0.95 - 1e-12)) + 1
    worst = int(np.argmax(energy.numpy().min(axis=0) >= 0.95 - 1e-12)) + 1
    chart = chart_named(at, "median channel")
    texts = [a["text"] for a in chart["layout"]["annotations"]]
    if median == worst:
        assert f"95%: median and every channel from k={median}" in texts
    else:
        assert f"95%: median from k={median}" in texts and f"95%: every channel from k={worst}" in texts


# ---------------------------------------------------------------------------------------------- inputs
def test_a_typed_value_outside_the_range_is_refused_with_the_range():
    from falcon.limits import bound

    at = open_page("calculator")
    at.number_input(key="M").set_value(20000).run()
    (message,) = [e.value for e in at.error]
    assert bound("channels").describe() in message and "got 20000" in message and "Using in channels M = 256" in message
    assert any(c.value.startswith("Layer: 256→256") for c in at.caption)  # the numbers below: M = 256, said
    at.number_input(key="M").set_value(64).run()
    assert_clean(at)
    at.number_input(key="M").set_value(0).run()
    assert "Using in channels M = 64" in at.error[0].value  # the last good value, named


@pytest.mark.parametrize("page, query, says", [
    ("calculator", {"M": "99999"}, "in channels M must be an integer in 1..16384"),
    ("sizing", {"target": "0"}, "target (× fewer) must be a finite number in (0, 10000]"),
    ("ehp_fit", {"k": "0"}, "rank must be an integer in 1.."),
    ("experiments", {"epochs": "5000"}, "epochs must be an integer in 0..1000"),
])
def test_a_links_value_outside_the_range_is_refused_with_the_range(page, query, says):
    at = open_page(page, clean=False, **query)
    assert not at.exception
    assert any(says in e.value and "Using" in e.value for e in at.error), [e.value for e in at.error]


def test_a_links_unknown_choice_is_named():
    at = open_page("sizing", clean=False, model="no-such-model", layer="no.such.layer")
    assert not at.exception and not at.error
    warned = " ".join(w.value for w in at.warning)
    assert "model='no-such-model'" in warned and "showing resnet18" in warned
    assert "layer='no.such.layer'" in warned


# ---------------------------------------------------------------------------------------------- links
def test_a_layer_chosen_in_sizing_links_to_the_ehp_fit_page_and_back():
    at = open_page("sizing", model="digits-vgg", layer="features.7")
    assert any("Chosen layer: **features.7**" in m.value for m in at.markdown)
    chart = chart_named(at, "standard model")
    assert any(a["text"] == "<b>features.7</b>" and a["x"] == "features.7" for a in chart["layout"]["annotations"])
    link = next(p.proto for p in at.get("page_link") if "EHP fit" in p.proto.label)
    query = dict(kv.split("=") for kv in link.query_string.split("&"))
    assert query == {"source": "digits-vgg", "layer": "features.7", "fit": "falcon", "k": "1"}

    fit = open_page("ehp_fit", **query)  # what the link opens
    assert fit.selectbox(key="layer").value == "features.7"
    back = next(p.proto for p in fit.get("page_link") if "Model sizing" in p.proto.label)
    assert dict(kv.split("=") for kv in back.query_string.split("&")) == {
        "model": "digits-vgg", "conv": "falcon", "layer": "features.7", "rank": "1"}

"""Model sizing page (issue #12): the budget answer and its chart, timm models, the default input size's source."""
from __future__ import annotations

import importlib.util

import pytest

from falcon.sizing import size_for_target, size_model
from test_app import assert_clean, metrics, open_page


def test_budget_answers_with_the_librarys_rank():
    at = open_page("sizing", model="resnet18", conv="falcon")
    expected = size_for_target("resnet18", "falcon", crr=4)
    assert any(expected.summary() == s.value for s in at.success)
    at.number_input(key="target").set_value(20.0).run()
    assert_clean(at)
    none = size_for_target("resnet18", "falcon", crr=20)
    assert none.rank is None and any(none.summary() == w.value for w in at.warning)
    at.segmented_control(key="target_metric").set_value("cr").run()
    assert_clean(at)
    assert any("fewer params" in w.value for w in (*at.warning, *at.success))


def test_budget_is_only_for_ranked_types():
    at = open_page("sizing", model="resnet18", conv="mobilev2")
    assert not [n for n in at.number_input if n.key == "target"]


def test_torchvision_default_size_says_where_it_comes_from():
    at = open_page("sizing", model="efficientnet_b7", conv="standard")
    r = size_model("efficientnet_b7", "standard")
    assert r.input_size == 600
    assert metrics(at)["parameters"] == f"{r.params:,}"
    assert any("600×600 input (the eval crop" in c.value for c in at.caption)


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is an optional extra")
def test_timm_models_are_offered_and_sized():
    at = open_page("sizing", model="resnet18", conv="falcon")
    options = at.selectbox(key="model").options
    assert "timm:resnet18" in options and "resnet18  (thesis)" in options
    at.selectbox(key="model").set_value("timm:convnext_atto").run()
    assert_clean(at)
    r = size_model("timm:convnext_atto", "falcon")
    assert metrics(at)["parameters"] == f"{r.params:,}"


def test_every_convention_explains_itself_beside_the_paper():
    from falcon.counting import CONVENTIONS
    from falcon.sizing import VERSUS_PAPER

    assert set(VERSUS_PAPER) == set(CONVENTIONS)
    at = open_page("sizing", model="resnet18", conv="falcon")
    for convention in CONVENTIONS:
        at.segmented_control(key="convention").set_value(convention).run()
        assert_clean(at)
        assert any(VERSUS_PAPER[convention] in c.value for c in at.caption), convention

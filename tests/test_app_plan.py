"""Model sizing → "Where should the budget go?": the page shows the library's plan (same totals, same layers) and
offers it as the JSON that convert --plan reads."""
from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO as ROOT

sys.path.insert(0, str(ROOT / "app"))
from streamlit.testing.v1 import AppTest  # noqa: E402


pytestmark = pytest.mark.usefixtures("isolated_app")


def test_sizing_page_plan_is_the_librarys():
    from falcon.planning import plan_model, uniform_plan
    from falcon.sources import load_model

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.query_params["model"] = "digits-vgg"
    at.run()
    at.switch_page(str(ROOT / "pages" / "sizing.py")).run()
    at.number_input(key="plan_ratio").set_value(3.0).run()
    at.toggle(key="plan_on").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    loaded = load_model("digits-vgg")
    plan = plan_model(loaded, target_ratio=3.0).as_dict()
    uniform = uniform_plan(loaded, target_ratio=3.0).as_dict()
    summary = next(d.value for d in at.dataframe if "predicted error" in d.value.columns)
    rows = {r[""]: r for r in summary.to_dict("records")}
    assert rows["plan"]["MACs"] == plan["after"]["macs"] and rows["plan"]["params"] == plan["after"]["params"]
    assert rows["uniform FALCON"]["MACs"] == uniform["after"]["macs"]
    assert rows["plan"]["predicted error"] == pytest.approx(plan["objective"])
    table = next(d.value for d in at.dataframe if "ranks" in d.value.columns)
    assert list(table["layer"]) == [c["layer"] for c in plan["layers"]]
    assert any(b.label.startswith("Download the plan") for b in at.get("download_button"))


def test_sizing_page_plan_bad_choices_say_what_to_change():
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.query_params["model"] = "digits-vgg"
    at.run()
    at.switch_page(str(ROOT / "pages" / "sizing.py")).run()
    at.multiselect(key="plan_types").set_value([]).run()
    assert not at.exception and at.error
    at.multiselect(key="plan_types").set_value(["falcon", "standard"])
    at.number_input(key="plan_ratio").set_value(900.0).run()
    at.toggle(key="plan_on").set_value(True).run()
    assert not at.exception and at.error and "best reachable" in at.error[0].value, [e.value for e in at.error]

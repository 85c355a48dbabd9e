"""Model sizing's "Measure this model" (issue #13 item 4): the whole-model benchmark from the page, with progress
and Stop, its table, metrics and charts equal to the library's result; the figures' numbers are the breakdown's."""
from __future__ import annotations

import json
import time

import pytest

from falcon.modelbench import CATEGORIES, measure_model
from falcon.views.latency import breakdown_figure, breakdown_parts, layer_speedup_figure, result_frame
from test_app import assert_clean, metrics, open_page, shown_table, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_measured() -> dict:
    return measure_model("digits-vgg", conv="falcon", rank=1, runtimes=("eager",), rounds=1, min_run_time=0.01,
                         threads=1, device="cpu").as_dict()


def test_figures_are_the_breakdowns_numbers(digits_measured):
    c = digits_measured["conversions"][0]
    b = c["breakdown"]
    fig = breakdown_figure(c)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == [breakdown_parts(c)["part"][i] for i in range(len(CATEGORIES))]
    for i, side in enumerate(("original", "converted")):
        stacked = sum(t.x[i] for t in bars)
        assert stacked == pytest.approx(b[f"{side}_total_ms"], rel=1e-6)
    timed = next(t for t in fig.data if t.type == "scatter")
    assert list(timed.x) == [b["original_timed_ms"], b["converted_timed_ms"]]
    layers = layer_speedup_figure(c)
    assert list(layers.data[0].x) == [lt["name"] for lt in b["layers"]]
    assert list(layers.data[1].y) == [lt["mac_ratio"] for lt in b["layers"]]
    frame = result_frame(digits_measured)
    assert len(frame) == len(digits_measured["timings"]) == 4
    conv_rows = frame[frame["model"] == c["label"]]
    for _, row in conv_rows.iterrows():
        s = next(s for s in c["speedups"] if s["runtime"] == row["runtime"] and s["layout"] == row["layout"])
        assert row["speedup"] == pytest.approx(s["speedup"])


def _measure_page(**settings):
    at = open_page("sizing", model="digits-vgg", conv="falcon")
    at.number_input(key="measure_rounds").set_value(settings.get("rounds", 1)).run()
    at.number_input(key="measure_threads").set_value(1).run()
    assert_clean(at)
    return at


def test_measure_this_model_shows_the_librarys_numbers():
    at = _measure_page()
    at.button(key="measure_start").click().run()
    job = wait_for(at, "measure_job", timeout=120)
    at.run()
    assert_clean(at)
    res = job.result
    c = res["conversions"][0]
    m = metrics(at)
    assert m[f"{c['label']}: measured speedup"] == f"{c['best']['speedup']:.2f}×"
    assert m["MAC ratio"] == f"{c['mac_ratio']:.2f}×"
    assert m["Amdahl ceiling (eager)"] == f"{c['breakdown']['amdahl_ceiling']:.2f}×"
    table = shown_table(at, "median_ms")
    assert list(table["median_ms"]) == pytest.approx([t["median_ms"] for t in res["timings"]])
    assert res["model"] == "digits-vgg" and res["rounds"] == 1 and res["threads"] == 1
    assert any(c["breakdown"]["explanation"] == i.value for i in at.info)
    assert json.loads(json.dumps(res))["conversions"][0]["label"] == "FALCON k=1"
    # other settings: the result is not shown as theirs
    at.selectbox(key="conv").set_value("dsconv").run()
    assert_clean(at)
    assert not [x for x in at.metric if x.label.endswith("measured speedup")]


def test_stop_ends_the_measurement_with_what_there_is():
    at = _measure_page(rounds=50)
    at.button(key="measure_start").click().run()
    job = at.session_state["measure_job"]
    deadline = time.monotonic() + 60
    while job.progress < 0.05 and job.running and time.monotonic() < deadline:
        time.sleep(0.2)
    job.stop()
    job = wait_for(at, "measure_job", timeout=120)
    at.run()
    assert_clean(at)
    assert job.result["stopped"]
    assert any("Stopped before the end" in w.value for w in at.warning)


def test_standard_has_nothing_to_measure():
    at = open_page("sizing", model="digits-vgg", conv="standard")
    assert not [b for b in at.button if b.key == "measure_start"]
    assert any("pick another conv type" in c.value for c in at.caption)

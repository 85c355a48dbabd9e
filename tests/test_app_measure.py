"""Model sizing's "Measure this model" (issue #13 item 4): the whole-model benchmark from the page, with progress
and Stop, its table, metrics and charts equal to the library's result; the figures' numbers are the breakdown's."""
from __future__ import annotations

import json
import time

import pytest

from falcon.modelbench import CATEGORIES, CATEGORY_LABELS, measure_model
from falcon.reliability import assess_model
from falcon.views.latency import (breakdown_check, breakdown_figure, breakdown_parts, headline, layer_speedup_figure, run_caption,
                                  sorted_notes, timings_frame)
from test_app import assert_clean, metrics, open_page, plotly_specs, shown_table, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_measured():
    return measure_model("digits-vgg", conv="falcon", rank=1, runtimes=("eager",), rounds=1, min_run_time=0.01,
                         threads=1, device="cpu")


# ---------------------------------------------------------------------------------------------- the library side
def test_stacked_bars_are_the_breakdowns_parts(digits_measured):
    c = digits_measured.as_dict()["conversions"][0]
    b = c["breakdown"]
    fig = breakdown_figure(c)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == [CATEGORY_LABELS[k] for k in CATEGORIES] == list(breakdown_parts(c)["part"])
    assert list(bars[0].x) == ["original", c["label"]] and fig.layout.barmode == "stack"
    for i, side in enumerate(("original", "converted")):
        assert [t.y[i] for t in bars] == [b[f"{side}_ms"][k] for k in CATEGORIES]
        assert sum(t.y[i] for t in bars) == pytest.approx(b[f"{side}_total_ms"], rel=1e-9)
    timed = next(t for t in fig.data if t.type == "scatter")
    assert list(timed.y) == [b["original_timed_ms"], b["converted_timed_ms"]]
    assert [a.text for a in fig.layout.annotations] == [
        f"sum of parts {b[f'{side}_total_ms']:.2f} ms<br>timed median {b[f'{side}_timed_ms']:.2f} ms"
        for side in ("original", "converted")]


def test_layer_chart_and_table_are_the_results(digits_measured):
    res = digits_measured.as_dict()
    c = res["conversions"][0]
    layers = layer_speedup_figure(c)
    macs, measured = layers.data
    assert list(measured.x) == [lt["name"] for lt in c["breakdown"]["layers"]] and len(measured.x) == 5
    assert [measured.base + y for y in measured.y] == pytest.approx([lt["speedup"] for lt in c["breakdown"]["layers"]])
    assert [macs.base + y for y in macs.y] == pytest.approx([lt["mac_ratio"] for lt in c["breakdown"]["layers"]])
    assert [row[2] for row in measured.customdata] == [lt["speedup"] for lt in c["breakdown"]["layers"]]
    frame = timings_frame(digits_measured.rows())
    assert len(frame) == len(res["timings"]) == 4
    assert list(frame["median_ms"]) == [t["median_ms"] for t in res["timings"]]
    assert frame["speedup"].isna().sum() == 2  # the original's rows: "-" in rows()
    for _, row in frame[frame["model"] == c["label"]].iterrows():
        assert row["speedup"] == pytest.approx(c["speedups"][[(s["runtime"], s["layout"]) for s in c["speedups"]]
                                                             .index((row["runtime"], row["layout"]))]["speedup"])
    items = {i["label"]: i for i in headline(res, c)}
    assert items["speedup, eager"]["value"] == digits_measured.conversion.speedup("eager")
    assert items["MAC ratio"]["value"] == c["mac_ratio"]
    assert items["Amdahl ceiling"]["value"] == c["breakdown"]["amdahl_ceiling"]
    assert "1 thread" in run_caption(res) and res["torch_version"] in run_caption(res)
    b = dict(c["breakdown"], original_timed_ms=c["breakdown"]["original_total_ms"],
             converted_timed_ms=c["breakdown"]["converted_total_ms"])
    assert breakdown_check(b)[0] == "caption" and "÷ timed median: 1.00 and 1.00" in breakdown_check(b)[1]
    assert breakdown_check(dict(b, original_timed_ms=b["original_total_ms"] / 5))[0] == "warning"
    assert sorted_notes(["x has random weights", "the machine was busy"]) == [
        ("warning", "the machine was busy"), ("info", "x has random weights")]


# ---------------------------------------------------------------------------------------------- the page
def _measure_page(rounds: int = 1, min_time: float = 0.01, **query):
    at = open_page("sizing", **{"model": "digits-vgg", "conv": "falcon", **query})
    at.number_input(key="measure_rounds").set_value(rounds).run()
    at.number_input(key="measure_threads").set_value(1).run()
    at.number_input(key="measure_min_time").set_value(min_time).run()
    assert_clean(at)
    return at


def test_measure_this_model_shows_the_librarys_numbers():
    at = _measure_page()
    charts_before = len(at.get("plotly_chart"))
    assert at.multiselect(key="measure_runtimes").value == ["eager"]
    assert not at.get("progress") and not [m for m in at.metric if m.label == "MAC ratio"]
    at.button(key="measure_start").click().run()
    job = wait_for(at, "measure_job", timeout=120)
    assert_clean(at)
    res = job.result.as_dict()
    c = res["conversions"][0]
    assert res["model"] == "digits-vgg" and res["rounds"] == 1 and res["threads"] == 1 and res["min_run_time"] == 0.01
    m = metrics(at)
    verdict = assess_model(job.result, load_samples=job.loads, seconds=job.seconds)  # the page's gate, recomputed
    assert m["MAC ratio"] == f"{c['mac_ratio']:.2f}×"
    if verdict.reliable:
        assert m["speedup, eager"] == f"{c['best']['speedup']:.2f}×" == f"{job.result.conversion.speedup('eager'):.2f}×"
        assert m["Amdahl ceiling"] == f"{c['breakdown']['amdahl_ceiling']:.2f}×"
    else:  # a busy shared machine: the figures are not shown as numbers
        assert m["speedup, eager"] == "unreliable" and m["Amdahl ceiling"] == "unreliable"
        assert all(r.split(": ", 1)[-1] in at.warning[0].value for r in verdict.reasons)
    table = shown_table(at, "median_ms")
    assert list(table["median_ms"]) == pytest.approx([r["median_ms"] for r in job.result.rows()])
    assert any(c["breakdown"]["explanation"] == i.value for i in at.info)
    assert any(x.value.startswith(run_caption(res) + " · load average ") for x in at.caption)
    specs = plotly_specs(at)
    assert len(specs) == charts_before + 2  # where the time goes; per replaced layer
    stacked = next(s for s in specs if s["layout"].get("barmode") == "stack")
    assert [t["name"] for t in stacked["data"] if t["type"] == "bar"] == [CATEGORY_LABELS[k] for k in CATEGORIES]
    assert {b.label for b in at.get("download_button")} >= {"JSON", "CSV"}
    assert json.loads(json.dumps(res))["conversions"][0]["label"] == "FALCON k=1"
    # the result survives a rerun, and is not shown as another choice's
    at.run()
    assert metrics(at)["MAC ratio"] == f"{c['mac_ratio']:.2f}×"
    at.selectbox(key="conv").set_value("dsconv").run()
    assert_clean(at)
    assert not [x for x in at.metric if x.label == "MAC ratio"]
    assert any("The last measurement was for digits-vgg with FALCON" in i.value for i in at.info)
    at.selectbox(key="conv").set_value("falcon").run()
    assert metrics(at)["MAC ratio"] == f"{c['mac_ratio']:.2f}×"


def test_stop_ends_the_measurement_with_what_there_is():
    at = _measure_page(rounds=50, min_time=0.2)
    at.button(key="measure_start").click().run()
    job = at.session_state["measure_job"]
    deadline = time.monotonic() + 60
    while "round" not in job.label and job.running and time.monotonic() < deadline:
        time.sleep(0.1)
    at.run()
    assert at.get("progress") and at.button(key="measure_stop")
    at.button(key="measure_stop").click().run()
    job = wait_for(at, "measure_job", timeout=60)
    assert_clean(at)
    assert job.result.stopped and job.seconds < 30
    assert any("Stopped before the end" in w.value for w in at.warning)
    assert shown_table(at, "median_ms") is not None  # the rounds that finished


def test_errors_are_one_line_on_the_page():
    at = open_page("sizing", model="digits-vgg", conv="falcon", size=2048, clean=False)
    assert "digits-vgg at batch 1 is refused" in at.error[0].value  # 2048×2048: minutes
    at.number_input(key="measure_batch").set_value(4096).run()  # refused up front: its estimate is over the limits
    assert not at.exception and at.button(key="measure_start").disabled and "measure_job" not in at.session_state
    [refusal] = [e.value for e in at.error]
    assert refusal.startswith("Measuring digits-vgg at batch 4096 is refused: it would take about ")
    assert "memory limit is" in refusal and "use a smaller input size or batch" in refusal
    at = open_page("sizing", model="digits-vgg", conv="shuffle", width_mult=2.0, clean=False)
    assert not at.exception and any("changes the model's layer widths" in e.value for e in at.error)
    assert at.button(key="measure_start").disabled


def test_standard_has_nothing_to_measure():
    at = open_page("sizing", model="digits-vgg", conv="standard")
    assert at.button(key="measure_start").disabled
    assert any("nothing to compare" in c.value for c in at.caption)


def test_figures_that_cannot_all_be_true_are_shown_as_unreliable(monkeypatch):
    """The measurement function replaced by one returning the issue's busy-machine figures (4.92× measured beside a
    4.59× MAC ratio and a 2.17× Amdahl ceiling, a layer at 86×): the page shows "unreliable" and the reasons, not
    the figures, and a Rerun button that measures again."""
    import fake_measure

    monkeypatch.setattr("falcon.modelbench.measure_model", fake_measure.inconsistent_model_result)
    at = _measure_page()
    at.button(key="measure_start").click().run()
    job = wait_for(at, "measure_job", timeout=120)
    assert not at.exception and not at.error and job.result.conversion.speedup("eager") == 4.92
    m = metrics(at)
    assert m["speedup, eager"] == "unreliable" and m["Amdahl ceiling"] == "unreliable"
    assert m["MAC ratio"] == "4.59×"  # counted, not measured
    assert not any("4.92" in v for v in m.values())
    warning = at.warning[0].value
    assert warning.startswith("**Unreliable**")
    assert "4.92× is above its Amdahl ceiling 2.17×" in warning and "layer features.3 ran 86.00× faster" in warning
    table = shown_table(at, "median_ms")
    assert table[table["model"] == "FALCON k=1"]["speedup"].isna().all()  # no plain number in the table either
    assert any("unreliable measurement in detail" in e.label for e in at.expander)
    rerun = at.button(key="measure_rerun_FALCON k=1")
    rerun.click().run()
    again = at.session_state["measure_job"]
    assert again is not job and again.task == job.task
    wait_for(at, "measure_job", timeout=120)
    assert metrics(at)["speedup, eager"] == "unreliable"


@pytest.mark.parametrize("page, key, label, bound, bad, used", [
    ("calculator", "bench_batch", "batch size", "batch_size", 0, 8),
    ("calculator", "bench_rounds", "rounds", "rounds", 5000, 3),
    ("calculator", "bench_min_time", "s per visit", "min_run_time", 100.0, 0.1),
    ("sizing", "measure_batch", "batch size", "batch_size", 5000, 1),
    ("sizing", "measure_rounds", "rounds", "rounds", 0, None),
    ("sizing", "measure_min_time", "s per visit", "min_run_time", 0.0, 0.2),
], ids=lambda v: v if isinstance(v, str) else None)
def test_measure_settings_refuse_a_bad_value_with_the_range(page, key, label, bound, bad, used):
    """The calculator's and Model sizing's measure settings go through common.number: a value outside
    falcon.limits' bound is refused with the range, and the last good value (the default) is used."""
    from falcon import limits
    from falcon.modelbench import DEFAULT_ROUNDS

    used = DEFAULT_ROUNDS if used is None else used
    at = open_page(page, **({"model": "digits-vgg", "conv": "falcon"} if page == "sizing" else {}))
    at.number_input(key=key).set_value(bad).run()
    assert not at.exception
    b = limits.bound(bound)
    [error] = [e.value for e in at.error]
    assert error.startswith(f"{label} must be {b.describe()} ({b.why}); got {bad!r}")
    assert error.endswith(f"Using {label} = {used:g} instead.")
    assert f"Allowed: {b.describe()}" in at.number_input(key=key).help

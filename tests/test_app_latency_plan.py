"""Model sizing → "Where should the budget go?" with a measured speedup on this machine: the latency plan runs as a
measurement of the server's queue (estimate first, refused above the limit, a waiting user's place, Stop) and the
page shows the library's plan: the same predicted latency and layers as falcon.latency_plan for the same inputs
(a deterministic fake timer in the worker and here), the measured check with its spread, and the plan's JSON."""
from __future__ import annotations

import json
import time

import pytest

import fake_latency
import fake_measure
from test_app import assert_clean, metrics, open_page, shown_table, wait_for

pytestmark = pytest.mark.usefixtures("isolated_app", "one_thread")

TYPES = ["falcon", "tucker2", "standard"]


def _page(speedup: float = 2.0, **query):
    at = open_page("sizing", **{"model": "digits-vgg", "plan_metric": "latency", **query})
    at.number_input(key="plan_speedup").set_value(speedup).run()
    at.number_input(key="plan_rounds").set_value(2).run()
    at.number_input(key="plan_threads").set_value(1).run()
    assert_clean(at)
    return at


def _queue():
    import common

    return common.measurement_queue()


def test_latency_plan_on_the_page_is_the_librarys(monkeypatch):
    from falcon.latency_plan import plan_latency
    from falcon.planning import apply_plan, read_plan
    from falcon.sources import load_model

    monkeypatch.setattr("falcon.latency_job.run_latency_plan", fake_latency.latency_plan_fake_timer)
    at = _page(2.0)
    assert at.selectbox(key="plan_metric").value == "latency" and not at.get("progress")
    assert any(c.value.startswith("Estimate on this machine: planning digits-vgg for a measured speedup at batch 1 "
                                  "takes about ") for c in at.caption)
    at.button(key="plan_latency_start").click().run()
    job = wait_for(at, "plan_latency_job", timeout=180)
    assert_clean(at)
    assert job.status == "completed" and job.estimate is not None and job.ran
    shown = job.result["plan"]

    loaded = load_model("digits-vgg")
    lib = plan_latency(loaded, target_speedup=2.0, types=TYPES, proxy="kernel", rounds=2, threads=1, batch_size=1,
                       timer=fake_latency.fake_timer).as_dict()
    assert shown["latency"]["predicted_ms"] == pytest.approx(lib["latency"]["predicted_ms"], rel=1e-12)
    assert [(c["layer"], c["conv"], c["hparams"]) for c in shown["layers"]] == \
        [(c["layer"], c["conv"], c["hparams"]) for c in lib["layers"]]
    assert shown["latency"]["predicted_ms"] <= shown["latency"]["budget_ms"] * (1 + 1e-9)
    assert shown["latency"]["budget_ms"] == pytest.approx(lib["latency"]["original_ms"] / 2.0)
    # an independent figure: the planned model, built from the shown plan, takes the fake timer's time
    planned, _ = apply_plan(loaded.model, shown)
    x = __import__("torch").randn(1, *loaded.input_size)
    assert shown["latency"]["measured"]["planned_ms"] == pytest.approx(fake_latency.fake_seconds(planned, x) * 1e3)

    m = metrics(at)
    assert m["predicted"] == f"{lib['latency']['predicted_ms']:.3g} ms"
    assert m["original"] == f"{lib['latency']['original_ms']:.3g} ms"
    measured = shown["latency"]["measured"]
    assert m["measured"] == f"{measured['planned_ms']:.3g} ms" and m["measured speedup"] == f"{measured['speedup']:.2f}×"
    table = shown_table(at, "ms plan")
    assert list(table["layer"]) == [c["layer"] for c in lib["layers"]]
    assert list(table["ms plan"]) == pytest.approx([t["plan_ms"] for t in lib["latency"]["layers"]])
    assert list(table["ranks"]) == [", ".join(f"{k}={v}" for k, v in c["hparams"].items()) or "–" for c in lib["layers"]]
    summary = shown_table(at, "IQR (ms)")
    rows = {r[""]: r for r in summary.to_dict("records")}
    assert rows["plan, measured"]["ms"] == pytest.approx(measured["planned_ms"])
    assert rows["plan, measured"]["IQR (ms)"] == 0.0  # the fake timer has no spread
    assert any(s["layout"].get("yaxis", {}).get("title", {}).get("text") == "ms per call, timed alone"
               for s in (json.loads(c.proto.spec) for c in at.get("plotly_chart")))
    download = next(b for b in at.get("download_button") if b.label.startswith("Download the plan"))
    assert download.proto.label.startswith("Download the plan")
    assert read_plan(shown)["latency"]["target"] == {"speedup": 2.0}
    # another target hides the result (it was for 2×) and says so
    at.number_input(key="plan_speedup").set_value(3.0).run()
    assert "measured speedup" not in metrics(at)
    assert any("The last latency plan was for digits-vgg at 2× faster" in i.value for i in at.info)


def test_refused_above_the_limit_starts_nothing(monkeypatch):
    monkeypatch.setenv("FALCON_MEASURE_MAX_S", "3")  # a worker takes longer than that to start
    at = open_page("sizing", model="digits-vgg", plan_metric="latency", clean=False)
    assert not at.exception
    [refusal] = [e.value for e in at.error if e.value.startswith("Planning")]  # (and the model's measure, in a server)
    assert refusal.startswith("Planning digits-vgg for a measured speedup at batch 1 is refused: it would take about ")
    assert "the limit is 3 s" in refusal and "use fewer rounds" in refusal and "allow fewer conv types" in refusal
    assert at.button(key="plan_latency_start").disabled
    assert "plan_latency_job" not in at.session_state and _queue().running() is None


def test_a_waiting_user_sees_their_place_and_stop_ends_it(monkeypatch):
    from falcon.worker import WorkerTask

    monkeypatch.setattr("falcon.latency_job.run_latency_plan", fake_latency.latency_plan_slow_timer)
    other = _queue().submit("another session", WorkerTask(fake_measure.patient, {"seconds": 60.0}), name="other")
    try:
        at = _page(2.0)
        assert any(w.value.startswith("Machine busy (a measurement by another session") for w in at.warning)
        at.button(key="plan_latency_start").click().run()
        job = at.session_state["plan_latency_job"]
        assert job.queued and job.position == 1
        assert "waiting: 1st in line for the machine" in at.get("progress")[0].proto.text
        assert any("yours waits in line for it" in w.value for w in at.warning)
    finally:
        other.stop()
    deadline = time.monotonic() + 60
    while "timing" not in job.label and job.running and time.monotonic() < deadline:
        time.sleep(0.1)
    at.run()
    assert job.running and "timing" in at.get("progress")[0].proto.text
    clicked = time.perf_counter()
    at.button(key="plan_latency_stop").click().run()  # the callback stops it before the page runs
    assert job.wait(5.0) and job.finished_at - clicked < 1.5, (job._stop_at - clicked, job.finished_at - clicked)
    at.run()
    assert_clean(at)
    assert job.status == "stopped" and job.result is None
    assert any(w.value == "Stopped: nothing was planned." for w in at.warning)


def test_reliability_gate_of_a_latency_plan():
    """falcon.reliability.assess_latency_plan: spread from the two timings' IQRs, a speedup far above the MAC ratio,
    too few rounds; a plan with no check has no figure."""
    from falcon.reliability import MAC_RATIO_SLACK, assess_latency_plan

    measured = {"original_ms": 10.0, "original_iqr_ms": 0.3, "planned_ms": 5.0, "planned_iqr_ms": 0.2, "speedup": 2.0,
                "rounds": 7, "load_average": [0.5, 0.5]}
    plan = {"computation_reduction_rate": 3.0, "latency": {"threads": 1, "seconds": 5.0, "measured": measured}}
    good = assess_latency_plan(plan)
    assert good.reliable and good.figures[0].spread == pytest.approx(((0.3 / 10) ** 2 + (0.2 / 5) ** 2) ** 0.5)
    fast = dict(plan, latency={**plan["latency"], "measured": {**measured, "speedup": 3.0 * MAC_RATIO_SLACK + 0.1}})
    assert "faster for a MAC ratio of 3.00×" in assess_latency_plan(fast).reasons[0]
    noisy = dict(plan, latency={**plan["latency"], "measured": {**measured, "planned_iqr_ms": 2.0}})
    assert "spread 40%" in assess_latency_plan(noisy).reasons[0]
    few = dict(plan, latency={**plan["latency"], "measured": {**measured, "rounds": 2}})
    assert "only 2 timed blocks" in assess_latency_plan(few).reasons[0]
    assert assess_latency_plan({"latency": {}}).figures == []


def test_a_measured_check_that_cannot_be_true_is_shown_as_unreliable(monkeypatch):
    monkeypatch.setattr("falcon.latency_job.run_latency_plan", fake_latency.latency_plan_too_fast)
    at = _page(2.0)
    at.button(key="plan_latency_start").click().run()
    job = wait_for(at, "plan_latency_job", timeout=180)
    assert not at.exception and not at.error and job.result["plan"]["latency"]["measured"]["speedup"] == 50.0
    m = metrics(at)
    assert m["measured"] == "unreliable" and m["measured speedup"] == "unreliable"
    assert m["predicted"] == f"{job.result['plan']['latency']['predicted_ms']:.3g} ms"  # a prediction, not measured
    warning = next(w.value for w in at.warning if w.value.startswith("**Unreliable**"))
    assert "50.00× faster for a MAC ratio of" in warning and "spread 40%" in warning
    rows = {r[""]: r for r in shown_table(at, "IQR (ms)").to_dict("records")}
    assert rows["plan, measured"]["speedup"] is None or rows["plan, measured"]["speedup"] != rows["plan, measured"]["speedup"]
    assert at.button(key="plan_latency_rerun")


def test_real_timing_shows_the_jobs_result():
    """The layer bench's timer in the worker (rounds 1, one thread): the plan meets its predicted budget, and what
    the page shows is the job's result."""
    at = _page(1.5)
    at.number_input(key="plan_rounds").set_value(1).run()
    at.button(key="plan_latency_start").click().run()
    job = wait_for(at, "plan_latency_job", timeout=300)
    assert not at.exception and job.status == "completed", job.error
    lat = job.result["plan"]["latency"]
    assert lat["threads"] == 1 and lat["rounds"] == 1 and lat["target"] == {"speedup": 1.5}
    assert lat["predicted_ms"] <= lat["budget_ms"] == pytest.approx(lat["original_ms"] / 1.5)
    assert sum(t["plan_ms"] for t in lat["layers"]) + lat["overhead_ms"] == pytest.approx(lat["predicted_ms"])
    m = metrics(at)
    assert m["predicted"] == f"{lat['predicted_ms']:.3g} ms" and m["original"] == f"{lat['original_ms']:.3g} ms"
    assert m["measured"] in ("unreliable", f"{lat['measured']['planned_ms']:.3g} ms")
    table = shown_table(at, "ms plan")
    assert list(table["ms plan"]) == pytest.approx([t["plan_ms"] for t in lat["layers"]])
    assert list(table["ms before"]) == pytest.approx([t["keep_ms"] for t in lat["layers"]])


def test_an_unreachable_target_says_the_best_reachable(monkeypatch):
    monkeypatch.setattr("falcon.latency_job.run_latency_plan", fake_latency.latency_plan_fake_timer)
    at = _page(50.0)
    at.button(key="plan_latency_start").click().run()
    job = wait_for(at, "plan_latency_job", timeout=180)
    assert not at.exception and job.status == "failed" and job.trace is None  # a FalconError: one line
    [error] = [e.value for e in at.error]
    assert error.startswith("The latency plan failed: no plan of digits-vgg with ") and "reaches a 50× speedup" in error
    assert "the best reachable is" in error
    assert "measured speedup" not in metrics(at)

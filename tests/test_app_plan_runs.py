"""The Experiments page fine-tunes a per-layer plan (#22): uploaded as a JSON file (data only, checked before anything
runs) or made on Model sizing in the same session; the run is stored like any run and listed by its plan's label. And
the Accuracy page hides the runs of a sweep still running in another session (#20)."""
from __future__ import annotations

import json
import time

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from test_app import PAGE, ROOT, TIMEOUT, assert_clean, open_page, shown_table, wait_runner  # (puts app/ on the path)

import common  # noqa: E402  (app/common.py: on the path once test_app is imported)
from falcon.experiments.store import list_runs

pytestmark = pytest.mark.usefixtures("one_thread", "isolated_app")

TINY = {"limit_train": 96, "limit_test": 48, "batch_size": 32, "latency": False}


@pytest.fixture(scope="module")
def digits():
    from falcon.sources import load_model

    return load_model("digits-vgg")


@pytest.fixture(scope="module")
def plan3(digits):
    from falcon.planning import plan_model

    plan = plan_model(digits, target_ratio=3).as_dict()
    assert len({c["conv"] for c in plan["layers"]} - {"standard"}) >= 2  # a mixed plan
    return plan


@pytest.fixture
def tiny_runs(monkeypatch):
    """The page's runs on 96 training images, 48 held out, no latency timing: seconds, not minutes."""
    from falcon.experiments import pipeline

    real = pipeline.ExperimentConfig
    st.cache_resource.clear()  # the page's one experiment slot is shared by every session
    orig = real.resolved

    def resolved(self):
        import dataclasses

        return orig(dataclasses.replace(self, **TINY))

    monkeypatch.setattr(real, "resolved", resolved)
    yield
    st.cache_resource.clear()


def upload(at, name: str, raw: bytes):
    at.segmented_control(key="mode").set_value("plan").run()
    at.segmented_control(key="plan_from").set_value("upload").run()
    at.file_uploader(key="plan_file").set_value((name, raw, "application/json")).run()
    return at


def test_an_uploaded_plan_is_fine_tuned_and_stored_with_its_label(digits, plan3, tiny_runs):
    from falcon.planning import apply_plan

    at = open_page("experiments")
    at.number_input(key="epochs").set_value(1).run()
    upload(at, "digits-plan.json", json.dumps(plan3).encode())
    assert_clean(at)
    module, _ = apply_plan(digits.model, plan3, "digits-vgg")  # independent of the page and the run
    params = sum(p.numel() for p in module.parameters())
    planned = shown_table(at, "CRR")  # what the run will fine-tune, before it runs
    assert list(planned["conv type"]) == ["plan (macs 3×)"] and list(planned["params"]) == [params]
    assert "--plan digits-plan.json" in at.code[0].value
    assert not at.button(key="exp_start").disabled
    at.button(key="exp_start").click().run()
    runner = wait_runner(at, 180)
    assert_clean(at)
    assert runner.snapshot()["status"] == "completed"
    [run] = list_runs()
    assert run["status"] == "completed" and run["conv"] == "plan" and run["sweep_id"] == runner.sweep_id
    assert run["params"] == params == plan3["after"]["params"] and run["macs"] == plan3["after"]["macs"]
    assert run["metrics"]["plan"]["label"] == "plan (macs 3×)"
    assert [c["layer"] for c in run["config"]["plan"]["layers"]] == \
        [c["layer"] for c in plan3["layers"] if c["conv"] != "standard"]
    assert {t["name"] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]} >= {"plan (macs 3×)"}
    points = shown_table(open_page("accuracy"), "pareto")  # on the Accuracy page with its label
    ours = points[points["source"] == "ours"]
    assert set(ours["method_label"]) == {"StConv", "plan (macs 3×)"}
    assert list(ours.loc[ours["method_label"] == "plan (macs 3×)", "top1"]) == [100 * run["finetuned_accuracy"]]


@pytest.mark.parametrize("make, words", [
    (lambda p: b"{not json", "is not JSON"),
    (lambda p: json.dumps([1, 2]).encode(), "is not a plan made by"),
    (lambda p: json.dumps(dict(p, model="resnet18")).encode(), "made for 'resnet18'"),
    (lambda p: json.dumps(dict(p, layers=[{"layer": "features.4", "conv": "falcon", "hparams": {"rank": 1}}])).encode(),
     "a BatchNorm2d, not a conv"),
    (lambda p: json.dumps(dict(p, layers=[{"layer": "features.3", "conv": "falcon", "hparams": {"rank": "__import__('os')"}}])).encode(),
     "rank"),
])
def test_a_bad_plan_upload_is_one_error_and_nothing_runs(plan3, tiny_runs, make, words):
    at = upload(open_page("experiments"), "bad.json", make(plan3))
    assert not at.exception
    assert len(at.error) == 1 and words in at.error[0].value and "bad.json" in at.error[0].value, \
        [e.value for e in at.error]
    assert not [b for b in at.button if b.key == "exp_start"]  # nothing can be started
    assert common.experiment_slot().job("local") is None and list_runs() == []


def test_the_plan_from_model_sizing_is_offered_in_the_same_session(plan3, tiny_runs):
    at = open_page("experiments")
    at.segmented_control(key="mode").set_value("plan").run()
    assert_clean(at)
    assert at.segmented_control(key="plan_from").value == "upload"  # none made yet
    at.segmented_control(key="plan_from").set_value("sizing").run()
    assert "No plan made in this session yet" in at.info[0].value and at.button(key="exp_start").disabled
    at.session_state[common.Keys.SIZING_PLAN] = {"model": "digits-vgg", "plan": plan3}  # what the panel keeps
    at.run()
    assert_clean(at)
    assert list(shown_table(at, "CRR")["conv type"]) == ["plan (macs 3×)"]
    assert "--plan digits-vgg-plan.json" in at.code[0].value and not at.button(key="exp_start").disabled
    at.session_state[common.Keys.SIZING_PLAN] = {"model": "resnet18", "plan": dict(plan3, model="resnet18")}
    at.run()
    assert len(at.error) == 1 and "is for resnet18" in at.error[0].value


def test_model_sizing_keeps_its_plan_for_the_experiments_page():
    at = open_page("sizing", model="digits-vgg")
    at.toggle(key="plan_on").set_value(True).run()
    assert_clean(at)
    kept = at.session_state[common.Keys.SIZING_PLAN]
    assert kept["model"] == "digits-vgg" and kept["plan"]["layers"]
    links = [p for p in at.get("page_link") if "Fine-tune this plan" in p.proto.label]
    assert len(links) == 1


# ---------------------------------------------------------------------------------------------- #20 leftover
def page_as(owner: str, name: str) -> AppTest:
    """``name`` opened by the session ``owner`` (AppTest gives every session one id: common.session_id is patched)."""
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=TIMEOUT)
    at.session_state["_test_owner"] = owner
    at.run()
    at.switch_page(PAGE[name].path).run()
    assert_clean(at)
    return at


def test_accuracy_page_hides_a_sweep_still_running_in_another_session(monkeypatch):
    """A's sweep has stored a run and still runs: B's Accuracy page leaves it out and says so; once it ends, B sees it."""
    from falcon.experiments.pipeline import ExperimentConfig
    from falcon.experiments.sweep import SweepRunner

    st.cache_resource.clear()
    monkeypatch.setattr(common, "session_id", lambda: st.session_state.get("_test_owner", "local"))
    cfg = {"epochs": 1, "limit_train": 64, "limit_test": 32, "batch_size": 32, "latency": False, "threads": 1}
    configs = [ExperimentConfig(conv="falcon", hparams={"rank": 1}, **cfg).resolved(),
               ExperimentConfig(conv="falcon", hparams={"rank": 2}, epochs=500, **{k: v for k, v in cfg.items()
                                                                                   if k != "epochs"}).resolved()]
    slot = common.experiment_slot()
    runner = slot.start("A", SweepRunner(configs))
    try:
        deadline = time.monotonic() + 120
        while not list_runs(status="completed") and time.monotonic() < deadline:  # A's first run is stored
            time.sleep(0.2)
        assert runner.running, "the sweep ended before B could look"
        slot.seen("A")
        b = page_as("B", "accuracy")
        points = shown_table(b, "pareto")
        assert not (points["source"] == "ours").any()  # none of A's runs
        assert "1 run of a sweep still running elsewhere is hidden until it ends." in [c.value for c in b.caption]
        a = page_as("A", "accuracy")  # A's own page shows its runs
        assert (shown_table(a, "pareto")["source"] == "ours").any()
        assert not [c for c in a.caption if "hidden until it ends" in c.value]
    finally:
        runner.stop()
        assert runner.wait(60)
    b.run()
    assert_clean(b)
    assert (shown_table(b, "pareto")["source"] == "ours").any()  # everyone's once it has ended
    assert not [c for c in b.caption if "hidden until it ends" in c.value]
    torch.set_num_threads(1)

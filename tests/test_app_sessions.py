"""Two sessions on the Experiments page (issue #20: "a second browser sees the first one's running sweep on the
Experiments page and can stop it"). AppTest gives every session the same id, so each test session gets its own
through ``common.session_id``; the page's experiment slot is the server's one (``st.cache_resource``)."""
from __future__ import annotations

import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from falcon.errors import FalconError
from falcon.experiments.store import list_runs
from test_app import PAGE, ROOT, TIMEOUT, assert_clean, wait_runner  # (puts app/ on the path)

import common  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "isolated_app")


@pytest.fixture
def sessions(monkeypatch):
    st.cache_resource.clear()
    monkeypatch.setattr(common, "session_id", lambda: st.session_state.get("_test_owner", "local"))
    yield
    slot = common.experiment_slot()
    for owner in ("A", "B"):
        job = slot.job(owner)
        if job is not None and not job.done:
            job.stop()
            job.wait(60)
    st.cache_resource.clear()


def session(owner: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=TIMEOUT)
    at.session_state["_test_owner"] = owner
    at.run()
    at.switch_page(PAGE["experiments"].path).run()
    assert_clean(at)
    return at


def texts(at: AppTest) -> str:
    return "\n".join(e.value for kind in ("markdown", "caption", "warning", "info", "success", "error")
                     for e in at.get(kind) if isinstance(getattr(e, "value", None), str))


def stored_ids(at: AppTest) -> list[str]:
    """The run ids the page shows (B has no live table of its own: then only the "Stored runs" table's)."""
    return [i for d in at.dataframe if "run_id" in d.value.columns for i in d.value["run_id"]]


def test_a_second_session_sees_busy_and_cannot_stop_the_sweep(sessions):
    a = session("A")
    b = session("B")  # open before A starts: its Start button is still enabled
    assert not b.button(key="exp_start").disabled
    a.multiselect(key="convs").set_value(["falcon", "dsconv", "mobilev2", "shuffle"]).run()
    a.multiselect(key="ranks").set_value([1]).run()
    a.number_input(key="epochs").set_value(2).run()
    a.button(key="exp_start").click().run()
    runner = a.session_state["exp_runner"]
    deadline = time.monotonic() + 180
    while not runner.snapshot()["results"] and time.monotonic() < deadline:  # A's first run is stored
        time.sleep(0.2)
    assert runner.running, "the sweep ended before the test could look at it from B"
    a.run()
    assert_clean(a)
    assert a.button(key="exp_stop") and a.get("progress")  # A sees its sweep and its Stop

    b.button(key="exp_start").click().run()  # pressed while A's started: refused with the reason
    assert [e.value for e in b.error] == ["The machine is busy with an experiment of another session; wait for it "
                                          "to finish."]
    b.run()
    assert "exp_runner" not in b.session_state  # none of A's job in B's session
    busy = [w.value for w in b.warning if w.value.startswith("Machine busy (an experiment by another session, ")]
    assert len(busy) == 1, [w.value for w in b.warning]
    assert not b.get("progress") and not b.get("plotly_chart")  # no progress, no curves of A's runs
    assert not [i for i in b.info if "Press **Start**" in i.value]  # Start is off: no invitation to press it
    mine = {r["run_id"] for r in list_runs()}  # A's stored runs so far: in the store, not on B's page yet
    assert mine and not mine & set(stored_ids(b)) and mine <= set(stored_ids(a))
    assert not [x for x in b.button if x.key == "exp_stop"]  # no Stop
    assert b.button(key="exp_start").disabled
    slot = common.experiment_slot()
    assert slot.job("B") is None
    with pytest.raises(FalconError, match="belongs to another session"):
        slot.stop("B")
    assert runner.running and not runner.should_stop() and slot.job("A") is runner

    # A stops its own sweep; B's page is free again
    a.button(key="exp_stop").click().run()
    wait_runner(a, 120)
    assert runner.snapshot()["status"] == "stopped"
    b.run()
    assert_clean(b)
    assert not [w for w in b.warning if w.value.startswith("Machine busy")]
    assert not b.button(key="exp_start").disabled
    assert mine <= set(stored_ids(b))  # stored runs are everyone's once the sweep has ended

"""Two browsers on one server (issue #20 item 1), in Debian's chromium through Playwright, all on the issue's
1024→1024, 3×3, 256×256 layer, with the server's limit set by FALCON_MEASURE_MAX_S: at the default settings its
estimate is over the limit and it is refused up front (the estimate and what to change, no worker started); at
batch 1 and one round it is under the limit and A measures it in a worker process; B sees only "machine busy",
cannot stop A's job, waits in line; Stop in A kills the worker (in the middle of a ~minute-long conv) within 2 s.
And the Experiments page: B sees only "machine busy" while A's sweep runs, and closing A's tab ends it.

Run alone: ``pytest tests/test_browser_measure.py`` (a server and a worker on a shared 2-core machine).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

import test_browser as tb
from falcon.ownership import fmt_left
from test_browser import commit, number_input, rerun_after, text_js, wait_done

pytestmark = pytest.mark.browser
browser = tb.browser  # fixture (one browser per module)

BIG = (1024, 1024, 256)
LIMIT_S: int = 0  # the server's limit, set by the fixture


def limit_between() -> int:
    """A limit (seconds) between the big layer's estimates here, at the page's defaults (batch 8, three rounds, both
    layouts, every conv type: hours) and at batch 1, one round (minutes): their geometric mean, so that either side
    keeps its side while the machine gets several times busier or quieter."""
    from falcon.bench import DEFAULT_BENCH_CONVS
    from falcon.convtypes import RANKED
    from falcon.spec import LayerSpec
    from falcon.worker import estimate_layer

    convs = list(dict.fromkeys([*DEFAULT_BENCH_CONVS, *RANKED]))  # the page's preselection
    spec = LayerSpec(*BIG[:2], 3, BIG[2])
    defaults = estimate_layer(spec, convs, 8, "auto", 3, 0.1).seconds
    small = estimate_layer(spec, convs, 1, "auto", 1, 0.1).seconds
    assert defaults > 8 * small
    return int((defaults * small) ** 0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    global LIMIT_S
    LIMIT_S = limit_between()
    yield from tb.serve(tmp_path_factory, FALCON_MEASURE_MAX_S=str(LIMIT_S))


def server_pid(url: str) -> int:
    """The streamlit server serving ``url`` (found by its --server.port)."""
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--server.port" in cmd and cmd[cmd.index(b"--server.port") + 1] == port.encode():
            return int(proc.name)
    raise AssertionError(f"no streamlit process on port {port}")


def workers(parent: int) -> list[int]:
    """The measurement worker processes of ``parent`` (multiprocessing's spawn_main; not its resource tracker)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            out.append(int(proc.name))
    return out


def open_calculator(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(f"{server}/calculator")
    wait_done(page)
    return context, page


def set_layer(page, m: int, n: int, h: int, **measure) -> None:
    """The layer, then the measurement's settings (all in the calculator's inputs' fragment, the estimate under them
    with them). Each layer input is done when the caption shows it."""
    for label, value, shown in (("in channels M", m, f"M={m},"), ("out channels N", n, f"N={n},"),
                                ("input height H", h, f"H×W={h}×{h},")):
        if number_input(page, label).input_value() != str(value):
            commit(page, label, value)
            page.wait_for_function("(t) => document.body.innerText.includes(t)", arg=shown, polling=100)
            wait_done(page)
    for label, value in measure.items():
        if number_input(page, label).input_value() != str(value):
            rerun_after(page, lambda: commit(page, label, value))


def body(page) -> str:
    return page.inner_text("body")


def text_js_fn(fragment: str) -> str:
    return "() => " + text_js(fragment).removeprefix("return ")


def measure_button(page):
    return page.get_by_role("button", name="Measure on")


def test_two_sessions_one_measurement(server, browser):
    pid = server_pid(server)
    ctx_a, a = open_calculator(browser, server)
    ctx_b, b = open_calculator(browser, server)
    try:
        # the layer at the page's defaults: refused up front, with its estimate and what to change
        set_layer(a, *BIG)
        a.wait_for_function("() => document.body.innerText.includes('is refused: it would take about')", timeout=60_000)
        text = body(a)
        assert "measuring 1024→1024, 3×3, stride 1, pad 1, 256×256→256×256 at batch 8 is refused" in text.lower()
        assert f"the limit is {fmt_left(LIMIT_S)}" in text
        assert "use a smaller input size H, batch size or channel count" in text
        assert measure_button(a).is_disabled() and not workers(pid)

        # the same layer at batch 1, one round: under the limit, the estimate beside an enabled button; A measures
        set_layer(a, *BIG, **{"batch size": 1, "rounds": 1})
        a.wait_for_function(text_js_fn("Estimate on this machine: measuring 1024→1024"), timeout=30_000)
        text = body(a)
        assert "is refused" not in text and f"limits: {LIMIT_S} s" in text
        assert measure_button(a).is_enabled()
        rerun_after(a, measure_button(a).click, "return !!document.querySelector(\"[data-testid='stProgress']\")")
        # the worker has started and is in its first warm-up call of the standard conv (about a minute)
        a.wait_for_function("() => /measuring\\s*\\(\\d+ s\\)/.test(document.body.innerText)", timeout=120_000, polling=200)
        [worker] = workers(pid)

        # B: busy, no data of A's job, no Stop; its own measurement waits in line
        b.reload()
        wait_done(b)
        text = body(b)
        assert "Machine busy (a measurement by another session, ~" in text
        assert not re.search(r"measuring\s*\(\d+ s\)|warm-up [A-Z]|round \d+/\d+:", text)  # none of A's data
        assert "1024→1024" not in text and b.get_by_test_id("stProgress").count() == 0
        assert b.get_by_role("button", name="Stop").count() == 0
        rerun_after(b, measure_button(b).click, text_js("1st in line"))
        assert b.get_by_role("button", name="Stop").count() == 1
        assert workers(pid) == [worker]  # one measurement at a time
        rerun_after(b, b.get_by_role("button", name="Stop").click, text_js("Stopped before it started"))

        # Stop in A: the worker is gone within 2 s, whatever kernel it was in
        assert a.get_by_role("button", name="Stop").count() == 1
        t0 = time.perf_counter()
        a.get_by_role("button", name="Stop").click()
        while Path(f"/proc/{worker}").exists() and time.perf_counter() - t0 < 10:  # killed and reaped
            time.sleep(0.02)
        took = time.perf_counter() - t0
        assert took < 2.0, f"the worker was still there {took:.1f} s after Stop"
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)
        assert not workers(pid)
        a.wait_for_function("() => /Stopped (early|during a timing)/.test(document.body.innerText)", timeout=10_000)
        tb.no_exception(a)
        tb.no_exception(b)
        print(f"\nstopped a 1024→1024 256×256 measurement in {took:.2f} s")
    finally:
        ctx_a.close()
        ctx_b.close()


def test_closing_the_tab_ends_its_experiment(server, browser):
    """Experiments (#20): B sees only "machine busy" while A's sweep runs; A's tab closes, and the sweep is ended
    once the server has seen the session stay closed (falcon.ownership.ABSENT_GRACE_S): B's Start is free again."""
    from falcon.ownership import ABSENT_GRACE_S

    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    try:
        a, b = ctx_a.new_page(), ctx_b.new_page()
        for p in (a, b):
            p.set_default_timeout(90_000)
            p.goto(f"{server}/experiments")
            wait_done(p)
        rerun_after(a, a.get_by_role("button", name="Start the sweep").click,
                    "return !!document.querySelector(\"[data-testid='stProgress']\")")
        b.reload()
        wait_done(b)
        assert "Machine busy (an experiment by another session" in body(b)
        assert b.get_by_role("button", name="Stop").count() == 0 and b.get_by_test_id("stProgress").count() == 0
        assert b.get_by_role("button", name="Start the sweep").is_disabled()
        ctx_a.close()
        t0 = time.perf_counter()
        b.wait_for_function("() => !document.body.innerText.includes('Machine busy')", timeout=60_000, polling=250)
        took = time.perf_counter() - t0
        wait_done(b)
        assert ABSENT_GRACE_S <= took < ABSENT_GRACE_S + 10, took
        assert b.get_by_role("button", name="Start the sweep").is_enabled()
        tb.no_exception(b)
        print(f"\nA's sweep ended {took:.1f} s after its tab closed")
    finally:
        ctx_a.close()  # (again: closing a closed context does nothing)
        ctx_b.close()

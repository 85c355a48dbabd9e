"""The app in a real browser: `streamlit run app/main.py` as the README says, every registered page
opened from the sidebar in Debian's chromium through Playwright, one interaction per page.

Screenshots go to test-artifacts/screenshots/, timings to test-artifacts/timings.json.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SHOTS = ARTIFACTS / "screenshots"
CHROMIUM = os.environ.get("FALCON_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DONE = "[data-testid='stApp'][data-test-script-state='notRunning']"

sys.path.insert(0, str(ROOT / "app"))
import common  # noqa: E402  (the page registry)

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run app/main.py --server.headless true --server.port PORT` from the repository root."""
    yield from serve(tmp_path_factory)


def serve(tmp_path_factory, **env_vars: str):
    """The server fixture's body; ``env_vars`` are set in the server's environment (e.g. FALCON_MEASURE_MAX_S)."""
    port = _free_port()
    exe = shutil.which("streamlit", path=str(Path(sys.executable).parent)) or shutil.which("streamlit")
    cmd = [exe] if exe else [sys.executable, "-m", "streamlit"]
    env = {**os.environ, "FALCON_RESULTS_DB": str(tmp_path_factory.mktemp("store") / "results.sqlite"), **env_vars}
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "w+")
    proc = subprocess.Popen(cmd + ["run", "app/main.py", "--server.headless", "true", "--server.port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    else:
        proc.terminate()
        pytest.fail("streamlit did not start in 60 s")
    if proc.poll() is not None:
        log.seek(0)
        pytest.fail(f"streamlit exited: {log.read()[-2000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.seek(0)
    tail = log.read()[-5000:]
    assert "Traceback" not in tail, tail


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`apt-get install chromium`)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def wait_done(page, timeout: float = 60_000) -> None:
    """The script has finished running and nothing is still loading (Streamlit's e2e rule)."""
    page.wait_for_selector(DONE, state="attached", timeout=timeout)
    page.wait_for_function("() => document.querySelectorAll(\"[data-testid='stSkeleton']\").length === 0",
                           timeout=timeout)


OBSERVE = """() => { window.__falconRuns = 0; const app = document.querySelector("[data-testid='stApp']");
  if (window.__falconObserver) window.__falconObserver.disconnect();
  window.__falconObserver = new MutationObserver(() => { if (app.dataset.testScriptState === 'running') window.__falconRuns++; });
  window.__falconObserver.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']}); }"""


def rerun_after(page, action, condition: str = "return true", timeout: float = 60_000, retry: bool = True) -> float:
    """Do ``action`` and wait until the script has run again because of it (a run started and ended)
    and ``condition`` holds; returns the seconds from the action to then. An input that reruns nothing
    within 10 s (a keystroke lost while the page re-rendered) gets the action once more."""
    page.evaluate(OBSERVE)
    t0 = time.perf_counter()
    action()
    check = ("(cond) => { const app = document.querySelector(\"[data-testid='stApp']\");"
             " return window.__falconRuns > 0 && app.dataset.testScriptState === 'notRunning' && (new Function(cond))(); }")
    try:
        page.wait_for_function(check, arg=condition, timeout=10_000 if retry else timeout, polling="raf")
    except sync_api.TimeoutError:
        if not retry or page.evaluate("() => window.__falconRuns") > 0:
            if not retry:
                raise
            page.wait_for_function(check, arg=condition, timeout=timeout, polling="raf")  # a long run: keep waiting
        else:
            page.evaluate(OBSERVE)
            t0 = time.perf_counter()
            action()
            page.wait_for_function(check, arg=condition, timeout=timeout, polling="raf")
    seconds = time.perf_counter() - t0
    wait_done(page)
    return seconds


def no_exception(page) -> None:
    errors = page.locator("[data-testid='stException']")
    assert errors.count() == 0, errors.all_inner_texts()


def shot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside stMain, so the viewport is stretched to its height."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 40, 12000))})
    time.sleep(0.5)  # let plotly redraw at the new size
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size(size)


def open_from_sidebar(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True).click()
    page.wait_for_function("(t) => document.querySelector('h1') && document.querySelector('h1').innerText.includes(t)",
                           arg=title if title != "Overview" else "FALCON Explorer", timeout=60_000)
    wait_done(page)


def charts(page) -> int:
    """Plotly charts that have drawn their figure."""
    return page.locator("[data-testid='stPlotlyChart']:has(.main-svg)").count()


def svg_charts(page) -> int:
    """The calculator's inline SVG charts (falcon/svgcharts.py)."""
    return page.locator("svg.falcon-chart").count()


def tables(page) -> int:
    """Dataframes and markdown tables."""
    return page.locator("[data-testid='stDataFrame'], [data-testid='stMarkdown'] table").count()


def number_input(page, label: str):
    return page.get_by_label(label, exact=True)


def commit(page, label: str, value) -> None:
    box = number_input(page, label)
    box.fill(str(value))
    box.press("Enter")


def text_js(fragment: str) -> str:
    return f"return document.body.innerText.includes({json.dumps(fragment)})"


def test_every_page_in_the_browser(server, browser):
    timings: dict[str, float] = {}
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(60_000)
    outside: list[str] = []  # the app must work offline: nothing may be fetched from another host
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://localhost", "data:", "blob:")) else None)

    # first load: from the URL until the overview has finished running (includes importing torch)
    t0 = time.perf_counter()
    page.goto(server)
    wait_done(page)
    page.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg")
    timings["first_load_s"] = time.perf_counter() - t0
    no_exception(page)
    assert page.get_by_test_id("stSidebar").inner_text().count("CPU") + page.get_by_test_id("stSidebar").inner_text().count("GPU")
    nav = page.get_by_test_id("stSidebarNav").inner_text()
    assert all(p.title in nav for p in common.PAGES)

    for p in common.PAGES:
        open_from_sidebar(page, p.title)
        no_exception(page)
        assert charts(page) + tables(page) > 0, f"{p.title}: no chart or table"
        try:
            getattr(Interactions, p.url_path.replace("-", "_"))(page, timings)
        except Exception:
            shot(page, f"failed-{p.url_path}")  # what the page showed when the check gave up
            raise
        no_exception(page)
        shot(page, f"{common.PAGES.index(p) + 1:02d}-{p.url_path}")

    assert not outside, f"the app fetched from other hosts: {sorted(set(outside))[:5]}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2))
    print("\nbrowser timings:", json.dumps(timings))
    page.close()


class Interactions:
    """One interaction per page (named after the page's url path), checking that the page answers."""

    @staticmethod
    def overview(page, timings):
        assert charts(page) == 1
        slider = page.get_by_test_id("stSlider").first.get_by_role("slider")
        slider.focus()
        rerun_after(page, lambda: slider.press("ArrowRight"))  # M: 4 → 5
        assert charts(page) == 1 and "(3×5: output × input)" in page.get_by_test_id("stPlotlyChart").inner_text()

    @staticmethod
    def calculator(page, timings):
        assert svg_charts(page) == 2 and charts(page) == 0 and tables(page) >= 2  # reductions, break-even; params, MACs
        # a calculator change: from Enter until the page has run again and shows the new layer
        samples = []
        for m in (128, 192, 64, 256, 96):
            box = number_input(page, "in channels M")
            box.fill(str(m))
            samples.append(rerun_after(page, lambda: box.press("Enter"), text_js(f"Layer: {m}→256, 3×3")))
        timings["calculator_change_s"] = sorted(samples)[len(samples) // 2]
        timings["calculator_change_samples_s"] = samples
        # the measurement: a tiny layer so that it ends in seconds
        for label, value in (("in channels M", 16), ("out channels N", 16), ("input height H", 8), ("rounds", 4),
                             ("s per visit", 0.01)):
            box = number_input(page, label)
            box.fill(str(value))
            rerun_after(page, lambda: box.press("Enter"))
        assert "Layer: 16→16, 3×3, stride 1, pad 1, 8×8" in page.inner_text("body")
        button = page.get_by_role("button", name="Measure on")
        done = ("return document.body.innerText.includes('Why measured and theoretical differ') || "
                "document.body.innerText.toLowerCase().includes('unreliable')")
        rerun_after(page, button.click, done, timeout=120_000)
        if "unreliable" not in page.inner_text("body").lower():  # a busy machine's figures are gated, not drawn
            assert charts(page) == 1 and svg_charts(page) == 2  # + measured vs theoretical

    @staticmethod
    def sizing(page, timings):
        assert charts(page) == 2 and tables(page) >= 2  # the budget by rank, per layer
        assert "highest uniform rank with ≥ 4× fewer MACs on resnet18" in page.inner_text("body")
        box = page.get_by_test_id("stSelectbox").filter(has_text="model").first

        def choose():
            box.click()
            page.keyboard.type("vgg19-cifar")
            page.keyboard.press("Enter")

        rerun_after(page, choose, text_js("vgg19-cifar with FALCON"))
        assert "2,563,658" in page.get_by_test_id("stMetric").first.inner_text()  # the thesis's 2.56M
        assert "0.14%" in page.inner_text("body")

    @staticmethod
    def ehp_fit(page, timings):
        assert charts(page) == 3
        rerun_after(page, page.get_by_role("radio", name="gradient descent").click, text_js("Start gradient descent"))
        box = number_input(page, "steps")
        box.fill("300")
        rerun_after(page, lambda: box.press("Enter"))
        rerun_after(page, page.get_by_role("button", name="Start gradient descent").click,
                    text_js("Gradient descent finished after 300 steps"), timeout=120_000)
        assert charts(page) == 4  # loss curve, energy, error by rank, kernels

    @staticmethod
    def experiments(page, timings):
        """The done-when sweep (FALCON ranks 1-3, DSConv, MobileConvV2, ShuffleUnit) at one epoch a run."""
        assert tables(page) >= 1 and "The plan: 6 runs" in page.inner_text("body")
        box = number_input(page, "epochs")
        box.fill("1")
        rerun_after(page, lambda: box.press("Enter"), text_js("6 runs, 1 epoch each"))
        t0 = time.perf_counter()
        page.get_by_role("button", name="Start the sweep").click()
        page.wait_for_function("() => document.body.innerText.includes('6 runs in')", timeout=600_000, polling=500)
        timings["experiments_sweep_1_epoch_s"] = time.perf_counter() - t0
        wait_done(page)
        page.wait_for_function("() => document.querySelectorAll(\"[data-testid='stPlotlyChart'] .main-svg\").length >= 2")
        assert charts(page) == 2  # the training curves and this sweep's accuracy against parameters
        assert "Stored runs" in page.inner_text("body")

    @staticmethod
    def accuracy(page, timings):
        assert charts(page) == 1 and tables(page) >= 1  # the points (and the claim sweep's summary)
        # the sweep just run on the Experiments page is drawn beside the thesis's points, as ours
        assert "digits-vgg" in page.get_by_test_id("stPlotlyChart").inner_text()
        assert "FALCON (ours)" in page.get_by_test_id("stPlotlyChart").inner_text()
        rerun_after(page, page.get_by_role("radio", name="FLOPs (MACs)").click,
                    "return [...document.querySelectorAll('.xtitle')].some(e => e.textContent.includes('FLOPs'))")
        png = page.get_by_role("button", name="Figure (PNG)")
        if png.count():  # kaleido installed: the figure is rendered on the server when clicked
            t0 = time.perf_counter()
            with page.expect_download(timeout=60_000) as download:
                png.click()
            data = Path(download.value.path()).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
            timings["accuracy_png_download_s"] = time.perf_counter() - t0

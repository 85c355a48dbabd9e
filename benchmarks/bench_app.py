"""The app in a real browser, timed: first page load and a Layer-calculator change, split into phases.

    python benchmarks/bench_app.py                  # 3 server starts (first load), 9 calculator changes
    python benchmarks/bench_app.py --changes 15 --loads 1
    python benchmarks/bench_app.py --profile        # + a CPU profile of the browser during the changes

What it does (the same way tests/test_browser.py drives the app): starts
``streamlit run app/main.py --server.headless true --server.port PORT`` from the repository root, opens it
in Debian's chromium through Playwright, and times, with ``performance.now()`` marks taken inside the page
(a wrapped WebSocket, a MutationObserver, a keydown listener, a long-task observer):

* first load: server start-up (process start until ``/_stcore/health`` answers), then the page load
  (``goto`` until the overview has finished running: stApp ``notRunning``, no skeleton, a plotly chart
  drawn), split into navigation → websocket open → script running → script done → chart drawn;
* a calculator change (fill "in channels M", press Enter, until "Layer: M→256, 3×3" is visible), split
  into Enter → rerun message sent → script running → script done (notRunning) → text visible, plus when
  the last DOM mutation inside the charts (plotly, or the calculator's SVG) / anywhere happened, the bytes received and the main
  thread's long tasks. The "test" column is what tests/test_browser.py measures (Python clock, Enter
  until script done and text visible).

Medians with the interquartile range and the minimum: on a shared 2-core machine timings swing, so
the first change (warm-up) is left out.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FALCON_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DONE = "[data-testid='stApp'][data-test-script-state='notRunning']"

# Installed before any page script: timestamps (performance.now(), ms since navigation start) of websocket
# traffic, script-state changes, DOM mutations, Enter key presses and long main-thread tasks.
INSTRUMENT = r"""
(() => {
  const fx = window.__fx = {recv: [], sent: [], states: [], enter: [], long: [], lastMut: 0, lastChartMut: 0,
                            wsOpen: null, chartDrawn: null};
  const Orig = window.WebSocket;
  const size = d => d == null ? 0 : (d.byteLength ?? d.size ?? d.length ?? 0);
  function Wrapped(url, protocols) {
    const ws = protocols === undefined ? new Orig(url) : new Orig(url, protocols);
    ws.addEventListener('open', () => { if (fx.wsOpen === null) fx.wsOpen = performance.now(); });
    ws.addEventListener('message', ev => fx.recv.push([performance.now(), size(ev.data)]));
    const send = ws.send.bind(ws);
    ws.send = d => { fx.sent.push([performance.now(), size(d)]); return send(d); };
    return ws;
  }
  Wrapped.prototype = Orig.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Wrapped[k] = Orig[k];
  window.WebSocket = Wrapped;
  document.addEventListener('keydown', e => { if (e.key === 'Enter') fx.enter.push(performance.now()); }, true);
  try {
    new PerformanceObserver(l => { for (const e of l.getEntries()) fx.long.push([e.startTime, e.duration]); })
      .observe({type: 'longtask', buffered: true});
  } catch (e) {}
  const watch = () => {
    new MutationObserver(records => {
      const t = performance.now();
      fx.lastMut = t;
      for (const r of records) {
        const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
        if (r.type === 'attributes' && r.attributeName === 'data-test-script-state' && el.dataset.testid === 'stApp') {
          fx.states.push([t, el.dataset.testScriptState]);
        }
        if (el && el.closest && el.closest("[data-testid='stPlotlyChart'], svg.falcon-chart")) {
          fx.lastChartMut = t;
          if (fx.chartDrawn === null && document.querySelector("[data-testid='stPlotlyChart'] .main-svg")) fx.chartDrawn = t;
        }
      }
    }).observe(document.documentElement, {subtree: true, childList: true, attributes: true, characterData: true});
  };
  if (document.documentElement) watch(); else document.addEventListener('DOMContentLoaded', watch);
})();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run app/main.py`` from the repository root, with a throwaway results store."""

    def __init__(self, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        exe = shutil.which("streamlit", path=str(Path(sys.executable).parent)) or shutil.which("streamlit")
        launcher = os.environ.get("BENCH_APP_LAUNCHER")  # e.g. "python wrapper.py": a profiling wrapper
        cmd = (launcher.split() if launcher else [exe] if exe else [sys.executable, "-m", "streamlit"]) + [
            "run", "app/main.py", "--server.headless", "true", "--server.port", str(self.port), *(extra or [])]
        self.tmp = tempfile.TemporaryDirectory(prefix="bench_app_")
        env = {**os.environ, "FALCON_RESULTS_DB": str(Path(self.tmp.name) / "results.sqlite")}
        self.log = open(Path(self.tmp.name) / "streamlit.log", "w+")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.close()
            raise SystemExit(f"streamlit did not start: {self.tail()}")
        self.startup_s = time.perf_counter() - t0

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        tail = self.tail()
        self.log.close()
        self.tmp.cleanup()
        if os.environ.get("BENCH_APP_LOG"):
            Path(os.environ["BENCH_APP_LOG"]).write_text(tail)
        if "Traceback" in tail:
            print("server log:\n" + tail, file=sys.stderr)


def wait_done(page, timeout: float = 90_000) -> None:
    page.wait_for_selector(DONE, state="attached", timeout=timeout)
    page.wait_for_function("() => document.querySelectorAll(\"[data-testid='stSkeleton']\").length === 0",
                           timeout=timeout)


def wait_quiet(page, quiet_ms: float = 400, timeout_s: float = 10) -> None:
    """Until nothing in the DOM has changed for ``quiet_ms`` (plotly draws after the script is done)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.evaluate("() => performance.now() - window.__fx.lastMut") >= quiet_ms:
            return
        time.sleep(0.05)


def performance_origin(page) -> float:
    return page.evaluate("() => performance.timeOrigin")


def fx(page) -> dict:
    return page.evaluate("() => window.__fx")


# ---------------------------------------------------------------------------------------------- first load
def first_load(browser, extra: list[str]) -> dict:
    server = Server(extra)
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.add_init_script(INSTRUMENT)
        t0 = time.perf_counter()
        page.goto(server.url)
        wait_done(page)
        page.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg", timeout=90_000)
        load_s = time.perf_counter() - t0
        f = fx(page)
        running = next((t for t, s in f["states"] if s == "running"), None)
        done = next((t for t, s in f["states"] if s == "notRunning" and running is not None and t > running), None)
        dcl = page.evaluate("() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
        r = {"server_start_s": server.startup_s, "page_load_s": load_s,
             "dom_loaded_ms": dcl, "ws_open_ms": f["wsOpen"], "running_ms": running, "done_ms": done,
             "chart_ms": f["chartDrawn"], "recv_kb": sum(n for _, n in f["recv"]) / 1024,
             "long_ms": sum(d for _, d in f["long"])}
        page.close()
        return r
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- a change
def calculator_changes(browser, n: int, profile: bool, extra: list[str]) -> tuple[list[dict], dict | None]:
    server = Server(extra)
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.add_init_script(INSTRUMENT)
        page.set_default_timeout(90_000)
        page.goto(f"{server.url}/calculator")
        wait_done(page)
        page.wait_for_function("() => document.querySelectorAll(\"svg.falcon-chart\").length >= 2")
        wait_quiet(page)
        cdp = None
        if profile:
            cdp = page.context.new_cdp_session(page)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.setSamplingInterval", {"interval": 200})
        values = [128, 192, 64, 96, 160, 224, 32, 200, 112, 48, 240, 80, 176, 144, 208, 72]
        samples = []
        box = page.get_by_label("in channels M", exact=True)
        for i in range(n + 1):  # the first one warms up
            m = values[i % len(values)] + i // len(values)
            box.fill(str(m))
            wait_quiet(page, 150)
            mark = page.evaluate("() => { const f = window.__fx; return {recv: f.recv.length, sent: f.sent.length,"
                                 " states: f.states.length, enter: f.enter.length, long: f.long.length}; }")
            if cdp is not None and i == 1:
                cdp.send("Profiler.start")
            t0 = time.perf_counter()
            box.press("Enter")
            cond = ("(args) => { const f = window.__fx; const app = document.querySelector(\"[data-testid='stApp']\");"
                    " const ran = f.states.slice(args.states).some(s => s[1] === 'running');"
                    " const ok = ran && app.dataset.testScriptState === 'notRunning' && document.body.innerText.includes(args.text);"
                    " if (ok && f.visible_at === undefined) f.visible_at = performance.now(); return ok; }")
            page.evaluate("() => { delete window.__fx.visible_at; }")
            page.wait_for_function(cond, arg={"states": mark["states"], "text": f"Layer: {m}→256, 3×3"},
                                   polling="raf", timeout=60_000)
            test_s = time.perf_counter() - t0
            wait_quiet(page, 500)
            f = fx(page)
            enter = f["enter"][mark["enter"]]
            sent = [t for t, _ in f["sent"][mark["sent"]:] if t >= enter]
            recv = [(t, b) for t, b in f["recv"][mark["recv"]:] if t >= enter]
            states = f["states"][mark["states"]:]
            running = next(t for t, s in states if s == "running")
            done = next(t for t, s in states if s == "notRunning" and t > running)
            visible = f["visible_at"]
            long = [(s, d) for s, d in f["long"][mark["long"]:] if s + d >= enter]
            samples.append({
                "sent": (sent[0] if sent else running) - enter,
                "running": running - (sent[0] if sent else enter),
                "done": done - running,
                "visible": visible - done,
                "total_visible": visible - enter,
                "charts_settled": max(f["lastChartMut"], visible) - enter,
                "dom_settled": max(f["lastMut"], visible) - enter,
                "ws_first": (recv[0][0] - enter) if recv else None,
                "ws_last": (recv[-1][0] - enter) if recv else None,
                "ws_msgs": len(recv),
                "recv_kb": sum(b for _, b in recv) / 1024,
                "long_ms": sum(d for _, d in long),
                "test": test_s * 1000,
                "enter_epoch_ms": performance_origin(page) + enter,
            })
        prof = None
        if cdp is not None:
            prof = cdp.send("Profiler.stop")["profile"]
        page.close()
        return samples[1:], prof
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- report
def stats(xs: list[float]) -> tuple[float, float, float, float]:
    xs = sorted(xs)
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4)
        q1, q3 = q[0], q[2]
    else:
        q1, q3 = xs[0], xs[-1]
    return statistics.median(xs), q1, q3, xs[0]


def table(title: str, rows: list[tuple[str, list[float]]], unit: str) -> None:
    print(f"\n{title}")
    print(f"  {'phase':48s} {'median':>9s} {'IQR':>19s} {'min':>9s}")
    for name, xs in rows:
        xs = [x for x in xs if x is not None]
        if not xs:
            continue
        med, q1, q3, lo = stats(xs)
        print(f"  {name:48s} {med:9.1f} {f'{q1:.1f}–{q3:.1f}':>19s} {lo:9.1f}  {unit}")


def top_functions(profile: dict, k: int = 25) -> None:
    """Self time by (function, script) from a CDP CPU profile."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    dts = profile["timeDeltas"]
    self_us: collections.Counter = collections.Counter()
    for sample, dt in zip(profile["samples"], dts[1:] + [0]):
        cf = nodes[sample]["callFrame"]
        url = cf["url"].rsplit("/", 1)[-1][:40]
        self_us[(cf["functionName"] or "(anonymous)", url, cf.get("lineNumber", 0))] += dt
    total = sum(self_us.values())
    print(f"\nbrowser CPU profile over the changes: {total / 1000:.0f} ms sampled; top self time")
    for (fn, url, line), us in self_us.most_common(k):
        print(f"  {us / 1000:8.1f} ms {100 * us / total:5.1f}%  {fn[:50]:50s} {url}:{line}")
    by_url: collections.Counter = collections.Counter()
    for (fn, url, _), us in self_us.items():
        by_url[url or fn] += us
    print("  by script:", ", ".join(f"{u} {us / 1000:.0f} ms" for u, us in by_url.most_common(8)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=9, help="calculator changes to time (after one warm-up)")
    parser.add_argument("--loads", type=int, default=3, help="server starts for the first-load timing (0: skip)")
    parser.add_argument("--profile", action="store_true", help="CPU-profile the browser during the changes")
    parser.add_argument("--json", help="also write the raw samples here")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `streamlit run` option, e.g. --server-arg=--runner.fastReruns=false")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        loads = [first_load(browser, args.server_arg) for _ in range(args.loads)]
        changes, prof = calculator_changes(browser, args.changes, args.profile, args.server_arg)
        browser.close()

    if loads:
        table(f"first load ({len(loads)} server starts)", [
            ("server start-up (process → /_stcore/health ok)", [r["server_start_s"] * 1000 for r in loads]),
            ("page load (goto → overview done + chart drawn)", [r["page_load_s"] * 1000 for r in loads]),
            ("  navigation → DOMContentLoaded", [r["dom_loaded_ms"] for r in loads]),
            ("  navigation → websocket open", [r["ws_open_ms"] for r in loads]),
            ("  navigation → script running", [r["running_ms"] for r in loads]),
            ("  navigation → script done (notRunning)", [r["done_ms"] for r in loads]),
            ("  navigation → first chart drawn", [r["chart_ms"] for r in loads]),
            ("  long main-thread tasks (sum)", [r["long_ms"] for r in loads]),
            ("  websocket kB received", [r["recv_kb"] for r in loads]),
        ], "ms")
    table(f"calculator change ({len(changes)} changes of 'in channels M', after one warm-up)", [
        ("Enter → rerun message sent", [s["sent"] for s in changes]),
        ("sent → script running", [s["running"] for s in changes]),
        ("running → script done (notRunning)", [s["done"] for s in changes]),
        ("done → new text visible", [s["visible"] for s in changes]),
        ("TOTAL Enter → text visible (in page)", [s["total_visible"] for s in changes]),
        ("TOTAL as tests/test_browser.py measures", [s["test"] for s in changes]),
        ("Enter → last chart DOM change", [s["charts_settled"] for s in changes]),
        ("Enter → last DOM change", [s["dom_settled"] for s in changes]),
        ("Enter → first websocket message received", [s["ws_first"] for s in changes]),
        ("Enter → last websocket message received", [s["ws_last"] for s in changes]),
        ("long main-thread tasks (sum)", [s["long_ms"] for s in changes]),
        ("websocket messages", [s["ws_msgs"] for s in changes]),
        ("websocket kB received", [s["recv_kb"] for s in changes]),
    ], "ms")
    if prof is not None:
        top_functions(prof)
    if args.json:
        Path(args.json).write_text(json.dumps({"loads": loads, "changes": changes}, indent=2))


if __name__ == "__main__":
    main()

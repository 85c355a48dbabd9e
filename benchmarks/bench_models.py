"""Whole-model latency of the thesis's four models (issue 13), on this machine, written to docs/latency.md.

For vgg19-cifar and resnet34-cifar at 32×32 and vgg16_bn and resnet18 at 224×224 (batch 1, random weights:
timing does not depend on them), one :func:`falcon.modelbench.measure_model` call per model measures the original
and FALCON k=1..3, DSConv, MobileConvV2 and ShuffleUnit in every available runtime (eager in both layouts,
torch.compile, ONNX Runtime), in the same interleaved rounds. The table: MAC ratio, the Amdahl ceiling (eager
profile), the measured speedup per runtime (each side in its fastest layout), the best runtime's, and measured /
theoretical. It replaces the block between the markers in docs/latency.md (or prints it with --no-write).

``--runs N`` instead runs ``python -m falcon bench --model vgg19-cifar --conv falcon --rank 1`` N times as
separate processes and reports the speedups of each run (the issue's "agree within ±10%").

    python benchmarks/bench_models.py                      # the table (~10 minutes on 2 shared cores)
    python benchmarks/bench_models.py --models vgg19-cifar --no-write
    python benchmarks/bench_models.py --runs 5             # five separate CLI runs
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "latency.md"
START, END = "<!-- bench_models:start -->", "<!-- bench_models:end -->"
MODELS = ("vgg19-cifar", "resnet34-cifar", "vgg16_bn", "resnet18")
CONVS = [("falcon", {"rank": 1}), ("falcon", {"rank": 2}), ("falcon", {"rank": 3}), ("dsconv", {"rank": 1}),
         ("mobilev2", {}), ("shuffle", {})]
#: (rounds, seconds per block) by input size: the 224×224 models take 10-50× longer per pass
SETTINGS = {32: (3, 0.2), 224: (2, 0.3)}
SHORT = {"contiguous": "NCHW", "channels_last": "NHWC"}
#: compile one layout only at 224×224 (compiling is the slow part; channels-last is inductor's CPU conv layout)
COMPILE_LAYOUT = {224: "channels_last"}


def fmt(x, spec=".2f", suffix="×"):
    return "–" if x is None else f"{x:{spec}}{suffix}"


def measure_one(name, threads, runtimes, progress=True):
    """One model, all conversions (split over several calls when the memory guard says so), merged."""
    from falcon.errors import FalconError
    from falcon.modelbench import RUNTIMES, measure_model
    from falcon.models import get_model_entry

    size = get_model_entry(name).input_size
    rounds, min_run_time = SETTINGS.get(size, SETTINGS[224])
    t0 = time.perf_counter()

    def show(fraction, message):
        if progress:
            sys.stderr.write(f"\r{name}: [{fraction:4.0%}] {time.perf_counter() - t0:5.0f} s {message:<60.60}")
            sys.stderr.flush()

    def run(convs):
        try:
            return [measure_model(name, conv=convs, runtimes=runtimes or RUNTIMES, batch_size=1, threads=threads,
                                  rounds=rounds, min_run_time=min_run_time, progress=show,
                                  compile_memory_format=COMPILE_LAYOUT.get(size))]
        except FalconError as e:
            if not str(e).startswith("not enough memory") or len(convs) == 1:
                raise
            half = (len(convs) + 1) // 2  # the original plus fewer conversions per call
            return run(convs[:half]) + run(convs[half:])

    parts = run(CONVS)
    if progress:
        sys.stderr.write("\n")
    r = parts[0]
    for extra in parts[1:]:
        r.conversions += extra.conversions
        r.timings += [t for t in extra.timings if t.role == "converted"]
    if len(parts) > 1:
        r.notes.append(f"measured in {len(parts)} calls (memory), each with the original")
    r.calls = len(parts)
    return r


def measure(models, threads, runtimes, progress=True):
    """Each model in a fresh process: torch.compile with freezing keeps the prepacked weights of what it compiled
    after torch._dynamo.reset() (gigabytes for vgg16_bn), so one process for all four would carry them along."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    results = []
    for name in models:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results.append(pool.submit(measure_one, name, threads, runtimes, progress).result())
    return results


def table(results) -> list[str]:
    runtimes = [i.name for i in results[0].runtimes if i.available]
    head = ["model", "conv", "MAC ratio", "Amdahl ceiling (eager)", *[f"{rt}" for rt in runtimes],
            "best runtime", "measured / theoretical", "breakdown sum / total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for c in r.conversions:
            b = c.breakdown
            cells = [f"{r.model} {r.input_size[1]}²", c.label, fmt(c.mac_ratio), fmt(b.amdahl_ceiling if b else None)]
            for rt in runtimes:
                s = next((x for x in c.speedups if x["runtime"] == rt and x["layout"] == "best"), None)
                cells.append("failed" if s is None else f"{s['speedup']:.2f}× ({SHORT.get(s['converted_layout'], '')})"
                             .replace(" ()", ""))
            best = c.best
            cells.append("–" if best is None else f"{best['runtime']} {best['speedup']:.2f}×")
            cells.append("–" if best is None else f"{best['speedup'] / c.mac_ratio:.0%}")
            cells.append("–" if b is None else f"{b.original_ratio:.2f} / {b.converted_ratio:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def original_rows(results) -> list[str]:
    runtimes = [i.name for i in results[0].runtimes if i.available]
    lines = ["| model | " + " | ".join(f"original, {rt}" for rt in runtimes) + " | FALCON k=1, best |",
             "|---|" + "---|" * (len(runtimes) + 1)]
    for r in results:
        cells = [f"{r.model} {r.input_size[1]}²"]
        for rt in runtimes:
            ts = [t for t in r.timings if t.role == "original" and t.runtime == rt and t.median_ms]
            t = min(ts, key=lambda t: t.median_ms) if ts else None
            cells.append("–" if t is None else f"{t.median_ms:.2f} ms ({SHORT.get(t.layout, t.layout)}, IQR {t.iqr_ms:.2f})")
        c = r.conversions[0]
        cells.append("–" if c.best is None else f"{c.best['converted_ms']:.2f} ms ({c.best['runtime']})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def explanations(results) -> list[str]:
    out = []
    for r in results:
        c = r.conversions[0]
        if c.breakdown is not None and c.breakdown.explanation:
            out.append(f"* **{r.model}, {c.label}** ({c.breakdown.layout}): {c.breakdown.explanation}.")
    return out


def block(results, command: str, seconds: float) -> str:
    r0 = results[0]
    runtimes = "; ".join(f"{i.name}: {i.version}" + (f" ({', '.join(f'{k} {v}' for k, v in i.options.items())})"
                                                     if i.options else "") if i.available else f"{i.name}: {i.reason}"
                         for i in r0.runtimes)
    split = [f"{r.model} in {r.calls} calls" for r in results if getattr(r, "calls", 1) > 1]
    loads = [r.load_average for r in results if r.load_average]
    load = ", ".join(f"{a[0]:g}→{a[1]:g}" for a in loads) if loads else "unknown"
    text = [START, "",
            f"`{command}`, {datetime.date.today().isoformat()}, {seconds / 60:.1f} minutes. Device: {r0.device} "
            f"({r0.device_name}), {r0.threads} thread{'s' if r0.threads != 1 else ''}, torch {r0.torch_version}; "
            f"{runtimes}. Batch 1, random weights, float32. 1-minute load average before→after each model: {load}."
            + (f" For memory, {', '.join(split)} (each with its own original; the speedups are within each call)."
               if split else ""),
            "",
            "Speedup = the original's median / the converted model's median in the same runtime, each in its "
            "fastest layout (the converted model's in brackets; ONNX Runtime takes NCHW). \"Best runtime\" = the "
            "runtime where the converted model is fastest. Measured / theoretical = that speedup / the MAC ratio. "
            "Breakdown sum / total: the profiled parts over unprofiled passes of the same minutes, original / "
            "converted (the check is ±10%).", ""]
    text += table(results)
    text += ["", "Latency of the originals (fastest layout per runtime) and of FALCON k=1 in its best runtime:", ""]
    text += original_rows(results)
    text += ["", "Why the eager speedup of FALCON k=1 is below its MAC ratio (one line per model, from the profile):",
             ""]
    text += explanations(results)
    text += ["", END]
    return "\n".join(text)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    if START in doc and END in doc:
        before, rest = doc.split(START, 1)
        after = rest.split(END, 1)[1]
        doc = before + text + after
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)


def cli_runs(n: int, threads: int | None, runtimes: str, extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "falcon", "bench", "--model", "vgg19-cifar", "--conv", "falcon", "--rank", "1",
           "--runtime", runtimes, "--json", "--quiet"] + (["--threads", str(threads)] if threads else []) + extra
    print("$ " + " ".join(["python", *cmd[1:]]))
    rows = []
    for i in range(n):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"run {i + 1} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        d = json.loads(done.stdout)
        c = d["conversions"][0]
        per = {s["runtime"]: s["speedup"] for s in c["speedups"] if s["layout"] == "best"}
        fastest = {}  # from each entry's fastest timed block instead of the median: less sensitive to other processes
        for t in d["timings"]:
            if t["min_ms"] is not None:
                key = (t["role"], t["runtime"])
                fastest[key] = min(fastest.get(key, float("inf")), t["min_ms"])
        rt = c["best"]["runtime"]
        from_min = fastest[("original", rt)] / fastest[("converted", rt)]
        rows.append((c["best"], per, d["load_average"], c["breakdown"], from_min))
        b = c["breakdown"] or {}
        print(f"run {i + 1}: best {c['best']['runtime']} {c['best']['speedup']:.2f}x; "
              + ", ".join(f"{k} {v:.2f}x" for k, v in per.items() if k != "any")
              + f" (from the fastest blocks: {from_min:.2f}x); MAC ratio {c['mac_ratio']:.2f}x, Amdahl ceiling {b.get('amdahl_ceiling') or 0:.2f}x; "
                f"breakdown {b.get('original_ratio') or 0:.2f}/{b.get('converted_ratio') or 0:.2f}; load {d['load_average']}",
              flush=True)
    best = [r[0]["speedup"] for r in rows]
    med = statistics.median(best)
    spread = max(abs(b / med - 1) for b in best)
    print(f"best-runtime speedups: {', '.join(f'{b:.2f}' for b in best)}; median {med:.2f}x, largest deviation "
          f"±{spread:.1%}")
    mins = [r[4] for r in rows]
    m = statistics.median(mins)
    print(f"  from the fastest blocks: {', '.join(f'{v:.2f}' for v in mins)}; median {m:.2f}x, "
          f"±{max(abs(v / m - 1) for v in mins):.1%}")
    for rt in rows[0][1]:
        vals = [r[1].get(rt) for r in rows if r[1].get(rt)]
        if vals:
            m = statistics.median(vals)
            print(f"  {rt}: {', '.join(f'{v:.2f}' for v in vals)}; median {m:.2f}x, ±{max(abs(v / m - 1) for v in vals):.1%}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: the thesis's four)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: on a shared 2-core machine two threads mostly wait for each other)")
    p.add_argument("--runtimes", default=None, help="comma-separated (default: every available one)")
    p.add_argument("--no-write", action="store_true", help="print the block instead of writing docs/latency.md")
    p.add_argument("--runs", type=int, default=0, help="instead: N separate CLI runs of vgg19-cifar FALCON k=1")
    p.add_argument("--rounds", type=int, default=None, help="--runs: rounds per run (default: the CLI's, 5)")
    p.add_argument("--no-breakdown", action="store_true", help="--runs: skip the profile")
    args = p.parse_args()
    if args.runs:
        extra = (["--rounds", str(args.rounds)] if args.rounds else []) + (["--no-breakdown"] if args.no_breakdown else [])
        return cli_runs(args.runs, args.threads, args.runtimes or "all", extra)
    t0 = time.perf_counter()
    runtimes = args.runtimes.split(",") if args.runtimes else None
    results = measure([m.strip() for m in args.models.split(",") if m.strip()], args.threads, runtimes)
    command = "python benchmarks/bench_models.py" + "".join(
        f" {flag} {val}" for flag, val in (("--models", args.models if args.models != ",".join(MODELS) else None),
                                           ("--threads", args.threads if args.threads != 1 else None),
                                           ("--runtimes", args.runtimes)) if val)
    text = block(results, command, time.perf_counter() - t0)
    if args.no_write:
        print(text)
    else:
        write_doc(text)
        print(text)
        print(f"\nwritten to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

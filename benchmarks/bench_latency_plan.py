"""Latency-target plans (python -m falcon plan --target-speedup X), measured against their own prediction.

For digits-vgg (bundled weights, 32x32) and resnet18 (random weights, a small input) at 1.5x and 2x: every option
timed once on this machine, the plan solved on those latencies, then the planned model timed interleaved with the
original. Printed: the model's time, the predicted and measured plan latency, the prediction error, the measured
speedup, the chosen types and, on digits, the training-free held-out accuracy of the planned model.

    python benchmarks/bench_latency_plan.py [--threads 1] [--rounds 3] [--resnet-size 64] [--skip-resnet]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import time

import torch


def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
                   .stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "cpu"
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def _loaded(name: str, size: int | None):
    from falcon.sources import load_model

    loaded = load_model(name, None if name == "digits-vgg" else "random")
    if size is not None:
        loaded = dataclasses.replace(loaded, entry=dataclasses.replace(loaded.entry, input_size=size))
    return loaded


def _types(plan) -> str:
    counts: dict[str, int] = {}
    for c in plan.layers:
        counts[c.conv] = counts.get(c.conv, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def run(name: str, size: int | None, args) -> None:
    from falcon import latency_plan as lat
    from falcon.planning import apply_plan_report

    loaded = _loaded(name, size)
    t0 = time.perf_counter()
    lp = lat.latency_problem(loaded, threads=args.threads, rounds=args.rounds, max_seconds=args.max_seconds)
    print(f"\n{name} {loaded.input_size[1]}x{loaded.input_size[2]}: {len(lp.table.seconds)} blocks timed for "
          f"{lp.estimate.options} options in {time.perf_counter() - t0:.0f} s (estimated {lp.estimate.seconds:.0f} s); "
          f"model {lp.model_seconds * 1e3:.3f} ms, overhead {lp.overhead * 1e3:.3f} ms, best reachable "
          f"{lp.best_reachable * 1e3:.3f} ms; load {os.getloadavg()[0]:.2f}")
    for note in lp.notes:
        print("  note:", note)
    print("| target | budget ms | predicted: ms, speedup | measured: ms [IQR], speedup | prediction error (ms) | "
          "original ms in the check | types | training-free accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for speedup in (1.5, 2.0):
        try:
            result = lat.solve_latency(lp, {"speedup": speedup})
        except Exception as e:  # noqa: BLE001 - an unreachable target is a result here
            print(f"| {speedup}x | – | {e} | | | | | |")
            continue
        result.check = lat.check_plan(loaded.model, result.plan.as_dict(), loaded.input_size,
                                      timer=lat.bench_timer(args.threads, lat.CHECK_MIN_RUN_TIME),
                                      rounds=args.check_rounds)
        d, m = result.as_dict(), result.check
        acc = ""
        if loaded.eval_data is not None:
            rep = apply_plan_report(loaded, d, evaluate=True)
            acc = f"{rep['accuracy']:.2%} (orig {rep['baseline_accuracy']:.2%})"
        lt = d["latency"]
        print(f"| {speedup}x | {lt['budget_ms']:.3f} | {lt['predicted_ms']:.3f}, {lt['predicted_speedup']:.2f}x | "
              f"{m['planned_ms']:.3f} [{m['planned_iqr_ms']:.3f}], {m['speedup']:.2f}x | {lt['prediction_error']:+.1%} | "
              f"{m['original_ms']:.3f} | {_types(result.plan)} | {acc or '–'} |")
        print(f"  load average during the check {m['load_average']}; plan objective {result.plan.objective:.4g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check-rounds", type=int, default=9)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--resnet-size", type=int, default=64)
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    print(f"{_machine()}; {args.threads} thread(s); uptime: {subprocess.run(['uptime'], capture_output=True, text=True, check=False).stdout.strip()}")
    run("digits-vgg", None, args)
    if not args.skip_resnet:
        run("resnet18", args.resnet_size, args)
    print(f"\nuptime after: {subprocess.run(['uptime'], capture_output=True, text=True, check=False).stdout.strip()}")


if __name__ == "__main__":
    main()

"""Time whole-model sizing: every torchvision classification model (and the paper's) × every conv type.

    python benchmarks/bench_sizing.py [--models resnet18,vgg16_bn] [--convention paper]

Prints one line per (model, conv type) with the wall time of `falcon.sizing.size_model` (which also
sizes the standard model for the ratios), then the median and the worst. Target: under 1 s each.
Models are built on the `meta` device: nothing is allocated and no weights are downloaded.
"""
from __future__ import annotations

import argparse
import statistics
import time

from falcon.convtypes import CONV_TYPES
from falcon.errors import FalconError
from falcon.models import list_models
from falcon.sizing import size_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated (default: all)")
    parser.add_argument("--convention", default="paper")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else list_models()
    times, refused = [], []
    size_model("resnet18", "falcon")  # warm-up: imports, first meta dispatch
    for model in models:
        for conv in CONV_TYPES:
            t0 = time.perf_counter()
            try:
                r = size_model(model, conv, convention=args.convention)
            except FalconError as e:
                refused.append((model, conv, str(e)))
                print(f"{model:28s} {conv:9s} refused: {e}")
                continue
            dt = time.perf_counter() - t0
            times.append((dt, model, conv))
            print(f"{model:28s} {conv:9s} {dt * 1000:8.1f} ms  params {r.params:>13,}  MACs {r.macs:>16,}")
    if times:
        worst = max(times)
        print(f"\n{len(times)} sizings: median {statistics.median(t for t, *_ in times) * 1000:.0f} ms, "
              f"worst {worst[0] * 1000:.0f} ms ({worst[1]}, {worst[2]}); {len(refused)} refused")
        slow = sorted((t for t in times if t[0] >= 1.0), reverse=True)
        print(f"{len(slow)} of {len(times)} took 1 s or more" + (": " if slow else "")
              + ", ".join(f"{m} {c} {t:.2f} s" for t, m, c in slow))


if __name__ == "__main__":
    main()

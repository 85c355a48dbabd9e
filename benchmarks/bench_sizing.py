"""Time whole-model sizing: every torchvision classification model (and the paper's), and a spread of timm's
architectures, × every conv type.

    python benchmarks/bench_sizing.py [--models resnet18,vgg16_bn] [--timm 100] [--convention paper]

Prints one line per (model, conv type) with the wall time of `falcon.sizing.size_model` (which also
sizes the standard model for the ratios, cached per model after its first conv type), then the median and the
worst per source and overall, and every sizing that took 1 s or more. Targets: median ≤ 150 ms, each under 1 s.
Models are built on the `meta` device: nothing is allocated and no weights are downloaded. ``--timm N`` takes
N architectures spread evenly over timm's sorted list (when timm is installed).
"""
from __future__ import annotations

import argparse
import statistics
import time

from falcon.convtypes import CONV_TYPES
from falcon.errors import FalconError
from falcon.models import list_models, timm_available, timm_models
from falcon.sizing import size_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated (default: all)")
    parser.add_argument("--convention", default="paper")
    parser.add_argument("--timm", type=int, default=100, metavar="N",
                        help="also N timm architectures, spread over its list (default 100; 0: none)")
    args = parser.parse_args()
    models = args.models.split(",") if args.models else list_models()
    if args.timm and not args.models and timm_available():
        names = sorted(timm_models())
        step = max(1, len(names) // args.timm)
        models += [f"timm:{n}" for n in names[::step][: args.timm]]
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
        print()
        for source, keep in (("torchvision and the thesis's", lambda m: not m.startswith("timm:")),
                             ("timm", lambda m: m.startswith("timm:")), ("all", lambda m: True)):
            part = [t for t in times if keep(t[1])]
            if part:
                worst = max(part)
                n_models = len({m for _, m, _ in part})
                print(f"{source}: {len(part)} sizings of {n_models} models: median "
                      f"{statistics.median(t for t, *_ in part) * 1000:.0f} ms, worst {worst[0] * 1000:.0f} ms "
                      f"({worst[1]}, {worst[2]})")
        print(f"{len(refused)} refused (a conv type that cannot take any layer of the model, or a model that "
              "does not run at its default size)")
        slow = sorted((t for t in times if t[0] >= 1.0), reverse=True)
        print(f"{len(slow)} of {len(times)} took 1 s or more" + (": " if slow else "")
              + ", ".join(f"{m} {c} {t:.2f} s" for t, m, c in slow))


if __name__ == "__main__":
    main()

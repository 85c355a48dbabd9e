"""Time the closed-form EHP fit (batched SVD per channel) of every conv of a model.

    python benchmarks/bench_fit.py [--model vgg16_bn] [--weights PATH|pretrained] [--rank 1]
                                   [--conv falcon,dsconv] [--repeats 5] [--threads N]

For each conv type, fits every fittable conv of the model (falcon: every 3×3 conv, the first one
included) with `falcon.ehp.svd_fit`, `--repeats` times after one warm-up pass, and prints the
per-layer median and the whole-model total (median, min, max over repeats). Target: under 2 s for
the whole of vgg16_bn on this 2-core CPU. Model building and weight loading are not timed; the fit's
cost does not depend on the weights' values (random init is the default; --weights pretrained uses
torchvision's cache).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from falcon.ehp import svd_fit
from falcon.sources import load_model
from falcon.surgery import conv_sites

TARGET_SECONDS = 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--weights", default=None, help="checkpoint path, 'pretrained' or 'random' (default)")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--conv", default="falcon,dsconv", help="comma-separated: falcon, dsconv")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, args.weights)
    sites = [s for s in conv_sites(loaded.model, loaded.input_size) if s.replaceable]
    kernels = {s.name: loaded.model.get_submodule(s.name).weight.detach() for s in sites}
    print(f"{loaded.description}: {len(kernels)} fittable convs, "
          f"{sum(k.numel() for k in kernels.values()):,} weights; rank {args.rank}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    status = 0
    for conv in args.conv.split(","):
        axis = {"falcon": "output", "dsconv": "input"}[conv]
        per_layer: dict[str, list[float]] = {name: [] for name in kernels}
        totals = []
        for repeat in range(args.repeats + 1):  # the first pass warms up LAPACK and the allocator
            t_all = time.perf_counter()
            for name, kernel in kernels.items():
                t0 = time.perf_counter()
                svd_fit(kernel, args.rank, axis)
                if repeat:
                    per_layer[name].append(time.perf_counter() - t0)
            if repeat:
                totals.append(time.perf_counter() - t_all)
        print(f"\n{conv} (common axis: {axis} channel)")
        for name, times in per_layer.items():
            n, m = kernels[name].shape[:2]
            print(f"  {name:14s} {m:4d}→{n:<4d} {statistics.median(times) * 1000:8.1f} ms")
        median = statistics.median(totals)
        ok = median < TARGET_SECONDS
        status |= 0 if ok else 1
        print(f"  whole model: median {median:.3f} s (min {min(totals):.3f}, max {max(totals):.3f}, "
              f"{args.repeats} repeats) — target < {TARGET_SECONDS:g} s: {'met' if ok else 'MISSED'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())

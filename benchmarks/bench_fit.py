"""Time the fit of every conv of a model, for every fittable conv type of the registry.

    python benchmarks/bench_fit.py [--model vgg16_bn,resnet50] [--weights PATH|pretrained] [--rank 1]
                                   [--conv falcon,dsconv,tucker2,cp,spatial] [--method svd] [--repeats 3]

For each model and conv type, fits every fittable conv of the model (every square conv the policy replaces,
the first one included) with the type's fitter (`falcon.fits.fit_kernel`: falcon/dsconv a batched SVD per
channel, tucker2 HOSVD + HOOI, cp ALS, spatial one SVD; ``--method`` another of its methods) at uniform
``--rank``, ``--repeats`` times after one warm-up pass, and prints the per-layer median and the whole-model
total (median, min, max over repeats). Target for the closed-form EHP fits (falcon, dsconv): under 2 s for the
whole of vgg16_bn on this 2-core CPU. Model building and weight loading are not timed; the fits' cost does not
depend much on the weights' values (random init is the default; --weights pretrained uses torchvision's cache),
except HOOI's and ALS's iterations, which stop earlier on trained kernels.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from falcon.convtypes import FITTABLE
from falcon.errors import FalconError
from falcon.fits import fit_kernel
from falcon.sources import load_model
from falcon.surgery import conv_sites

#: Whole-model targets (seconds) where the issue set one: the closed-form EHP fit of vgg16_bn.
TARGET_SECONDS = {"falcon": 2.0, "dsconv": 2.0}


def time_type(kernels: dict, conv: str, rank: int, method: str, repeats: int) -> tuple[dict, list, list[str]]:
    """(per-layer times, whole-model totals, errors) of fitting every kernel with ``conv``."""
    per_layer: dict[str, list[float]] = {name: [] for name in kernels}
    totals, errors = [], []
    for repeat in range(repeats + 1):  # the first pass warms up LAPACK and the allocator
        t_all = time.perf_counter()
        for name, kernel in kernels.items():
            t0 = time.perf_counter()
            try:
                fit_kernel(kernel, conv, rank, method)
            except FalconError as e:  # e.g. ALS refused on a layer where it is impractical
                if not repeat:
                    errors.append(f"{name}: {e}")
                continue
            if repeat:
                per_layer[name].append(time.perf_counter() - t0)
        if repeat:
            totals.append(time.perf_counter() - t_all)
    return per_layer, totals, errors


def report(model: str, kernels: dict, conv: str, args) -> int:
    per_layer, totals, errors = time_type(kernels, conv, args.rank, args.method, args.repeats)
    print(f"\n{model} · {conv} ({args.method}, rank {args.rank})")
    for name, times in per_layer.items():
        n, m = kernels[name].shape[:2]
        shown = f"{statistics.median(times) * 1000:10.1f} ms" if times else "   refused"
        print(f"  {name:24s} {m:4d}→{n:<4d} {shown}")
    for e in errors:
        print(f"  refused: {e}")
    median = statistics.median(totals)
    target = TARGET_SECONDS.get(conv) if model == "vgg16_bn" and args.method == "svd" else None
    ok = target is None or median < target
    print(f"  whole model: median {median:.3f} s (min {min(totals):.3f}, max {max(totals):.3f}, {args.repeats} repeats)"
          + (f" — target < {target:g} s: {'met' if ok else 'MISSED'}" if target is not None else ""))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16_bn,resnet50", help="comma-separated model names")
    parser.add_argument("--weights", default=None, help="checkpoint path, 'pretrained' or 'random' (default)")
    parser.add_argument("--rank", type=int, default=1, help="uniform rank: every ranked hyper-parameter")
    parser.add_argument("--conv", default=",".join(FITTABLE), help="comma-separated: " + ", ".join(FITTABLE))
    parser.add_argument("--method", default="svd", help="svd: each type's default fit; or one of its methods")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    status = 0
    for model in args.model.split(","):
        loaded = load_model(model, args.weights)
        sites = [s for s in conv_sites(loaded.model, loaded.input_size) if s.replaceable]
        kernels = {s.name: loaded.model.get_submodule(s.name).weight.detach() for s in sites}
        print(f"{loaded.description}: {len(kernels)} fittable convs, "
              f"{sum(k.numel() for k in kernels.values()):,} weights; torch {torch.__version__}")
        for conv in args.conv.split(","):
            status |= report(model, kernels, conv, args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())

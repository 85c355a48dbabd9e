"""``python -m falcon plan --target-speedup X | --target-ms X``: the measured-latency mode of ``plan``
(falcon.latency_plan): options timed on this machine, the plan solved on their latencies, then the planned model
timed against the original to check the prediction."""
from __future__ import annotations

import argparse
import sys

from falcon.cli.common import print_json, print_table
from falcon.errors import FalconError
from falcon.limits import float_flag, int_flag


def add_target_flags(target) -> None:
    """The two latency targets, in ``plan``'s mutually exclusive target group."""
    target.add_argument("--target-speedup", type=float_flag("target_speedup"),
                        help="times faster than the model measured on this machine (measured-latency mode)")
    target.add_argument("--target-ms", type=float_flag("target_ms"),
                        help="at most this many milliseconds per forward pass on this machine (measured-latency mode)")


def add_flags(p: argparse.ArgumentParser) -> None:
    from falcon.latency_plan import ROUNDS
    from falcon.worker import MAX_SECONDS

    g = p.add_argument_group("measured-latency mode (--target-speedup, --target-ms)")
    g.add_argument("--threads", type=int_flag("threads"), default=None,
                   help="CPU threads for every timing (default: torch's thread count)")
    g.add_argument("--rounds", type=int_flag("rounds"), default=ROUNDS,
                   help=f"timed visits per block (median; default {ROUNDS})")
    g.add_argument("--batch-size", type=int_flag("batch_size"), default=1, help="images per forward pass (default 1)")
    g.add_argument("--max-seconds", type=float_flag("max_seconds"), default=None,
                   help=f"refuse when the estimated timing takes longer (default {MAX_SECONDS:g} s, env "
                        "FALCON_MEASURE_MAX_S)")


def run(args: argparse.Namespace) -> int:
    from falcon.planfile import parse_types
    from falcon.latency_plan import parse_target, plan_latency
    from falcon.sources import load_model

    parse_target(args.target_speedup, args.target_ms)
    types = parse_types(args.types)
    loaded = load_model(args.model, args.weights, args.num_classes)
    if loaded.weights == "random":
        print("note: the model has random weights; a plan fitted to them says little (pass --weights)", file=sys.stderr)
    if getattr(args, "data", None) and args.proxy != "data":
        raise FalconError("--data is the data proxy's calibration set: add --proxy data or drop --data")

    def progress(done: int, total: int, label: str) -> None:
        if not args.json and (done == total or done % 25 == 0):
            print(f"timing: {done}/{total} visits", file=sys.stderr)

    result = plan_latency(loaded, target_speedup=args.target_speedup, target_ms=args.target_ms, types=types,
                          proxy=args.proxy, include_stem=args.include_stem, batch_size=args.batch_size,
                          rounds=args.rounds, threads=args.threads, max_seconds=args.max_seconds, progress=progress,
                          data=getattr(args, "data", None), data_dir=getattr(args, "data_dir", None))
    out = result.as_dict()
    if args.json:
        print_json(out)
        return 0
    _print(result.plan, out["latency"])
    return 0


def _print(plan, lat: dict) -> None:
    m = lat["measured"]
    print(f"{plan.model}: plan for ≤ {lat['budget_ms']:.4g} ms per forward pass ({plan.proxy} proxy, {plan.solver}; "
          f"{lat['timings']} blocks timed in {lat['seconds']:.1f} s, estimated {lat['estimated_seconds']:.0f} s, on "
          f"{lat['cpu']}, {lat['threads']} thread{'s' if lat['threads'] != 1 else ''})")
    print_table([{"layer": c.name, "type": c.conv, "ranks": ",".join(f"{k}={v}" for k, v in c.hparams.items()) or "–",
                  "keep ms": row["keep_ms"], "plan ms": row["plan_ms"], "error": c.error}
                 for c, row in zip(plan.layers, lat["layers"])])
    print(f"original {lat['original_ms']:.4g} ms (of which {lat['overhead_ms']:.4g} ms outside the planned convs); "
          f"predicted {lat['predicted_ms']:.4g} ms ({lat['predicted_speedup']:.3g}×)")
    print(f"measured: original {m['original_ms']:.4g} ms (IQR {m['original_iqr_ms']:.2g}), planned {m['planned_ms']:.4g} ms "
          f"(IQR {m['planned_iqr_ms']:.2g}), {m['speedup']:.3g}× over {m['rounds']} interleaved rounds; prediction "
          f"error {lat['prediction_error']:+.1%}; load average {m['load_average']}")
    print(f"predicted error {plan.objective:.4g} (optimum ≥ {plan.lower_bound:.4g}; greedy {plan.greedy_objective:.4g})")
    for note in plan.notes:
        print("note:", note)

"""``python -m falcon plan``: per-layer conv type and rank for a target (falcon.planning), beside one uniform rank."""
from __future__ import annotations

import argparse
import sys

from falcon.cli.common import print_json, print_table
from falcon.cli.fit import add_model_flags
from falcon.errors import FalconError
from falcon.planfile import parse_types


def add_parser(sub) -> None:
    from falcon.experiments.data import DATASETS
    from falcon.planning import DEFAULT_TYPES, PROXIES

    from falcon.cli import plan_latency

    p = sub.add_parser("plan", help="per-layer conv type and rank that meet a MACs, params or measured-latency target",
                       description="Choose, per layer, keep or a fittable conv type and rank so that the model meets "
                                   "a target with the least predicted error (multiple-choice knapsack by dynamic "
                                   "programming; the Lagrangian bound on the optimum is printed). Beside it: the "
                                   "highest uniform FALCON rank that meets the same target. With --target-speedup or "
                                   "--target-ms (measured-latency mode) every option is timed on this machine, the plan "
                                   "meets the latency it predicts, and the planned model is timed against the original.")
    add_model_flags(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-crr", metavar="X", help="times fewer MACs")
    target.add_argument("--target-cr", metavar="X", help="times fewer parameters")
    target.add_argument("--target-macs", metavar="N", help="at most this many MACs")
    target.add_argument("--target-params", metavar="N", help="at most this many parameters")
    plan_latency.add_target_flags(target)
    p.add_argument("--types", default=",".join(DEFAULT_TYPES), metavar="T,T",
                   help=f"allowed conv types, comma-separated; 'standard' keeps a layer (default {','.join(DEFAULT_TYPES)})")
    p.add_argument("--proxy", choices=PROXIES, default="kernel",
                   help="kernel: squared relative fit error of each kernel; data: squared relative output error on "
                        "a calibration batch of the model's data (digits-vgg's bundled digits, or --data)")
    p.add_argument("--data", choices=DATASETS, default=None,
                   help="--proxy data: the data set to calibrate on (e.g. cifar10 for the thesis's CIFAR models); it "
                        "is read from --data-dir, never downloaded here")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where --data is (default $FALCON_DATA_DIR or "
                                                                    "~/.cache/falcon-explorer/datasets)")
    p.add_argument("--include-stem", action="store_true", default=None, help="the first conv may be replaced too")
    p.add_argument("--json", action="store_true", help="the plan as one JSON object (convert --plan reads it)")
    plan_latency.add_flags(p)
    p.set_defaults(func=run)


def _target(args) -> dict:
    for flag, metric, ratio in (("target_crr", "macs", True), ("target_cr", "params", True),
                                ("target_macs", "macs", False), ("target_params", "params", False)):
        value = getattr(args, flag)
        if value is not None:
            return {"metric": metric, "target_ratio" if ratio else "target": value}
    raise FalconError("give a target: --target-crr, --target-cr, --target-macs or --target-params")


def plan_latency_mode(args) -> bool:
    return getattr(args, "target_speedup", None) is not None or getattr(args, "target_ms", None) is not None


def run(args: argparse.Namespace) -> int:
    from falcon.planning import plan_model, problem, uniform_plan
    from falcon.sources import load_model

    if plan_latency_mode(args):
        from falcon.cli.plan_latency import run as run_latency

        return run_latency(args)
    target = _target(args)
    types = parse_types(args.types)
    loaded = load_model(args.model, args.weights, args.num_classes)
    if loaded.weights == "random":
        print("note: the model has random weights; a plan fitted to them says little (pass --weights)", file=sys.stderr)
    if args.data and args.proxy != "data":
        raise FalconError("--data is the data proxy's calibration set: add --proxy data or drop --data")
    prob = problem(loaded, types, args.proxy, include_stem=args.include_stem, data=args.data,
                   data_dir=args.data_dir)  # one forward pass and count for both
    plan = plan_model(loaded, types=types, proxy=args.proxy, include_stem=args.include_stem, prob=prob, **target)
    try:
        uniform = uniform_plan(loaded, "falcon", proxy=args.proxy, include_stem=args.include_stem, prob=prob, **target)
    except FalconError as e:
        uniform, why = None, str(e)
    out = plan.as_dict()
    out["uniform"] = uniform.as_dict() if uniform else {"error": why}
    if args.json:
        print_json(out)
        return 0
    print(f"{plan.model}: plan for ≤ {plan.budget:,.0f} {plan.metric} ({plan.proxy} proxy, {plan.solver}, "
          f"{plan.seconds:.2f} s)")
    print_table([{"layer": c.name, "type": c.conv, "ranks": ",".join(f"{k}={v}" for k, v in c.hparams.items()) or "–",
                  "params": c.params, "macs": c.macs, "error": c.error} for c in plan.layers])
    a = out["after"]
    print(f"params {a['params']:,} (CR {out['compression_rate']:.3f}x)   MACs {a['macs']:,} "
          f"(CRR {out['computation_reduction_rate']:.3f}x)")
    print(f"predicted error {plan.objective:.4g} (optimum ≥ {plan.lower_bound:.4g}; greedy {plan.greedy_objective:.4g})")
    if uniform:
        u = out["uniform"]
        print(f"uniform FALCON rank {max(c.hparams['rank'] for c in uniform.layers)}: error {uniform.objective:.4g}, "
              f"params {u['after']['params']:,}, MACs {u['after']['macs']:,}")
    else:
        print(f"uniform FALCON: {why}")
    for note in plan.notes:
        print("note:", note)
    return 0

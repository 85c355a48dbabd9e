"""``python -m falcon convert``: replace a model's convs by rank-k falcon/dsconv initialized from the EHP fit."""
from __future__ import annotations

import argparse

from falcon.cli.common import print_json, print_table
from falcon.cli.size import add_policy_flags, policy
from falcon.cli.fit import add_model_flags
from falcon.convtypes import FITTABLE
from falcon.errors import FalconError
from falcon.limits import float_flag, int_flag, parse_int


def add_parser(sub) -> None:
    from falcon.conversion import INITS
    from falcon.ehp import FIT_OPTIMIZERS, GD_STEPS

    p = sub.add_parser("convert", help="convert a model's convs to rank-k falcon/dsconv from the EHP fit",
                       description="Replace the convs of a model (its replacement policy) by bare rank-k falcon or "
                                   "dsconv blocks initialized from the fit of each pretrained kernel; the model's BN "
                                   "and ReLU stay. Reports params and MACs (convention 'clean', one image), with "
                                   "--evaluate the held-out accuracy before and after (no fine-tuning), and with "
                                   "--output saves the converted model (loads with weights_only=True).")
    add_model_flags(p)
    p.add_argument("--conv", default=None, choices=FITTABLE, help=" or ".join(FITTABLE) + " (or --plan)")
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="instead of --conv/--rank: the per-layer types and ranks of `python -m falcon plan --json`")
    p.add_argument("--rank", default=None, metavar="K", type=_rank_text,
                   help="rank k (default 1), clamped per layer to its full rank; or several for a table: "
                        "1,2,4 | 1-9 | all (1 … the largest full rank) | full")
    p.add_argument("--energy", type=float_flag("energy"), default=None, metavar="E",
                   help="instead of --rank: per layer, the smallest rank that keeps at least this fraction (0-1] of "
                        "every channel's singular-value energy (Network Decoupling's rule); each layer's rank is reported")
    p.add_argument("--init", choices=list(INITS), default="svd",
                   help="svd (closed-form optimum; default), gd (gradient descent) or random")
    p.add_argument("--steps", type=int_flag("steps"), default=None, help=f"gd: steps per layer (default {GD_STEPS})")
    p.add_argument("--lr", type=float_flag("lr"), default=None, help="gd: learning rate (default: the optimizer's)")
    p.add_argument("--optimizer", choices=list(FIT_OPTIMIZERS), default=None, help="gd: adam (default) or sgd")
    p.add_argument("--seed", type=int_flag("seed"), default=0, help="seed for gd and random init (default 0)")
    add_policy_flags(p)
    p.add_argument("--evaluate", action="store_true",
                   help="accuracy on the held-out set before and after (digits-vgg has one)")
    p.add_argument("--output", default=None, metavar="PATH", help="save the converted model here")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


def _rank_text(text: str) -> str:
    """``--rank``: checked now (each rank in limits' bound), expanded once the model's full rank is known."""
    from falcon.conversion import parse_ranks

    try:
        parse_ranks(text, 1)
    except FalconError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def run(args: argparse.Namespace) -> int:
    from falcon.conversion import model_full_rank, parse_ranks

    if args.plan is not None:
        return run_plan(args)
    if args.conv is None:
        raise FalconError("give --conv TYPE (with --rank or --energy), or --plan PLAN.json")
    gd = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("optimizer", args.optimizer)) if v is not None}
    if gd and args.init != "gd":
        raise FalconError(f"--{next(iter(gd))} applies to --init gd only")
    if args.energy is not None and args.rank is not None:
        raise FalconError("give --rank or --energy, not both")
    loaded = _loaded(args)
    options = policy(args)
    text = "1" if args.rank is None else args.rank
    single = text.isascii() and text.isdigit()
    ranks = [parse_int(text, "rank", "--rank")] if single else parse_ranks(text, model_full_rank(loaded, args.conv, **options))
    if args.energy is None and (len(ranks) > 1 or not single):
        if args.output:
            raise FalconError("--output saves one converted model; give a single --rank")
        return _run_table(args, loaded, ranks, options, gd)
    return _run_one(args, loaded, None if args.energy is not None else ranks[0], options, gd)


def _loaded(args: argparse.Namespace):
    from falcon.sources import load_model

    loaded = load_model(args.model, args.weights, args.num_classes)
    if args.evaluate and loaded.eval_data is None:
        raise FalconError(f"{loaded.name} has no held-out set to evaluate on; digits-vgg has one")
    return loaded


def _run_table(args: argparse.Namespace, loaded, ranks: list[int], options: dict, gd: dict) -> int:
    """Several ranks: one row each."""
    from falcon.conversion import convert_ranks

    table = convert_ranks(loaded, args.conv, ranks, args.init, args.evaluate, args.seed, **options, **gd)
    if args.json:
        print_json(table)
        return 0
    print(f"{loaded.description}: {args.conv}, init {args.init}, convention {table['convention']}")
    rows = [{"rank": r["rank"], "params": r["params"], "CR": round(r["compression_rate"], 2), "MACs": r["macs"],
             "CRR": round(r["computation_reduction_rate"], 2), "mean rel. error": round(r["mean_relative_error"], 4),
             **({"accuracy": f"{r['accuracy']:.2%}"} if args.evaluate else {})} for r in table["rows"]]
    print_table(rows)
    print(f"original: {table['standard_params']:,} params, {table['standard_macs']:,} MACs"
          + (f", accuracy {table['baseline_accuracy']:.2%}" if args.evaluate else ""))
    return 0


def _run_one(args: argparse.Namespace, loaded, rank: int | None, options: dict, gd: dict) -> int:
    """One rank (or the energy rule): the per-layer table and totals; saved with --output."""
    from falcon.conversion import convert_model

    converted = convert_model(loaded, args.conv, rank, args.init, energy=args.energy, seed=args.seed, **options, **gd)
    out = _report_and_save(args, loaded, converted)
    if args.json:
        print_json(out)
        return 0
    print(f"{loaded.description}")
    print_table([{"layer": x["layer"], "shape": x["shape"], "rank": x["rank"],
                  "rel. error": round(x["relative_error"], 5)} for x in out["layers"]])
    clamped = [x["layer"] for x in out["layers"] if x["clamped"]]
    if clamped:
        print(f"rank {rank} clamped to the full rank in {', '.join(clamped)}")
    how = f"rank-{rank}" if rank is not None else f"energy ≥ {args.energy:g} per channel (ranks " \
          f"{min(x['rank'] for x in out['layers'])}–{max(x['rank'] for x in out['layers'])})"
    print(f"{how} {args.conv}, init {args.init}: {out['replaced_layers']} convs replaced in {out['seconds']:.2f} s")
    _print_totals(args, out)
    return 0


def _report_and_save(args: argparse.Namespace, loaded, converted) -> dict:
    """The conversion's report (with --evaluate the accuracy before and after); with --output, the file."""
    from falcon.conversion import accuracy, report, save_converted

    baseline = accuracy(loaded.model, loaded.eval_data) if args.evaluate else None
    out = report(converted, args.evaluate, baseline, loaded.eval_data)
    if args.output:
        try:
            out["output"] = str(save_converted(converted, args.output))
        except OSError as e:
            raise FalconError(f"cannot write {args.output}: {e.strerror or e}") from None
    return out


def _print_totals(args: argparse.Namespace, out: dict) -> None:
    print(f"params {out['params']:>13,}   original {out['standard_params']:>13,}   CR  {out['compression_rate']:.2f}x")
    print(f"MACs   {out['macs']:>13,}   original {out['standard_macs']:>13,}   CRR {out['computation_reduction_rate']:.2f}x"
          f"   (convention {out['convention']})")
    if args.evaluate:
        print(f"held-out accuracy {out['accuracy']:.2%} (original {out['baseline_accuracy']:.2%}, "
              f"{out['eval_images']} images, no fine-tuning)")
    if args.output:
        print(f"saved to {out['output']}")


def run_plan(args: argparse.Namespace) -> int:
    """``convert --plan``: each layer as the plan says (type and ranks), fitted to its trained kernel; saved with
    --output (the file records each layer's type, so it loads as the same mixed model)."""
    from falcon.conversion import convert_plan
    from falcon.planning import read_plan

    given = [f for f, v in (("--conv", args.conv), ("--rank", args.rank), ("--energy", args.energy)) if v is not None]
    if given:
        raise FalconError(f"--plan sets each layer's type and rank; leave out {', '.join(given)}")
    plan = read_plan(args.plan)
    loaded = _loaded(args)
    out = _report_and_save(args, loaded, convert_plan(loaded, plan, seed=args.seed))
    if args.json:
        print_json(out)
        return 0
    print(f"{loaded.description}: plan {args.plan}")
    print_table([{"layer": x["layer"], "type": x["conv"], "ranks": ",".join(f"{k}={v}" for k, v in x["hparams"].items()),
                  "rel. error": round(x["relative_error"], 5)} for x in out["layers"]])
    _print_totals(args, out)
    return 0

"""``python -m falcon size`` and ``models``: whole-model sizing under a counting convention."""
from __future__ import annotations

import argparse
import fnmatch

from falcon.cli.common import add_conv_flags, conv_hparams, print_json, print_table
from falcon.counting import CONVENTIONS, KIND_LABELS
from falcon.errors import FalconError
from falcon.limits import float_flag, int_flag
from falcon.models import MODEL_HELP, PAPER_MODEL_ENTRIES, list_models, timm_models
from falcon.sizing import size_for_target, size_model

CONVENTION_HELP = "; ".join(f"{k}: {v}" for k, v in CONVENTIONS.items())


def add_parser(sub) -> None:
    p = sub.add_parser("size", help="params and MACs of a whole model with a conv type",
                       description="Size a model with its replaceable convs swapped for a conv type. "
                                   "Conventions — " + CONVENTION_HELP)
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--num-classes", type=int_flag("num_classes"), default=None, help="classes (default: the model's own)")
    p.add_argument("--input-size", type=int_flag("input_size"), default=None,
                   help="input H=W (default: the model's own: 32 for the CIFAR models, the eval crop of the weights "
                        "for torchvision's and timm's, 224 for your own)")
    add_conv_flags(p)
    p.add_argument("--convention", choices=list(CONVENTIONS), default="paper", help=CONVENTION_HELP)
    add_policy_flags(p)
    t = p.add_mutually_exclusive_group()
    t.add_argument("--target-crr", type=float_flag("target_rate"), default=None, metavar="X",
                   help="a budget: the highest uniform rank of --conv (falcon, dsconv) whose MACs are at least X× fewer "
                        "than the standard model's, with the ranks just above and below")
    t.add_argument("--target-cr", type=float_flag("target_rate"), default=None, metavar="X",
                   help="the same for parameters: at least X× fewer")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)
    m = sub.add_parser("models", help="list the models that can be sized",
                       description="The models --model takes by name; --source timm lists timm's (needs timm).")
    m.add_argument("--source", choices=["builtin", "timm"], default="builtin",
                   help="builtin (the thesis's models, digits-vgg, torchvision's zoo; default) or timm")
    m.add_argument("--filter", default="", metavar="PATTERN", help="only names matching this wildcard pattern (*vit*)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run_models)


def add_policy_flags(p: argparse.ArgumentParser) -> None:
    """Which convs a compressed type replaces: the model's policy, overridden by name patterns."""
    p.add_argument("--include-stem", action="store_true", default=None,
                   help="also replace the first conv (the paper's VGG rules do so for falcon anyway)")
    p.add_argument("--include", action="append", default=None, metavar="PATTERN",
                   help="replace only the convs whose names match (shell-style: 'layer3.*', 'features.1?'); "
                        "repeat or comma-separate; a pattern that matches no conv is an error")
    p.add_argument("--exclude", action="append", default=None, metavar="PATTERN",
                   help="keep the convs whose names match (applied after --include)")


def policy(args: argparse.Namespace) -> dict:
    return {"include_stem": args.include_stem, "include": args.include, "exclude": args.exclude}


def run(args: argparse.Namespace) -> int:
    if args.target_crr is not None or args.target_cr is not None:
        return run_target(args)
    r = size_model(args.model, args.conv, args.num_classes, args.input_size, args.convention,
                   **policy(args), **conv_hparams(args, args.conv))
    d = r.as_dict()
    d.setdefault("macs_by_kind", r.count.macs_by_kind)
    d.setdefault("not_counted", [str(n) for n in r.count.not_counted])
    if args.json:
        print_json(d)
        return 0
    print_table(d["layers"], ["name", "kind", "shape", "input", "output", "params", "macs"])
    print()
    classes = f"{d['num_classes']} classes" if d["num_classes"] else "its own classes"
    origin = "" if d["input_size_from"] in ("", "given") else f" ({d['input_size_from']})"
    print(f"{r.model} ({classes}, {d['input_size']}×{d['input_size']}{origin}), {args.conv} "
          f"{d['hparams'] or ''}, convention {args.convention}: {d['replaced_layers']} convs replaced")
    print(f"params {d['params']:>15,}   standard {d['standard_params']:>15,}   CR  {d['compression_rate']:.3f}x")
    print(f"MACs   {d['macs']:>15,}   standard {d['standard_macs']:>15,}   CRR {d['computation_reduction_rate']:.3f}x")
    if d["macs_by_kind"]:
        print("MACs by kind: " + ", ".join(f"{KIND_LABELS[k]} {v:,}" for k, v in d["macs_by_kind"].items() if v)
              if any(d["macs_by_kind"].values()) else "MACs by kind: none")
    for line in d["not_counted"]:
        print(f"not counted: {line}")
    for note in d["notes"]:
        print(f"note: {note}")
    return 0


def run_target(args: argparse.Namespace) -> int:
    hp = conv_hparams(args, args.conv)
    if hp.pop("rank", None) is not None:
        raise FalconError("--rank is what a target searches for: give --rank or --target-crr/--target-cr, not both")
    budget = size_for_target(args.model, args.conv, crr=args.target_crr, cr=args.target_cr,
                             num_classes=args.num_classes, input_size=args.input_size, convention=args.convention,
                             **policy(args), **hp)
    d = budget.as_dict()
    if args.json:
        print_json(d)
        return 0
    print(budget.summary())
    rows = [{"rank": r["rank"], "params": r["params"], "CR": f"{r['compression_rate']:.3f}x", "MACs": r["macs"],
             "CRR": f"{r['computation_reduction_rate']:.3f}x", "meets target": "yes" if r["meets"] else "no"}
            for r in d["neighbours"]]
    print_table(rows)
    for note in budget.notes:
        print(f"note: {note}")
    return 0 if budget.rank is not None else 1


def run_models(args: argparse.Namespace) -> int:
    if args.source == "timm":
        names = timm_models(args.filter)
        print_json(names) if args.json else print("\n".join(names))
        return 0
    names = [n for n in list_models() if not args.filter or fnmatch.fnmatchcase(n, args.filter)]
    if args.json:
        print_json(names)
    else:
        for name in names:
            entry = PAPER_MODEL_ENTRIES.get(name)
            print(f"{name:24s} {entry.description if entry else ''}".rstrip())
    return 0

"""``python -m falcon size`` and ``models``: whole-model sizing under a counting convention."""
from __future__ import annotations

import argparse

from falcon.cli.common import add_conv_flags, conv_hparams, print_json, print_table
from falcon.counting import CONVENTIONS
from falcon.models import PAPER_MODEL_ENTRIES, list_models
from falcon.sizing import size_model

CONVENTION_HELP = "; ".join(f"{k}: {v}" for k, v in CONVENTIONS.items())


def add_parser(sub) -> None:
    p = sub.add_parser("size", help="params and MACs of a whole model with a conv type",
                       description="Size a model with its replaceable convs swapped for a conv type. "
                                   "Conventions — " + CONVENTION_HELP)
    p.add_argument("--model", required=True, help="vgg19-cifar, resnet34-cifar, digits-vgg or a torchvision "
                                                  "classification model (python -m falcon models)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the model's own)")
    p.add_argument("--input-size", type=int, default=None, help="input H=W (default 32 for the CIFAR models, 224 otherwise)")
    add_conv_flags(p)
    p.add_argument("--convention", choices=list(CONVENTIONS), default="paper", help=CONVENTION_HELP)
    p.add_argument("--include-stem", action="store_true", default=None,
                   help="also replace the first conv (the paper's VGG rules do so for falcon anyway)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)
    m = sub.add_parser("models", help="list the models that can be sized")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run_models)


def run(args: argparse.Namespace) -> int:
    r = size_model(args.model, args.conv, args.num_classes, args.input_size, args.convention,
                   args.include_stem, **conv_hparams(args, args.conv))
    d = r.as_dict()
    if args.json:
        print_json(d)
        return 0
    print_table(d["layers"], ["name", "kind", "shape", "input", "output", "params", "macs"])
    print()
    print(f"{args.model} ({d['num_classes']} classes, {d['input_size']}×{d['input_size']}), {args.conv} "
          f"{d['hparams'] or ''}, convention {args.convention}: {d['replaced_layers']} convs replaced")
    print(f"params {d['params']:>15,}   standard {d['standard_params']:>15,}   CR  {d['compression_rate']:.3f}x")
    print(f"MACs   {d['macs']:>15,}   standard {d['standard_macs']:>15,}   CRR {d['computation_reduction_rate']:.3f}x")
    for note in d["notes"]:
        print(f"note: {note}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    names = list_models()
    if args.json:
        print_json(names)
    else:
        for name in names:
            entry = PAPER_MODEL_ENTRIES.get(name)
            print(f"{name:24s} {entry.description if entry else ''}".rstrip())
    return 0

"""``python -m falcon layer``: closed-form cost of one layer for a conv type, next to the standard conv."""
from __future__ import annotations

import argparse

from falcon.cli.common import add_conv_flags, conv_hparams, print_json, print_table
from falcon.convtypes import CONV_TYPES, compare
from falcon.limits import int_flag
from falcon.spec import LayerSpec


def add_parser(sub) -> None:
    p = sub.add_parser("layer", help="closed-form params and MACs of one layer",
                       description="Closed-form weights and MACs of one D×D conv layer replaced by a conv type "
                                   "(weights only: no bias, no BN; docs/method.md §2), next to the standard conv.")
    p.add_argument("--in-channels", "-M", type=int_flag("channels"), required=True, help="input channels M")
    p.add_argument("--out-channels", "-N", type=int_flag("channels"), required=True, help="output channels N")
    p.add_argument("--kernel-size", "-D", type=int_flag("kernel_size"), required=True, help="kernel size D (D×D)")
    p.add_argument("--input-size", "-H", type=int_flag("input_size"), required=True, help="input height H")
    p.add_argument("--input-width", type=int_flag("input_size"), default=None, help="input width W (default: H)")
    p.add_argument("--stride", type=int_flag("stride"), default=1, help="stride s (default 1)")
    p.add_argument("--padding", type=int_flag("padding"), default=None, help="padding p (default D//2)")
    add_conv_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


def layer_report(spec: LayerSpec, conv: str, hp: dict) -> dict:
    c = compare(spec, conv, **hp)
    ct = CONV_TYPES[conv]
    return {
        "conv": conv,
        "hparams": c.hparams,
        "spec": spec.as_dict(),
        "output_size": list(spec.output_size),
        "params": c.cost.params,
        "macs": c.cost.macs,
        "standard_params": c.standard.params,
        "standard_macs": c.standard.macs,
        "compression_rate": c.compression_rate,
        "computation_reduction_rate": c.computation_reduction_rate,
        "params_formula": ct.latex_params,
        "macs_formula": ct.latex_macs,
        "parts": [{"name": p.name, "params": p.params, "macs": p.macs} for p in c.cost.parts],
    }


def run(args: argparse.Namespace) -> int:
    spec = LayerSpec(args.in_channels, args.out_channels, args.kernel_size, args.input_size,
                     args.input_width, args.stride, args.padding)
    report = layer_report(spec, args.conv, conv_hparams(args, args.conv))
    if args.json:
        print_json(report)
        return 0
    ct = CONV_TYPES[args.conv]
    print(f"{ct.display_name(**report['hparams'])} for {spec.describe()}")
    print_table(report["parts"] + [{"name": "total", "params": report["params"], "macs": report["macs"]},
                                   {"name": "standard conv", "params": report["standard_params"],
                                    "macs": report["standard_macs"]}])
    print(f"compression rate (CR)            {report['compression_rate']:.3f}x")
    print(f"computation reduction rate (CRR) {report['computation_reduction_rate']:.3f}x")
    return 0

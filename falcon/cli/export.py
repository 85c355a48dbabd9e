"""``python -m falcon export``: write a converted model's deployable form (FALCON fused, BN folded) as ONNX or
TorchScript, loaded back and checked against eager fp32 PyTorch on the same input."""
from __future__ import annotations

import argparse

from falcon.cli.common import conv_hparams, print_json
from falcon.convtypes import CONV_TYPES, all_hparams
from falcon.limits import hparam_flag, int_flag


def add_parser(sub) -> None:
    from falcon.export import FORMATS
    from falcon.models import MODEL_HELP

    p = sub.add_parser("export", help="write the deployable (fused) converted model as ONNX or TorchScript",
                       description="Convert a model (FALCON/DSConv fitted with SVD; other types random), fold BN into "
                                   "the convs, fuse FALCON's branches, and write it as ONNX (torch.onnx.export, "
                                   "opset 17, dynamic batch) or TorchScript (torch.jit.trace). The file is loaded "
                                   "back (ONNX Runtime / torch.jit.load) and its output compared with eager fp32 "
                                   "PyTorch on the same input; beyond 1e-3 relative it is an error.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", default=None, help="pretrained, random, or a checkpoint file (default: digits-vgg's "
                                                    "bundled weights, random init for the others)")
    p.add_argument("--num-classes", type=int_flag("num_classes"), default=None, help="classes of the model (default: its own)")
    p.add_argument("--conv", default="falcon", choices=list(CONV_TYPES),
                   help="conv type to convert to (default falcon; standard = the original, BN folded)")
    for h in all_hparams().values():
        p.add_argument(h.flag, dest=h.name, type=hparam_flag(h), default=None, help=f"{h.help} (default {h.default})")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or torchscript")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--input-size", "-H", type=int_flag("input_size"), default=None, help="input height = width (default: the model's)")
    p.add_argument("--batch-size", "-B", type=int_flag("export_batch_size"), default=1, help="batch of the sample input used for export and "
                                                                   "the check (default 1; the ONNX batch is dynamic)")
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="skip the held-out accuracy check (digits-vgg has held-out data)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from falcon.deploy import export_model

    hp = {k: v for k, v in conv_hparams(args, args.conv).items() if v is not None}
    result = export_model(args.model, args.output, args.format, conv=args.conv, weights=args.weights,
                          input_size=args.input_size, batch_size=args.batch_size, num_classes=args.num_classes,
                          evaluate=args.evaluate, **hp)
    if args.json:
        print_json(result.as_dict())
        return 0
    c, h, w = result.input_size
    from falcon.convtypes import label_of

    what = "the original" if result.conv == "standard" else label_of(result.conv, result.hparams)
    print(f"wrote {result.path} ({result.format}, {result.bytes:,} bytes): {result.model}, {what}, "
          f"{result.replaced_layers} layers replaced, input {c}×{h}×{w}")
    print(f"deployable form: {result.deploy.describe()}")
    print(f"parity with eager fp32 PyTorch ({result.runtime}): {result.parity.describe()}")
    if result.accuracy:
        a = result.accuracy
        print(f"held-out accuracy ({a['samples']} images): eager {a['eager']:.2%}, exported {a['exported']:.2%}")
    for note in result.notes:
        print(f"note: {note}")
    return 0

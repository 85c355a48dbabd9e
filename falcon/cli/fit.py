"""``python -m falcon layers`` and ``fit``: the conv layers of a model, and the EHP fit of one of them
(both from :mod:`falcon.probe`, the layer probe the EHP-fit page uses too)."""
from __future__ import annotations

import argparse

from falcon.cli.common import print_json, print_table
from falcon.convtypes import FITTABLE, get_conv_type
from falcon.errors import FalconError
from falcon.limits import float_flag, int_flag


def add_model_flags(p: argparse.ArgumentParser) -> None:
    from falcon.models import MODEL_HELP

    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", default=None, metavar="PATH|pretrained|random",
                   help="a checkpoint file (a state_dict, loaded with weights_only=True), 'pretrained' (torchvision's "
                        "weights via its cache $TORCH_HOME/hub/checkpoints; timm's via the Hugging Face cache), or "
                        "'random'. Default: the bundled weights for digits-vgg, random init otherwise (a factory of "
                        "your own: whatever it initializes)")
    p.add_argument("--num-classes", type=int_flag("num_classes"), default=None,
                   help="classes (default: the model's own, or the checkpoint's classifier size)")


def add_parser(sub) -> None:
    from falcon.ehp import FIT_OPTIMIZERS, GD_DEFAULTS, GD_STEPS, LOSSES

    p = sub.add_parser("layers", help="the conv layers of a model, with shapes",
                       description="Every Conv2d of a model in forward order: channels, kernel, stride, padding, "
                                   "input and output size, and the full rank of its falcon and dsconv fits.")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run_layers)

    f = sub.add_parser("fit", help="fit one conv layer of a model with a fittable conv type (" + ", ".join(FITTABLE) + ")",
                       description="Fit the kernel of one conv layer with a conv type's factors: falcon/dsconv's "
                                   "rank-k pointwise × depthwise factors (svd: a truncated SVD per channel, or gd: "
                                   "gradient descent as the thesis did), tucker2 (HOSVD refined by HOOI), cp (ALS) or "
                                   "spatial (SVD). Reports the relative error ||K - K_hat||_F / ||K||_F and the time, "
                                   "next to the type's default fit at that rank.")
    add_model_flags(f)
    f.add_argument("--layer", required=True, help="the conv's module name (python -m falcon layers --model NAME)")
    f.add_argument("--conv", choices=FITTABLE, default=FITTABLE[0],
                   help="falcon (common axis: output channel; default) or dsconv (input channel)")
    f.add_argument("--rank", type=int_flag("rank"), default=1,
                   help="rank (default 1): every ranked hyper-parameter of the type; above the layer's full rank it is "
                        "clamped")
    for name, h in _rank_flags().items():
        f.add_argument(h.flag, dest=name, type=int_flag("rank"), default=None,
                       help=f"{'/'.join(c for c in FITTABLE if name in get_conv_type(c).rank_names)}: {h.label} "
                            "(default: --rank)")
    f.add_argument("--auto-rank", action="store_true",
                   help="the type's own rank rule instead of --rank (tucker2: EVBMF on the kernel's two unfoldings)")
    f.add_argument("--method", choices=_methods(), default="svd",
                   help="svd: the type's default fit (falcon, dsconv, spatial: the SVD optimum; tucker2: HOSVD + HOOI; "
                        "cp: ALS); gd (falcon, dsconv), hosvd, hooi (tucker2), als (cp), random: a fresh block")
    f.add_argument("--steps", type=int_flag("steps"), default=None, help=f"gd: optimizer steps (default {GD_STEPS})")
    f.add_argument("--lr", type=float_flag("lr"), default=None,
                   help="gd: learning rate (default " + ", ".join(f"{k} {v['lr']:g}" for k, v in GD_DEFAULTS.items()) + ")")
    f.add_argument("--optimizer", choices=list(FIT_OPTIMIZERS), default=None,
                   help="gd: adam (default) or sgd (the thesis's reference fit: lr 0.01 on the mean squared error)")
    f.add_argument("--loss", choices=list(LOSSES), default=None,
                   help="gd: relative (||K - K_hat||^2 / ||K||^2; adam's default) or mse (mean squared error; sgd's)")
    f.add_argument("--seed", type=int_flag("seed"), default=0, help="gd: seed of the random start (default 0)")
    f.add_argument("--json", action="store_true", help="one JSON object on stdout")
    f.set_defaults(func=run_fit)


# ----------------------------------------------------------------------------------------------
def _load(args):
    from falcon.sources import load_model

    return load_model(args.model, args.weights, args.num_classes)


def run_layers(args: argparse.Namespace) -> int:
    from falcon.probe import conv_layers

    loaded = _load(args)
    rows = conv_layers(loaded.model, loaded.input_size)
    if args.json:
        print_json({"model": loaded.name, "weights": loaded.weights, "description": loaded.description,
                    "input_size": list(loaded.input_size), "num_classes": loaded.num_classes, "layers": rows})
        return 0
    table = [{"name": r["name"], "M→N": f"{r['in_channels']}→{r['out_channels']}", "kernel": r["kernel"],
              "stride": r["stride"], "pad": r["padding"], "input": r["input"], "output": r["output"],
              "bias": "yes" if r["bias"] else "", "fit": "yes" if r["fittable"] else "no",
              **{f"{c} k*": r[f"{c}_full_rank"] or "" for c in FITTABLE}} for r in rows]
    print(loaded.description)
    print_table(table)
    rules = ", ".join(f"{c} {get_conv_type(c).fit.formula}" for c in FITTABLE)
    print(f"{len(rows)} convs; k* = full rank, where the fit is exact ({rules})")
    return 0


def _rank_flags() -> dict:
    """The ranked hyper-parameters other than ``rank`` (tucker2's R₃, R₄), by name: each gets its own flag."""
    from falcon.convtypes import all_hparams

    names = {n for c in FITTABLE for n in get_conv_type(c).rank_names} - {"rank"}
    return {n: h for n, h in all_hparams().items() if n in names}


def _methods() -> list[str]:
    from falcon.fits import fitter_of

    return list(dict.fromkeys(["svd", *(m for c in FITTABLE for m in fitter_of(c).methods)]))


def fit_ranks(args: argparse.Namespace) -> int | dict | None:
    """--rank, or a dict where a ranked hyper-parameter has its own flag, or None with --auto-rank."""
    if args.auto_rank:
        return None
    names = get_conv_type(args.conv).rank_names
    given = {n: getattr(args, n, None) for n in names if getattr(args, n, None) is not None}
    return {n: given.get(n, args.rank) for n in names} if given else args.rank


GD_ONLY = ("steps", "lr", "optimizer", "loss")


def check_gd_flags(args: argparse.Namespace) -> None:
    """--steps, --lr, --optimizer and --loss tune gradient descent only: with another method they are refused, not
    silently ignored. Their defaults (GD_STEPS, each optimizer's lr and loss, adam) are filled in here."""
    given = [n for n in GD_ONLY if getattr(args, n) is not None]
    if args.method != "gd" and given:
        flags = ", ".join("--" + n for n in given)
        raise FalconError(f"{flags} only tune --method gd (the {args.method} fit has no steps or learning rate): "
                          f"add --method gd or drop {flags}")
    from falcon.ehp import GD_STEPS

    args.steps = GD_STEPS if args.steps is None else args.steps
    args.optimizer = args.optimizer or "adam"


def run_fit(args: argparse.Namespace) -> int:
    check_gd_flags(args)
    loaded = _load(args)
    from falcon.probe import fit_layer

    r = {"model": loaded.name, "weights": loaded.weights,
         **fit_layer(loaded.model, loaded.input_size, args.layer, args.conv, fit_ranks(args), args.method, args.steps,
                     args.lr, args.optimizer, args.loss, args.seed)}
    if args.json:
        print_json(r)
        return 0
    s = r["spec"]
    print(f"{loaded.description}")
    ranks = ", ".join(f"{k}={v}" for k, v in r["ranks"].items())
    full = ", ".join(f"{k}={v}" for k, v in r["full_ranks"].items())
    print(f"layer {r['layer']}: {s['in_channels']}→{s['out_channels']}, {s['kernel_size']}×{s['kernel_size']}, "
          f"stride {s['stride']}; {r['conv']} {ranks} (full: {full})"
          + (f" — rank {r['rank_requested']} clamped to the full rank" if r["clamped"] else ""))
    if r["method"] == "gd":
        print(f"gradient descent: {r['optimizer']}, lr {r['lr']:g}, {r['loss']} loss, {r['steps']} steps, "
              f"{r['seconds']:.2f} s")
        for i, (step, err) in enumerate(zip(r["loss_history_steps"], r["relative_error_history"])):
            if i % max(1, len(r["loss_history_steps"]) // 6) == 0 or i == len(r["loss_history_steps"]) - 1:
                print(f"  step {step:6d}  relative error {err:.5f}")
    method = r["default_method"] if r["method"] == "svd" else r["method"]
    print(f"relative error       {r['relative_error']:.6f}  ({method}, {r['seconds']:.3f} s)")
    if method != r["default_method"]:
        what = "optimum (SVD)" if r["default_method"] == "svd" else f"default ({r['default_method']})"
        print(f"{what:<20} {r['optimum_relative_error']:.6f}  ({r['optimum_seconds']:.3f} s)"
              + (f"; {method} is {r['gap']:+.2%} from it" if r["gap"] is not None else ""))
    for note in r["notes"]:
        print(f"note: {note}")
    if r["error_by_rank"]:
        what = "optimum by rank" if r["default_method"] == "svd" else "closed form by rank"
        print(f"{what:<20} " + "  ".join(f"{k}:{e:.3f}" for k, e in enumerate(r["error_by_rank"][:24], 1))
              + (f"  … {len(r['error_by_rank'])}:{r['error_by_rank'][-1]:.3f}" if len(r["error_by_rank"]) > 24 else ""))
    print(f"layer weights        {r['params']:,} instead of {r['standard_params']:,} ({r['compression_rate']:.2f}× fewer)")
    return 0

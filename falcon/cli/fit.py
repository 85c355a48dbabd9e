"""``python -m falcon layers`` and ``fit``: the conv layers of a model, and the EHP fit of one of them."""
from __future__ import annotations

import argparse
import difflib
import math
import time

from falcon.cli.common import print_json, print_table
from falcon.convtypes import FITTABLE, get_conv_type
from falcon.errors import FalconError

MAX_HISTORY = 200  # loss_history points in the JSON output (subsampled above that)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="digits-vgg, vgg19-cifar, resnet34-cifar, vgg16_bn, resnet18 or any "
                                                  "torchvision classification model (python -m falcon models)")
    p.add_argument("--weights", default=None, metavar="PATH|pretrained|random",
                   help="a checkpoint file (a state_dict, loaded with weights_only=True), 'pretrained' (torchvision's "
                        "weights via its cache $TORCH_HOME/hub/checkpoints), or 'random'. Default: the bundled weights "
                        "for digits-vgg, random init otherwise")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes (default: the model's own, or the checkpoint's classifier size)")


def add_parser(sub) -> None:
    from falcon.ehp import GD_DEFAULTS, GD_STEPS, LOSSES, OPTIMIZERS

    p = sub.add_parser("layers", help="the conv layers of a model, with shapes",
                       description="Every Conv2d of a model in forward order: channels, kernel, stride, padding, "
                                   "input and output size, and the full rank of its falcon and dsconv fits.")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=run_layers)

    f = sub.add_parser("fit", help="fit one conv layer of a model with a rank-k EHP (falcon or dsconv)",
                       description="Fit the kernel of one conv layer with rank-k pointwise × depthwise factors: the "
                                   "closed-form optimum (svd: a truncated SVD per channel) or gradient descent from a "
                                   "random start (gd, as the thesis did). Reports the relative error "
                                   "||K - K_hat||_F / ||K||_F next to the optimum at that rank.")
    add_model_flags(f)
    f.add_argument("--layer", required=True, help="the conv's module name (python -m falcon layers --model NAME)")
    f.add_argument("--conv", choices=FITTABLE, default=FITTABLE[0],
                   help="falcon (common axis: output channel; default) or dsconv (input channel)")
    f.add_argument("--rank", type=int, default=1, help="rank k (default 1); above the layer's full rank it is clamped")
    f.add_argument("--method", choices=["svd", "gd"], default="svd", help="svd (closed form, default) or gd")
    f.add_argument("--steps", type=int, default=GD_STEPS, help=f"gd: optimizer steps (default {GD_STEPS})")
    f.add_argument("--lr", type=float, default=None,
                   help="gd: learning rate (default " + ", ".join(f"{k} {v['lr']:g}" for k, v in GD_DEFAULTS.items()) + ")")
    f.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adam",
                   help="gd: adam (default) or sgd (the thesis's reference fit: lr 0.01 on the mean squared error)")
    f.add_argument("--loss", choices=list(LOSSES), default=None,
                   help="gd: relative (||K - K_hat||^2 / ||K||^2; adam's default) or mse (mean squared error; sgd's)")
    f.add_argument("--seed", type=int, default=0, help="gd: seed of the random start (default 0)")
    f.add_argument("--json", action="store_true", help="one JSON object on stdout")
    f.set_defaults(func=run_fit)


# ----------------------------------------------------------------------------------------------
def layer_rows(loaded) -> list[dict]:
    from falcon.ehp import full_rank
    from falcon.surgery import conv_sites

    modules = dict(loaded.model.named_modules())
    rows = []
    for site in conv_sites(loaded.model, loaded.input_size):
        conv = modules[site.name]
        kernel = "×".join(map(str, conv.kernel_size))
        row = {"name": site.name, "in_channels": conv.in_channels, "out_channels": conv.out_channels,
               "kernel": kernel, "stride": conv.stride[0], "padding": conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding,
               "groups": conv.groups, "bias": site.bias, "stem": site.is_stem, "fittable": site.replaceable}
        if site.spec is not None:
            s = site.spec
            row.update(input=f"{s.height}×{s.width}", output=f"{s.out_height}×{s.out_width}",
                       falcon_full_rank=full_rank((s.N, s.M, s.D), "output"),
                       dsconv_full_rank=full_rank((s.N, s.M, s.D), "input"))
        else:
            row.update(input="", output="", falcon_full_rank=None, dsconv_full_rank=None)
        rows.append(row)
    return rows


def _load(args):
    from falcon.sources import load_model

    return load_model(args.model, args.weights, args.num_classes)


def run_layers(args: argparse.Namespace) -> int:
    loaded = _load(args)
    rows = layer_rows(loaded)
    if args.json:
        print_json({"model": loaded.name, "weights": loaded.weights, "description": loaded.description,
                    "input_size": list(loaded.input_size), "num_classes": loaded.num_classes, "layers": rows})
        return 0
    table = [{"name": r["name"], "M→N": f"{r['in_channels']}→{r['out_channels']}", "kernel": r["kernel"],
              "stride": r["stride"], "pad": r["padding"], "input": r["input"], "output": r["output"],
              "bias": "yes" if r["bias"] else "", "fit": "yes" if r["fittable"] else "no",
              "falcon k*": r["falcon_full_rank"] or "", "dsconv k*": r["dsconv_full_rank"] or ""} for r in rows]
    print(loaded.description)
    print_table(table)
    print(f"{len(rows)} convs; k* = full rank, where the fit is exact (falcon min(M, D²), dsconv min(N, D²))")
    return 0


def find_conv(model, name: str):
    from torch import nn

    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        module = model.get_submodule(name)
    except AttributeError:
        close = difflib.get_close_matches(name, convs, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"conv layers: {', '.join(convs[:4])}{', …' if len(convs) > 4 else ''}"
        raise FalconError(f"no layer {name!r} in the model; {hint}") from None
    if not isinstance(module, nn.Conv2d):
        raise FalconError(f"{name} is a {type(module).__name__}, not a conv layer; `python -m falcon layers` lists them")
    return module


def subsample(values: list, limit: int = MAX_HISTORY) -> tuple[list, list[int], int]:
    """At most ``limit`` evenly spaced values (the last one always kept): (values, their indices, stride)."""
    every = max(1, math.ceil(len(values) / limit))
    idx = list(range(0, len(values), every))
    if values and idx[-1] != len(values) - 1:
        idx.append(len(values) - 1)
    return [values[i] for i in idx], idx, every


def fit_layer(loaded, layer: str, conv: str, rank: int, method: str, steps: int, lr: float | None,
              optimizer: str, loss: str | None, seed: int) -> dict:
    """The report of ``fit``: the fit of one layer next to the optimum (what --json prints)."""
    from falcon.convtypes import compare
    from falcon.ehp import GD_DEFAULTS, error_by_rank, run_gd, svd_fit
    from falcon.surgery import conv_sites

    module = find_conv(loaded.model, layer)
    site = next((s for s in conv_sites(loaded.model, loaded.input_size) if s.name == layer), None)
    if site is None:
        raise FalconError(f"layer {layer} is not reached by the model's forward pass")
    if not site.replaceable:
        raise FalconError(f"{layer} ({module.in_channels}→{module.out_channels}, kernel "
                          f"{'×'.join(map(str, module.kernel_size))}, groups {module.groups}) cannot be fitted: the EHP "
                          "replaces square D×D convs with D > 1, groups 1, dilation 1")
    axis = get_conv_type(conv).fit_axis
    kernel = module.weight.detach()
    t0 = time.perf_counter()
    optimum = svd_fit(kernel, rank, axis)
    optimum_seconds = time.perf_counter() - t0
    out = {"model": loaded.name, "weights": loaded.weights, "layer": layer, "spec": site.spec.as_dict(),
           "kernel_shape": list(kernel.shape), "conv": conv, "axis": axis, "method": method,
           "rank_requested": rank, "rank_used": optimum.rank_used, "clamped": optimum.clamped,
           "full_rank": optimum.full_rank}
    if method == "svd":
        fit, seconds, history, steps_done = optimum, optimum_seconds, [], 0
        out["optimizer"] = None
    else:
        res = run_gd(kernel, rank, axis, steps=steps, lr=lr, optimizer=optimizer, seed=seed, loss=loss)
        fit, seconds, history, steps_done = res.fit, res.seconds, res.history, res.steps
        defaults = GD_DEFAULTS[optimizer]
        out.update(optimizer=optimizer, lr=defaults["lr"] if lr is None else lr,
                   loss=defaults["loss"] if loss is None else loss, scale=defaults["scale"], seed=seed)
    losses, idx, every = subsample([h.loss for h in history])
    cmp = compare(site.spec, conv, rank=fit.rank_used)
    out.update({
        "relative_error": fit.relative_error,
        "optimum_relative_error": optimum.relative_error,
        "gap": fit.relative_error / optimum.relative_error - 1 if optimum.relative_error > 0 else None,
        "steps": steps_done,
        "seconds": seconds,
        "optimum_seconds": optimum_seconds,
        "loss_history": losses,
        "loss_history_steps": idx,
        "loss_history_every": every,
        "relative_error_history": [history[i].relative_error for i in idx],
        "error_by_rank": error_by_rank(kernel, axis),
        "params": cmp.cost.params,
        "standard_params": cmp.standard.params,
        "compression_rate": cmp.compression_rate,
    })
    if history:
        out["loss_history_note"] = (f"loss before each of the {steps_done} steps and after the last, "
                                    + (f"every {every}th kept (and the last)" if every > 1 else "all kept"))
    return out


def run_fit(args: argparse.Namespace) -> int:
    if args.rank < 1:
        raise FalconError(f"rank must be a positive integer, got {args.rank}")
    if args.steps < 0:
        raise FalconError(f"steps must be a non-negative integer, got {args.steps}")
    loaded = _load(args)
    r = fit_layer(loaded, args.layer, args.conv, args.rank, args.method, args.steps, args.lr, args.optimizer,
                  args.loss, args.seed)
    if args.json:
        print_json(r)
        return 0
    s = r["spec"]
    print(f"{loaded.description}")
    print(f"layer {r['layer']}: {s['in_channels']}→{s['out_channels']}, {s['kernel_size']}×{s['kernel_size']}, "
          f"stride {s['stride']}; rank-{r['rank_used']} {r['conv']} (full rank {r['full_rank']})"
          + (f" — rank {r['rank_requested']} clamped to {r['rank_used']}" if r["clamped"] else ""))
    if r["method"] == "gd":
        print(f"gradient descent: {r['optimizer']}, lr {r['lr']:g}, {r['loss']} loss, {r['steps']} steps, "
              f"{r['seconds']:.2f} s")
        for i, (step, err) in enumerate(zip(r["loss_history_steps"], r["relative_error_history"])):
            if i % max(1, len(r["loss_history_steps"]) // 6) == 0 or i == len(r["loss_history_steps"]) - 1:
                print(f"  step {step:6d}  relative error {err:.5f}")
    print(f"relative error       {r['relative_error']:.6f}" + (f"  ({r['method']}, {r['seconds']:.3f} s)"))
    print(f"optimum (SVD)        {r['optimum_relative_error']:.6f}  ({r['optimum_seconds']:.3f} s)"
          + (f"; gd is {r['gap']:+.2%} from it" if r["method"] == "gd" and r["gap"] is not None else ""))
    print("optimum by rank      " + "  ".join(f"{k}:{e:.3f}" for k, e in enumerate(r["error_by_rank"], 1)))
    print(f"layer weights        {r['params']:,} instead of {r['standard_params']:,} ({r['compression_rate']:.2f}× fewer)")
    return 0

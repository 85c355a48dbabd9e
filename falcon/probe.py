"""One layer of a trained model, probed: its fittable convs, the input that reaches it, and what a fitted
replacement block does to its output and to the network's predictions.

One implementation for ``python -m falcon layers``/``fit`` (:func:`conv_layers`, :func:`fit_layer`) and the
EHP-fit page (:func:`load_for_fit`, :func:`kernel_info`, :class:`LayerProbe`, :func:`fit_effect`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from falcon.convtypes import get_conv_type
from falcon.errors import FalconError
from falcon.spec import LayerSpec


MAX_HISTORY = 200  # loss-history points in a fit report (subsampled above that)


def _meta_shadow(model):
    """A copy of ``model`` on the meta device (shapes only; its weights are not copied), so that a walk
    that registers hooks never touches a model that other sessions share."""
    import copy

    import torch

    if next((p.device.type for p in model.parameters()), "cpu") == "meta":
        return model
    memo = {}
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in memo:
            empty = torch.empty_like(t, device="meta")
            memo[id(t)] = torch.nn.Parameter(empty, requires_grad=t.requires_grad) \
                if isinstance(t, torch.nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def conv_walk(model, input_size: tuple[int, int, int]) -> list[tuple[Any, Any]]:
    """Every Conv2d the forward pass of ``model`` reaches, in forward order, as ``(site, conv)`` pairs
    (:class:`falcon.surgery.ConvSite`, the conv of a meta copy: shapes only). The walk runs on a meta copy."""
    from falcon.surgery import conv_sites

    shadow = _meta_shadow(model)
    modules = dict(shadow.named_modules())
    return [(site, modules[site.name]) for site in conv_sites(shadow, input_size)]


def conv_layers(model, input_size: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Every conv of ``model`` in forward order (what ``python -m falcon layers`` lists): channels, kernel,
    stride, padding, groups, bias, whether it is the stem and whether it can be fitted; for a fittable one
    its input and output size and, per fittable conv type, ``{type}_full_rank`` (where the fit is exact)."""
    from falcon.convtypes import CONV_TYPES, FITTABLE

    rows = []
    for site, conv in conv_walk(model, input_size):
        row = {"name": site.name, "in_channels": conv.in_channels, "out_channels": conv.out_channels,
               "kernel": "×".join(map(str, conv.kernel_size)), "stride": conv.stride[0],
               "padding": conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding,
               "groups": conv.groups, "bias": site.bias, "stem": site.is_stem, "fittable": site.replaceable}
        s = site.spec
        if s is not None:
            row.update(input=f"{s.height}×{s.width}", output=f"{s.out_height}×{s.out_width}")
            row.update({f"{c}_full_rank": CONV_TYPES[c].full_rank(s.N, s.M, s.D) for c in FITTABLE})
        else:
            row.update(input="", output="")
            row.update({f"{c}_full_rank": None for c in FITTABLE})
        rows.append(row)
    return rows


def fittable_layers(model, input_size: tuple[int, int, int]) -> list[dict[str, Any]]:
    """The convs of ``model`` that FALCON/DSConv can fit (groups 1, square kernel > 1×1), in forward
    order, with their shapes and the spatial size of their input."""
    rows = []
    for site, _conv in conv_walk(model, input_size):
        if not site.replaceable:
            continue
        s = site.spec
        rows.append({"name": site.name, "in_channels": s.M, "out_channels": s.N, "kernel_size": s.D,
                     "stride": s.stride, "padding": s.padding, "height": s.height, "width": s.width,
                     "params": s.D * s.D * s.M * s.N, "bias": site.bias,
                     "label": f"{site.name} · {s.M}→{s.N} {s.D}×{s.D}/{s.stride} · input {s.height}×{s.width}"})
    return rows


def find_conv(model, name: str):
    """The Conv2d named ``name`` in ``model``; a FalconError that suggests close names otherwise."""
    import difflib

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


def fittable_site(model, input_size: tuple[int, int, int], layer: str):
    """(conv, site) of the fittable conv ``layer`` (:func:`find_conv`); a FalconError when the forward pass does
    not reach it or FALCON/DSConv cannot replace it."""
    module = find_conv(model, layer)
    site = next((s for s, _ in conv_walk(model, input_size) if s.name == layer), None)
    if site is None:
        raise FalconError(f"layer {layer} is not reached by the model's forward pass")
    if not site.replaceable:
        raise FalconError(f"{layer} ({module.in_channels}→{module.out_channels}, kernel "
                          f"{'×'.join(map(str, module.kernel_size))}, groups {module.groups}) cannot be fitted: the EHP "
                          "replaces square D×D convs with D > 1, groups 1, dilation 1")
    return module, site


def subsample(values: list, limit: int = MAX_HISTORY) -> tuple[list, list[int], int]:
    """At most ``limit`` evenly spaced values (the last one always kept): (values, their indices, stride)."""
    every = max(1, math.ceil(len(values) / limit))
    idx = list(range(0, len(values), every))
    if values and idx[-1] != len(values) - 1:
        idx.append(len(values) - 1)
    return [values[i] for i in idx], idx, every


def fit_layer(model, input_size: tuple[int, int, int], layer: str, conv: str, rank: int | dict | None = 1,
              method: str = "svd", steps: int | None = None, lr: float | None = None, optimizer: str = "adam",
              loss: str | None = None, seed: int = 0) -> dict[str, Any]:
    """One layer of ``model`` fitted with ``conv`` at ``rank`` (one rank, a dict of the type's ranks, or None for
    its own rule) by ``method`` (``svd``: the type's default fit; ``gd`` with ``steps``, default
    :data:`falcon.ehp.GD_STEPS`; or another of its fitter's methods), next to the default fit at that rank: the
    report ``python -m falcon fit`` prints (its ``--json`` keys after ``model`` and ``weights``)."""
    import time

    from falcon.convtypes import compare
    from falcon.fits import fitter_of

    module, site = fittable_site(model, input_size, layer)
    fitter = fitter_of(conv)
    kernel = module.weight.detach()
    t0 = time.perf_counter()
    optimum = fitter.fit(kernel, rank, "svd", seed=seed)
    optimum_seconds = time.perf_counter() - t0
    out = {"layer": layer, "spec": site.spec.as_dict(), "kernel_shape": list(kernel.shape), "conv": conv,
           "axis": getattr(fitter, "axis", None), "method": method, "default_method": fitter.method_of("svd"),
           "ranks": dict(optimum.hparams), "rank_requested": rank if rank is None or isinstance(rank, int) else max(rank.values()),
           "rank_used": optimum.rank_used, "clamped": optimum.clamped, "full_rank": optimum.full_rank,
           "full_ranks": dict(optimum.full_ranks)}
    history: list = []
    if fitter.method_of(method) == fitter.method_of("svd"):
        fit, seconds, steps_done = optimum, optimum_seconds, 0
        out["optimizer"] = None
    elif method == "gd":
        fit, seconds, history, steps_done = _gd_fit(out, fitter, kernel, optimum.hparams, steps, lr, optimizer, loss, seed)
    else:
        t0 = time.perf_counter()
        fit = fitter.fit(kernel, optimum.hparams, method, seed=seed)
        seconds, steps_done = time.perf_counter() - t0, 0
        out["optimizer"] = None
    losses, idx, every = subsample([h.loss for h in history])
    cmp = compare(site.spec, conv, **fit.hparams)
    out.update({
        "relative_error": fit.relative_error,
        "optimum_relative_error": optimum.relative_error,
        "gap": fit.relative_error / optimum.relative_error - 1 if optimum.relative_error > 0 else None,
        "steps": steps_done,
        "seconds": seconds,
        "optimum_seconds": optimum_seconds,
        "notes": list(getattr(fit, "notes", [])),
        "loss_history": losses,
        "loss_history_steps": idx,
        "loss_history_every": every,
        "relative_error_history": [history[i].relative_error for i in idx],
        "error_by_rank": fitter.error_by_rank(kernel) or [],
        "params": cmp.cost.params,
        "standard_params": cmp.standard.params,
        "compression_rate": cmp.compression_rate,
    })
    if history:
        out["loss_history_note"] = (f"loss before each of the {steps_done} steps and after the last, "
                                    + (f"every {every}th kept (and the last)" if every > 1 else "all kept"))
    return out


def _gd_fit(out: dict, fitter, kernel, ranks: dict, steps, lr, optimizer, loss, seed):
    """The thesis's gradient descent (EHP types): (fit, seconds, history, steps done); its settings into ``out``."""
    from falcon.ehp import GD_DEFAULTS, GD_STEPS, run_gd

    fitter.method_of("gd")  # a one-line error for a type without it
    res = run_gd(kernel, ranks["rank"], fitter.axis, steps=GD_STEPS if steps is None else steps, lr=lr,
                 optimizer=optimizer, seed=seed, loss=loss)
    defaults = GD_DEFAULTS[optimizer]
    out.update(optimizer=optimizer, lr=defaults["lr"] if lr is None else lr,
               loss=defaults["loss"] if loss is None else loss, scale=defaults["scale"], seed=seed)
    return res.fit, res.seconds, res.history, res.steps


def layer_input(model, layer: str, x):
    """The tensor that reaches ``layer`` when ``model`` (eval mode) runs on ``x``."""
    import torch

    seen = {}
    module = model.get_submodule(layer)

    def grab(_m, inputs):
        seen["x"] = inputs[0].detach()
        raise _Captured

    handle = module.register_forward_pre_hook(grab)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    if "x" not in seen:
        raise FalconError(f"layer {layer!r} is not reached by the model's forward pass")
    return seen["x"]


class _Captured(Exception):
    """Stops the forward pass once the layer's input is captured."""


class LayerProbe:
    """``model`` run once up to ``layer`` on fixed inputs, so that trying a replacement block only runs the
    layer and what comes after it.

    The model is traced with ``torch.fx``; the values computed before the layer that later nodes still
    need (the layer's input, skip connections) are kept. Models fx cannot trace fall back to running
    the whole network each time. Inputs run in ``channels_last`` (on CPU the depthwise convs of the
    FALCON/DSConv blocks are many times faster in it), under ``torch.inference_mode``.
    """

    def __init__(self, model, layer: str, x):
        import torch
        import torch.fx

        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model, self.layer, self.x = model, layer, x
        self._graph = None
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - control flow fx cannot trace: run the whole model instead
            gm = None
        nodes = list(gm.graph.nodes) if gm is not None else []
        at = next((i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer), None)
        if gm is None or at is None or len(nodes[at].args) != 1:
            self.input = layer_input(model, layer, x)
            return
        interp = torch.fx.Interpreter(gm)
        interp.env, interp.args_iter = {}, iter([x])
        with torch.inference_mode():
            for node in nodes[:at]:
                interp.env[node] = interp.run_node(node)
        later = nodes[at:]
        self.input = interp.env[nodes[at].args[0]]
        self._kept = {n: interp.env[n] for n in nodes[:at] if any(u in later for u in n.users)}
        self._graph, self._node, self._later = gm, nodes[at], later[1:]

    def output(self, module):
        import torch

        with torch.inference_mode():
            return module(self.input)

    def logits(self, module):
        """The network's output with ``module`` in place of the layer."""
        import torch

        if self._graph is None:  # no trace: a copy of the model with the module swapped in
            import copy

            from falcon.surgery import set_module

            clone = copy.deepcopy(self.model)
            set_module(clone, self.layer, module)
            with torch.inference_mode():
                return clone(self.x)
        interp = torch.fx.Interpreter(self._graph)
        # clones: an in-place op after the layer must not change the kept values
        interp.env = {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in self._kept.items()}
        with torch.inference_mode():
            interp.env[self._node] = module(self.input)
            for node in self._later:
                value = interp.run_node(node)
                if node.op == "output":
                    return value
                interp.env[node] = value
        raise FalconError("the traced model has no output")


def output_error(conv, block, x) -> float:
    """‖conv(x) − block(x)‖ / ‖conv(x)‖ on the sample inputs ``x``: what the fit changes in the layer's output."""
    import torch

    with torch.inference_mode():
        y, y_hat = conv(x).double(), block(x).double()
    den = torch.linalg.vector_norm(y).item()
    num = torch.linalg.vector_norm(y - y_hat).item()
    return num / den if den else (0.0 if num == 0 else math.inf)


def block_from_fit(conv, conv_type: str, fit, spec: LayerSpec):
    """A bare ``conv_type`` block that computes ``conv`` up to the fit: the fit's factors loaded, the conv's bias
    (if any) carried over (the type's fitter: :mod:`falcon.fits`)."""
    from falcon.fits import fitter_of

    fitter = fitter_of(conv_type)
    block = get_conv_type(conv_type).build(spec, **fit.hparams).to(device=conv.weight.device, dtype=conv.weight.dtype)
    fitter.load(block, fit)
    if conv.bias is not None:
        fitter.attach_bias(block, conv.bias.detach())
    return block.eval()


#: Where the EHP-fit page takes a model from.
FIT_SOURCES = {"digits-vgg": "digits-vgg (bundled)", "torchvision": "torchvision", "checkpoint": "checkpoint"}


@dataclass
class FitTarget:
    """A trained model ready for fitting one layer at a time (not :class:`falcon.sources.LoadedModel`, the
    model-loading record): its fittable layers, sample inputs and (digits) held-out set."""

    key: str  # identifies source, name and weights (cache key)
    name: str
    model: Any  # nn.Module in eval mode; shared, never modified
    input_size: tuple[int, int, int]
    layers: list[dict[str, Any]]
    samples: Any  # a batch of inputs to measure a layer's output error on
    samples_label: str  # what the samples are
    dataset: Any = None  # TensorDataset to evaluate accuracy on, when the model has one
    baseline_accuracy: float | None = None

    def conv(self, layer: str):
        return self.model.get_submodule(layer)

    def kernel(self, layer: str):
        return self.conv(layer).weight.detach()

    def spec(self, layer: str) -> LayerSpec:
        row = next(r for r in self.layers if r["name"] == layer)
        return LayerSpec(row["in_channels"], row["out_channels"], row["kernel_size"], row["height"], row["width"],
                         stride=row["stride"], padding=row["padding"])


def load_for_fit(source: str, name: str = "digits-vgg", checkpoint: bytes | None = None,
                 samples: int = 256, seed: int = 0) -> FitTarget:
    """Load a trained model from ``source`` (see :data:`FIT_SOURCES`) for the EHP-fit page.

    digits-vgg comes with its held-out digits (sample inputs and accuracy); other models get ``samples``
    seeded random-normal images (at most 8) as sample inputs.
    """
    import hashlib

    import torch

    if source not in FIT_SOURCES:
        raise FalconError(f"unknown model source {source!r}; choose one of {', '.join(FIT_SOURCES)}")
    dataset = baseline = None
    if source == "digits-vgg":
        from falcon.datasets import load_digits
        from falcon.models.digits import digits_vgg, evaluate_accuracy

        model, name = digits_vgg(pretrained=True), "digits-vgg"
        dataset = load_digits("test")
        baseline = evaluate_accuracy(model, dataset)
        input_size = (1, 32, 32)
        x, label = dataset.tensors[0], f"the {len(dataset)} held-out digits"  # accuracy needs them all
        key = "digits-vgg"
    else:
        from falcon import sources

        model, input_size = sources.load_for_app(source, name, checkpoint)
        gen = torch.Generator().manual_seed(seed)
        n = min(samples, 8)
        x, label = torch.randn((n, *input_size), generator=gen), f"{n} random N(0,1) images"
        key = f"{source}:{name}:" + (hashlib.sha1(checkpoint).hexdigest()[:12] if checkpoint else "pretrained")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FitTarget(key, name, model, input_size, fittable_layers(model, input_size), x, label, dataset, baseline)


def kernel_info(kernel, conv_type: str) -> dict[str, Any]:
    """The default fit's error at every uniform rank (where the type's fitter knows it cheaply, else empty); for a
    type fitted per channel (falcon, dsconv) also the singular-value energy per channel
    (:func:`falcon.ehp.singular_energy`) and the rank that keeps 90% of every channel's energy (else None)."""
    import numpy as np

    from falcon.fits import fitter_of

    fitter = fitter_of(conv_type)
    out = {"error_by_rank": fitter.error_by_rank(kernel) or [], "energy": None, "median_energy": [], "rank_90": None}
    channel_energy = getattr(fitter, "channel_energy", None)
    if channel_energy is not None:
        energy = channel_energy(kernel).numpy()
        out.update(energy=energy, median_energy=[float(v) for v in np.median(energy, axis=0)],
                   rank_90=fitter.energy_ranks(kernel, 0.9)["rank"])
    return out


def fit_effect(loaded: FitTarget, layer: str, conv_type: str, fit, probe: LayerProbe | None = None) -> dict[str, Any]:
    """What a fit does to the layer: its output error on the sample inputs, the layer's params, and (with a
    held-out set, which the samples then are) the model's accuracy with only this layer replaced.
    ``probe``: a :class:`LayerProbe` of this layer on ``loaded.samples`` (made here when not given)."""
    import torch

    spec = loaded.spec(layer)
    conv = loaded.conv(layer)
    block = block_from_fit(conv, conv_type, fit, spec)
    probe = probe or LayerProbe(loaded.model, layer, loaded.samples)
    out = {"spec": spec, "samples": loaded.samples_label, "output_error": output_error(conv, block, probe.input),
           "params": sum(p.numel() for p in block.parameters()),
           "standard_params": sum(p.numel() for p in conv.parameters())}
    if loaded.dataset is not None:
        labels = loaded.dataset.tensors[1][: len(probe.input)]
        out["accuracy"] = float((probe.logits(block).argmax(1) == labels).to(torch.float64).mean())
        out["baseline_accuracy"] = loaded.baseline_accuracy
    return out

"""Converting a trained model: its convs become blocks of a fittable conv type (falcon, dsconv, tucker2, cp,
spatial) initialized from the fit of each kernel (:mod:`falcon.fits`; the registry says how each type is fitted).

* Which convs: the model's replacement policy (:func:`falcon.surgery.plan`, see :mod:`falcon.models`).
* Each replaced conv becomes the *bare* block (the sub-convolutions and nothing else), loaded with
  the type's default fit (``svd``), one of its own methods, or left ``random``; the conv's bias moves into the
  block (:func:`falcon.fits.fit_module`). A rank above a layer's full rank is clamped for that layer.
* Everything else stays: the pretrained BN and ReLU after each conv in particular, so the converted
  network computes what the original did up to the fit error, before any fine-tuning. At full rank
  it computes the same function (to float rounding).
* The converted model saves as plain data (``weights_only``-safe): the model's name, the conv type,
  the rank and replaced layers (each with its own type and ranks), and the ``state_dict``. :func:`load_converted`
  rebuilds it.
* :func:`convert_plan` converts by a per-layer plan (:mod:`falcon.planning`): each layer its own type and ranks
  (``conv`` is then :data:`PLAN`); it saves and loads the same way.
"""
from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from falcon.convtypes import FITTABLE, get_conv_type
from falcon.counting import count_model
from falcon.fits import attach_bias, fit_module, fitter_of
from falcon.checkpoints import (check_forward_reads, check_weights, finish, load_state_into, read_checkpoint,
                                state_dict_of)
from falcon.errors import FalconError, one_line
from falcon.limits import parse_int
from falcon.models import ModelEntry, _chw, get_model_entry, module_entry, registry_entry, same_model
from falcon.spec import LayerSpec
from falcon.surgery import conv_sites, plan, set_module

FORMAT = "falcon-explorer/converted-v1"
#: Every fit a conversion can start from: ``svd`` (each type's default fit), then the fitters' own methods.
INITS = tuple(dict.fromkeys(["svd", *(m for c in FITTABLE for m in fitter_of(c).methods)]))
CONVENTION = "clean"  # counts of what the converted model really holds
#: the ``conv`` of a model converted by a per-layer plan (each replaced layer names its own type)
PLAN = "plan"


@dataclass
class ConvertedLayer:
    name: str
    spec: LayerSpec
    rank: int  # the rank used (the requested one, clamped to the layer's full rank; the largest of several)
    full_rank: int
    clamped: bool
    bias: bool
    relative_error: float
    hparams: dict = field(default_factory=dict)  # the block's ranked hyper-parameters (Tucker-2: R₃ and R₄)
    conv: str = ""  # the block's conv type

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.name, "conv": self.conv, "shape": self.spec.describe(), "rank": self.rank,
                "full_rank": self.full_rank, "clamped": self.clamped, "bias": self.bias,
                "relative_error": self.relative_error, "hparams": dict(self.hparams)}


@dataclass
class Converted:
    """A converted model and how it was made."""

    model: nn.Module
    entry: ModelEntry
    num_classes: int | None  # None: the model's own (a module or factory of the user's)
    conv: str
    rank: int | None  # None when each layer's rank came from ``energy``
    init: str
    layers: list[ConvertedLayer]
    source: str = ""  # where the original weights came from
    seconds: float = 0.0
    gd: dict[str, Any] = field(default_factory=dict)
    chw: tuple[int, int, int] | None = None  # the input (C, H, W) the sites were found at
    energy: float | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.chw or (self.entry.in_channels, self.entry.input_size, self.entry.input_size)

    @property
    def max_full_rank(self) -> int:
        return max((layer.full_rank for layer in self.layers), default=1)

    def as_dict(self) -> list[dict[str, Any]]:
        """The per-layer fit report: name, shape, rank used, full rank, clamped, bias, relative error."""
        return [layer.as_dict() for layer in self.layers]

    def metadata(self) -> dict[str, Any]:
        """Plain data (str, int, float, bool, lists, dicts) that, with the state_dict, rebuilds the model."""
        meta = {
            "format": FORMAT,
            "model": self.entry.name,
            "num_classes": self.num_classes,
            "conv": self.conv,
            "rank": self.rank,
            "energy": self.energy,
            "init": self.init,
            "source": self.source,
            "input_size": [int(v) for v in self.input_size],
            "sites": [{"name": layer.name, "conv": layer.conv or self.conv, "rank": int(layer.rank), "bias": bool(layer.bias),
                       "hparams": {k: int(v) for k, v in layer.hparams.items()},
                       "spec": layer.spec.as_dict(), "relative_error": float(layer.relative_error)}
                      for layer in self.layers],
        }
        return {k: v for k, v in meta.items() if v is not None}  # None: the model's own classes, no energy rule


def _check(conv: str, init: str) -> None:
    ct = get_conv_type(conv)  # unknown names get the registry's message
    if not ct.fittable:
        raise FalconError(f"{conv} cannot be fitted to pretrained weights; convert to {', '.join(FITTABLE)}")
    methods = ("svd", *fitter_of(conv).methods)
    if init not in methods:
        raise FalconError(f"init must be one of {', '.join(dict.fromkeys(methods))} for {conv}, got {init!r}")


def _target(model, input_size, entry) -> tuple[nn.Module, ModelEntry, tuple[int, int, int], str, int | None]:
    """(module, entry, (C, H, W), weights source, classes) of a LoadedModel or of a plain module."""
    from falcon.checkpoints import LoadedModel

    if isinstance(model, LoadedModel):
        if model.converted is not None:
            raise FalconError("this model is already converted; convert the original model")
        chw = _chw(input_size) if input_size is not None else model.input_size
        return model.model, model.entry, chw, model.weights, model.num_classes
    if not isinstance(model, nn.Module):
        raise FalconError(f"convert_model takes a torch.nn.Module (or a loaded model), got a {type(model).__name__}")
    if entry is None:
        entry = module_entry(model, input_size if input_size is not None else (3, 224, 224))
    chw = _chw(input_size) if input_size is not None else (entry.in_channels, entry.input_size, entry.input_size)
    classes = None if entry.family == "module" else entry.default_classes
    return model, entry, chw, "", classes


def _checked_rank(rank: int | dict | None, energy: float | None) -> int | dict | None:
    """``rank`` (None when ``energy`` rules), or a one-line error for a rank or energy that is not one."""
    if energy is not None:
        if rank not in (None, 1):
            raise FalconError("give a rank or an energy, not both")
        if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < float(energy) <= 1.0:
            raise FalconError(f"energy must be a fraction in (0, 1], such as 0.9; got {energy!r}")
        return None
    values = rank.values() if isinstance(rank, dict) else [] if rank is None else [rank]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise FalconError(f"rank must be a positive integer, got {rank!r}")
    return rank


def _site_ranks(conv: str, spec: LayerSpec, kernel: torch.Tensor, rank: int | dict | None,
                energy: float | None) -> dict[str, int]:
    """One layer's ranked hyper-parameters: ``rank`` for each (or a dict of them), the smallest that keep
    ``energy``, or (both None) the type's own rule (Tucker-2: EVBMF); checked against the layer, clamped."""
    ct, fitter = get_conv_type(conv), fitter_of(conv)
    if energy is not None:
        if not hasattr(fitter, "energy_ranks"):
            raise FalconError(f"ranks by energy are for {', '.join(c for c in FITTABLE if hasattr(fitter_of(c), 'energy_ranks'))}; "
                              f"give {conv} a rank")
        wanted = fitter.energy_ranks(kernel, float(energy))
    else:
        wanted = fitter.auto_ranks(kernel) if rank is None else ct.rank_hparams(rank)
    if set(wanted) != set(ct.rank_names):
        raise FalconError(f"{conv} takes the ranks {', '.join(ct.rank_names)}; got {', '.join(wanted)}")
    full = ct.full_ranks(spec.N, spec.M, spec.D)
    ct.resolve(spec, **{n: min(v, full[n]) for n, v in wanted.items()})
    return wanted


def _check_options(init: str, seed: int, gd: dict) -> None:
    """convert_model's ``seed`` (limits' bound) and ``**gd``: gradient-descent settings (falcon.ehp.GD_OPTIONS),
    for init gd only."""
    from falcon.ehp import GD_OPTIONS
    from falcon.limits import check_kwargs, parse_int

    parse_int(seed, "seed")
    check_kwargs("convert_model", gd, GD_OPTIONS)
    if gd and init != "gd":
        raise FalconError(f"{', '.join(gd)}: gradient-descent settings, for init 'gd' only (init is {init!r})")


def convert_model(model, conv: str = "falcon", rank: int | dict | None = 1, init: str = "svd", *,
                  input_size: tuple[int, int, int] | None = None, entry: ModelEntry | None = None,
                  include: Sequence[str] | str | None = None, exclude: Sequence[str] | str | None = None,
                  include_stem: bool | None = None, energy: float | None = None, seed: int = 0,
                  inplace: bool = False, **gd: Any) -> Converted:
    """Replace the convs of ``model`` (any ``nn.Module``, or a :class:`~falcon.checkpoints.LoadedModel`) by
    rank-``rank`` ``conv`` blocks fitted to each trained kernel. ``rank``: one rank for every ranked
    hyper-parameter, a dict of them (``{"rank_in": 8, "rank_out": 16}``), or None for the type's own rule
    (Tucker-2: EVBMF per layer).

    ``input_size``: the (C, H, W) of one input (default: the entry's, or 3×224×224 for a plain module); the
    forward pass at that size finds the convs and the sizes they see. ``entry``: what the model is (its
    replacement policy; :func:`falcon.models.get_model_entry`), optional for a plain module. Which convs: the
    policy, then ``include``/``exclude`` name patterns (:func:`falcon.surgery.plan`).
    ``energy``: instead of one rank, each layer gets the smallest rank that keeps at least this fraction of
    every channel's singular-value energy (Network Decoupling's rule; ``rank`` must then be None).
    ``init``: ``svd`` (each type's default fit: the closed-form optimum of falcon, dsconv and spatial, HOSVD +
    HOOI for tucker2, ALS for cp), one of the type's own methods (``gd``: gradient descent, whose ``gd`` keyword
    arguments such as ``steps``, ``lr``, ``optimizer`` go to :func:`falcon.ehp.run_gd`; ``hosvd``, ``hooi``, ``als``)
    or ``random`` (PyTorch's default init); seeded, layer i with ``seed + i``. The original model is left
    untouched unless ``inplace``.
    """
    _check(conv, init)
    _check_options(init, seed, gd)
    rank = _checked_rank(rank, energy)
    module, entry, chw, source, classes = _target(model, input_size, entry)
    check_weights(module, entry.name)  # float32, initialized, finite: named otherwise (falcon.checkpoints)
    t0 = time.perf_counter()
    module = module if inplace else copy.deepcopy(module)
    module.eval()
    sites = plan(entry, conv_sites(module, chw, entry.name), conv, include_stem, include, exclude)
    if not sites:
        raise FalconError(f"{entry.name} has no conv that {conv} replaces"
                          + (" among those the patterns select" if include or exclude else ""))
    check_forward_reads(module, chw, sites, conv)  # a forward that reads conv.weight: that layer named
    ranks = {site.name: _site_ranks(conv, site.spec, module.get_submodule(site.name).weight.detach(), rank, energy)
             for site in sites}
    layers = []
    for i, site in enumerate(sites):
        kwargs = {**(gd if init == "gd" else {}), "seed": seed + i}  # layer i: seed + i
        conv_module = module.get_submodule(site.name)
        block, fit = fit_module(conv_module, conv, ranks[site.name], init, spec=site.spec, **kwargs)
        set_module(module, site.name, block.eval())
        layers.append(ConvertedLayer(site.name, site.spec, fit.rank_used, fit.full_rank, fit.clamped,
                                     conv_module.bias is not None, float(fit.relative_error), dict(fit.hparams), conv))
    return Converted(module.eval(), entry, classes, conv, rank, init, layers, source, time.perf_counter() - t0,
                     dict(gd), chw, None if energy is None else float(energy))


def convert_plan(model, plan: dict, *, input_size: tuple[int, int, int] | None = None,
                 entry: ModelEntry | None = None, seed: int = 0, inplace: bool = False) -> Converted:
    """Convert ``model`` (a module or a loaded model) as a per-layer ``plan`` says (:mod:`falcon.planning`): each
    layer it replaces becomes a block of its own type and ranks, loaded with the type's default fit of the trained
    kernel (``seed`` for every layer, as the planner predicted it); the layers it keeps stay. The plan is data: its
    entries are checked (:func:`falcon.planning.plan_layers`; each names a conv of this model) before anything is
    fitted. ``input_size``: default the loaded model's or the entry's, for a bare module the plan's."""
    from falcon.planfile import plan_input_size, plan_layers

    choices = plan_layers(plan)
    if input_size is None and entry is None and isinstance(model, nn.Module):
        input_size = plan_input_size(plan)
    module, entry, chw, source, classes = _target(model, input_size, entry)
    if entry.family != "module" and plan.get("model") != entry.name:
        raise FalconError(f"the plan was made for {plan.get('model')!r}, not {entry.name}")
    check_weights(module, entry.name)
    t0 = time.perf_counter()
    module = (module if inplace else copy.deepcopy(module)).eval()
    sites = {s.name: s for s in conv_sites(module, chw, entry.name)}
    planned = [(_plan_site(module, sites, name), conv, hp) for name, conv, hp in choices]  # all checked first
    layers = []
    for site, conv, hp in planned:
        conv_module = module.get_submodule(site.name)
        block, fit = fit_module(conv_module, conv, hp, spec=site.spec, seed=seed)
        set_module(module, site.name, block.eval())
        layers.append(ConvertedLayer(site.name, site.spec, fit.rank_used, fit.full_rank, fit.clamped,
                                     conv_module.bias is not None, float(fit.relative_error), dict(fit.hparams), conv))
    return Converted(module.eval(), entry, classes, PLAN, None, "svd", layers, source, time.perf_counter() - t0,
                     chw=chw)


def _plan_site(module: nn.Module, sites: dict, name: str):
    """The conv site a plan names, or a one-line error saying what the name is instead."""
    if name in sites:
        return sites[name]
    try:
        target = module.get_submodule(name)
    except AttributeError:
        raise FalconError(f"the plan names {name!r}, which is not a layer of this model") from None
    if not isinstance(target, nn.Conv2d):
        raise FalconError(f"the plan names {name!r}, a {type(target).__name__}, not a conv")
    raise FalconError(f"the plan names {name!r}, a conv the model's forward pass does not use")


# ----------------------------------------------------------------------------------------------
# rebuilding, saving, loading
def skeleton(entry: ModelEntry, num_classes: int, conv: str, sites: Iterable[dict], device: str | torch.device = "cpu") -> nn.Module:
    """The converted model's modules (weights uninitialized on ``meta``, random elsewhere); each site's block of
    its own ``conv`` if it names one (a plan's), else of ``conv``."""
    with torch.device(device):
        model = entry.build(num_classes)
        for site in sites:
            ct = get_conv_type(site.get("conv") or conv)
            spec = LayerSpec(**site["spec"])
            block = ct.build(spec, **(site.get("hparams") or ct.rank_hparams(int(site["rank"]))))
            if site.get("bias"):
                attach_bias(block, torch.zeros(spec.N))
            set_module(model, site["name"], block)
    return model.eval()


#: the most replaced layers a converted file may list (the largest torchvision models have a few hundred convs)
MAX_SITES = 10_000


def is_converted(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def save_converted(converted: Converted, path: str | os.PathLike) -> Path:
    """Save as ``{**metadata, "state_dict": ...}``: tensors and plain data only (loads with ``weights_only=True``)."""
    if not converted.entry.rebuildable:
        raise FalconError(f"a converted {converted.entry.name} given as a module cannot be rebuilt from a file by name; "
                          "save converted.model.state_dict() and rebuild it in your own code (or pass a "
                          "package.module:factory or file.py:factory model, which saves)")
    path = Path(path)
    if path.is_dir():
        raise FalconError(f"{path} is a directory; give a file name such as {path / 'converted.pt'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in converted.model.state_dict().items()}
    torch.save({**converted.metadata(), "state_dict": state}, path)
    return path


def converted_entry(obj: dict, label: str, model: str | ModelEntry | None = None) -> ModelEntry:
    """The architecture a converted file was made from. The file only *names* it: a registry model (paper, zoo,
    timm) is built by name; a model made by code (``file.py:factory``) needs ``model``, the same spec given by
    the user. A file never makes this project import or call anything."""
    stored = obj.get("model")
    if model is None:
        return registry_entry(stored, label)
    entry = model if isinstance(model, ModelEntry) else get_model_entry(model)  # the user's own name
    if not isinstance(stored, str) or not same_model(entry, stored):
        what = stored if isinstance(stored, str) else repr(stored)
        raise FalconError(f"{label} holds a converted {what}, not {entry.name}: give the --model it was made from "
                          "(model=... in Python)")
    return entry


def _check_skeleton_size(entry: ModelEntry, classes: int | None, conv: str, sites: list, label: str) -> None:
    """Refuse a file whose sites would build a model much larger than the one it was converted from (a small file
    must not make the loader allocate gigabytes): counted on the meta device, nothing is allocated."""
    if len(sites) > MAX_SITES:
        raise FalconError(f"{label} lists {len(sites):,} replaced layers; a model here has at most {MAX_SITES:,}")
    with torch.device("meta"):
        own = sum(p.numel() for p in entry.build(classes).parameters())
    built = sum(p.numel() for p in skeleton(entry, classes, conv, sites, device="meta").parameters())
    if built > 2 * own + (1 << 20):
        raise FalconError(f"{label} would build {built:,} parameters from a {entry.name} of {own:,}: its layer "
                          "list does not describe a conversion of that model")


def rebuild_converted(obj: dict, label: str = "the converted model", model: str | ModelEntry | None = None):
    """A :class:`falcon.sources.LoadedModel` from the contents of a saved converted model. ``model``: the model
    spec or entry the user named (needed when the file was made from code of the user's; see
    :func:`converted_entry`)."""
    entry = converted_entry(obj, label, model)
    try:
        conv, sites = obj["conv"], list(obj["sites"])
        classes = None if obj.get("num_classes") is None else parse_int(obj["num_classes"], "num_classes",
                                                                        f"{label}: num_classes")
        for c in dict.fromkeys([*([] if conv == PLAN else [conv]), *(s.get("conv") or conv for s in sites)]):
            _check(c, obj.get("init", "svd"))
        _check_skeleton_size(entry, classes, conv, sites, label)
        model_module = skeleton(entry, classes, conv, sites)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, FalconError):
            raise
        raise FalconError(f"{label} is not a valid converted model ({type(e).__name__}: {one_line(e, 120)})") from None
    load_state_into(model_module, state_dict_of(obj.get("state_dict"), label), label, f"converted {entry.name}")
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return finish(model_module, entry, f"{entry.name} converted {_how(meta)} ({label})", label, meta)


def _how(meta: dict) -> str:
    """``to rank-2 falcon``, or for a plan ``by a plan (falcon ×5, tucker2 ×2)``."""
    if meta["conv"] != PLAN:
        return f"to rank-{meta.get('rank')} {meta['conv']}"
    kinds = [s["conv"] for s in meta["sites"]]
    return "by a plan (" + ", ".join(f"{c} ×{kinds.count(c)}" for c in dict.fromkeys(kinds)) + ")"


def load_converted(path: str | os.PathLike, model: str | ModelEntry | None = None):
    """Load a model saved by :func:`save_converted` (``weights_only=True``); a LoadedModel with ``.converted`` set.
    A file made from a model of your own code needs ``model``, the same spec (the file never names code to run)."""
    obj = read_checkpoint(path)
    if not is_converted(obj):
        raise FalconError(f"{path} is not a converted model saved by `python -m falcon convert --output`")
    return rebuild_converted(obj, str(path), model)


# ----------------------------------------------------------------------------------------------
# reports
@torch.no_grad()
def accuracy(model: nn.Module, dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy on a (images, labels) TensorDataset, in eval mode."""
    from falcon.models.digits import evaluate_accuracy

    return evaluate_accuracy(model, dataset, batch_size)


def _counts(entry: ModelEntry, num_classes: int, input_size, conv: str | None = None,
            sites: list[dict] | None = None) -> tuple[int, int]:
    if conv is None:
        with torch.device("meta"):
            model = entry.build(num_classes)
    else:
        model = skeleton(entry, num_classes, conv, sites or [], device="meta")
    count = count_model(model, input_size, CONVENTION)
    return count.params, count.macs


def report(converted: Converted, evaluate: bool = False, baseline: float | None = None, eval_data=None) -> dict[str, Any]:
    """Params and MACs (convention ``clean``, one image) of the converted model and the original; with
    ``evaluate``, the held-out accuracy of both (``baseline`` skips re-measuring the original)."""
    meta = converted.metadata()
    params, macs = _counts(converted.entry, converted.num_classes, converted.input_size, converted.conv, meta["sites"])
    std_params, std_macs = _counts(converted.entry, converted.num_classes, converted.input_size)
    errors = [layer.relative_error for layer in converted.layers]
    out: dict[str, Any] = {
        "model": converted.entry.name,
        "energy": converted.energy,
        "weights": converted.source,
        "conv": converted.conv,
        "rank": converted.rank,
        "init": converted.init,
        "convention": CONVENTION,
        "input_size": list(converted.input_size),
        "params": params,
        "macs": macs,
        "standard_params": std_params,
        "standard_macs": std_macs,
        "compression_rate": std_params / params,
        "computation_reduction_rate": std_macs / macs,
        "replaced_layers": len(converted.layers),
        "full_rank": converted.max_full_rank,
        "mean_relative_error": sum(errors) / len(errors) if errors else 0.0,
        "max_relative_error": max(errors, default=0.0),
        "seconds": converted.seconds,
        "layers": [layer.as_dict() for layer in converted.layers],
    }
    if converted.init == "gd":
        out["gd"] = converted.gd
    if evaluate:
        if eval_data is None:
            raise FalconError(f"{converted.entry.name} has no held-out set to evaluate on (digits-vgg has one)")
        out["accuracy"] = accuracy(converted.model, eval_data)
        out["baseline_accuracy"] = baseline
        out["eval_images"] = len(eval_data)
    return out


def parse_ranks(text: str, top: int) -> list[int]:
    """``"3"``, ``"1,2,4"``, ``"1-9"`` or ``"all"`` (1 … ``top``) → sorted ranks."""
    from falcon.limits import parse_int

    text = re.sub(r"\s*([,-])\s*", r"\1", str(text).strip().lower())  # "1, 2" as "1,2"
    if text in ("all", "full"):
        return list(range(1, top + 1)) if text == "all" else [top]
    if not re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", text):
        raise FalconError(f"rank must be an integer, a list (1,2,4), a range (1-9), 'all' or 'full'; got {text!r}")
    ranks: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ranks.update(range(parse_int(lo, "rank"), parse_int(hi or lo, "rank") + 1))
    if not ranks:
        raise FalconError(f"the rank range {text!r} is empty: give the lower rank first (1-9)")
    return sorted(ranks)


def model_full_rank(loaded, conv: str, include_stem: bool | None = None, include=None, exclude=None) -> int:
    """The largest full rank among the convs ``conv`` replaces (rank ``all`` goes up to it)."""
    _check(conv, "svd")
    ct = get_conv_type(conv)
    sites = plan(loaded.entry, conv_sites(loaded.model, loaded.input_size, loaded.name), conv, include_stem,
                 include, exclude)
    if not sites:
        raise FalconError(f"{loaded.entry.name} has no conv that {conv} replaces")
    return max(ct.full_rank(s.spec.N, s.spec.M, s.spec.D) for s in sites)


def convert_ranks(loaded, conv: str, ranks: Iterable[int], init: str = "svd", evaluate: bool = False,
                  seed: int = 0, **options: Any) -> dict[str, Any]:
    """Convert at every rank of ``ranks``: params, MACs, fit error and (with ``evaluate``) training-free accuracy.
    ``options``: :func:`convert_model`'s (``include_stem``, ``include``, ``exclude``, gd settings)."""
    baseline = accuracy(loaded.model, loaded.eval_data) if evaluate and loaded.eval_data is not None else None
    rows = []
    head: dict[str, Any] = {}
    for rank in ranks:
        converted = convert_model(loaded, conv, rank, init, seed=seed, **options)
        r = report(converted, evaluate, baseline, loaded.eval_data)
        head = head or {k: r[k] for k in ("model", "weights", "conv", "init", "convention", "input_size",
                                          "standard_params", "standard_macs", "full_rank")}
        row = {k: r[k] for k in ("rank", "params", "macs", "compression_rate", "computation_reduction_rate",
                                 "mean_relative_error", "max_relative_error")}
        if evaluate:
            row["accuracy"] = r["accuracy"]
        rows.append(row)
    out = {**head, "rows": rows}
    if evaluate:
        out["baseline_accuracy"] = baseline
    return out

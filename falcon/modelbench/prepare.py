"""The models a whole-model measurement times: the original and each conversion, in their training form
(eval mode, CPU); :func:`prepare_models` builds them, :func:`prepared_from_modules` takes them built elsewhere."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from falcon.convtypes import get_conv_type, label_of
from falcon.errors import FalconError
from falcon.limits import parse_int


@dataclass
class PreparedModel:
    """One model to time: the original or a conversion, in its training form (eval mode, CPU)."""

    role: str  # "original" or "converted"
    label: str  # "original", "FALCON (k=1)", ...
    conv: str  # "standard" for the original
    hparams: dict
    module: nn.Module
    replaced: list[str]  # names of the replaced convs (the same names in the original)
    init: str  # "weights" (the original's), "svd", "random"
    macs: int = 0  # one image, convention "clean"
    unit_macs: dict[str, int] = field(default_factory=dict)
    fit_error: float | None = None  # mean relative error of the SVD fits

    def info(self) -> dict:
        return {"role": self.role, "label": self.label, "conv": self.conv, "hparams": dict(self.hparams),
                "replaced_layers": len(self.replaced), "init": self.init, "macs": self.macs,
                "fit_error": self.fit_error}


@dataclass
class PreparedModels:
    name: str
    input_size: tuple[int, int, int]
    weights: str
    original: PreparedModel
    converted: list[PreparedModel]
    eval_data: Any = None
    notes: list[str] = field(default_factory=list)


def parse_conversions(conv: str | Sequence = "falcon", rank: int | None = 1, **hp: Any) -> list[tuple[str, dict]]:
    """``conv`` (a name, or a list of names / (name, hparams) pairs) as (name, resolved hparams) pairs.
    ``rank`` and ``hp`` apply to the names given without hparams, where the type takes them; ``standard``
    (the original, always measured) is dropped, a ``-fused`` suffix too (the converted model is always timed
    in its inference form)."""
    items = [conv] if isinstance(conv, (str, tuple)) else list(conv)
    out: list[tuple[str, dict]] = []
    takes: set[str] = set()  # what the types named take: a hyper-parameter none of them takes is a typo
    for item in items:
        name, given = (item, None) if isinstance(item, str) else (item[0], dict(item[1] or {}))
        name = str(name).strip()
        name = name.removesuffix("-fused")
        if name == "standard":
            continue
        ct = get_conv_type(name)
        names = {h.name for h in ct.hparams}
        takes |= names
        if given is None:
            given = {k: v for k, v in {"rank": rank, **hp}.items() if k in names and v is not None}
        unknown = set(given) - names
        if unknown:
            raise FalconError(f"{name} has no hyper-parameter {', '.join(sorted(unknown))}; "
                              f"it takes {', '.join(sorted(names)) or 'none'}")
        resolved = ct.resolve(**given)
        if ct.widens(**resolved):
            raise FalconError(f"{ct.display_name(**resolved)} changes the model's layer widths; it can be sized, "
                              "not measured against the original (use width multiplier 1)")
        if (name, resolved) not in out:
            out.append((name, resolved))
    unused = sorted(k for k, v in hp.items() if v is not None and k not in takes)
    if unused:
        raise FalconError(f"no conv type given has a hyper-parameter {', '.join(map(repr, unused))}; they take "
                          f"{', '.join(sorted(takes)) or 'none'}")
    return out


def _chw(entry, input_size) -> tuple[int, int, int]:
    if input_size is None:
        return (entry.in_channels, entry.input_size, entry.input_size)
    if not isinstance(input_size, (tuple, list, torch.Size)):  # H = W: an int (parse_int refuses the rest)
        size = parse_int(input_size, "input_size", "input size")
        return (entry.in_channels, size, size)
    try:
        c, h, w = input_size
    except (TypeError, ValueError):
        raise FalconError(f"input size is H or (C, H, W), got {input_size!r}") from None
    return (parse_int(c, "channels", "input channels"), parse_int(h, "input_size", "input height"),
            parse_int(w, "input_size", "input width"))


def _entry_of(model, input_size=None):
    from falcon.checkpoints import LoadedModel
    from falcon.models import ModelEntry, get_model_entry, module_entry

    if isinstance(model, ModelEntry):
        return model
    if isinstance(model, LoadedModel):
        return model.entry
    if isinstance(model, nn.Module):
        return module_entry(model, _chw_plain(input_size))
    return get_model_entry(model)


def _chw_plain(input_size) -> tuple[int, int, int]:
    if input_size is None:
        return (3, 224, 224)
    if isinstance(input_size, int):
        return (3, input_size, input_size)
    return tuple(int(v) for v in input_size)  # type: ignore[return-value]


def _count(module: nn.Module, chw, name: str = "the model") -> tuple[int, dict[str, int]]:
    from falcon.counting import count_model
    from falcon.surgery import FORWARD_ERRORS, does_not_run

    try:
        count = count_model(module, chw, "clean")
    except FORWARD_ERRORS as e:  # an input size the model does not take (too small for its pooling, say)
        raise does_not_run(chw, e, name) from None
    return int(count.macs), {u.name: int(u.macs) for u in count.units}


def prepare_models(model: Any = "vgg19-cifar", weights: str | None = None, conv: str | Sequence = "falcon",
                   rank: int | None = 1, input_size: Any = None, num_classes: int | None = None, seed: int = 0,
                   progress: Callable[[str], None] | None = None, **hp: Any) -> PreparedModels:
    """The original model and each conversion of ``conv`` (see :func:`parse_conversions`), on the CPU, eval mode.

    ``model``: a name or spec (:func:`falcon.models.get_model_entry`), a loaded model
    (:func:`falcon.sources.load_model`) or an ``nn.Module`` (give ``input_size``).
    """
    conversions = parse_conversions(conv, rank, **hp)
    say = progress or (lambda message: None)
    src = _source(model, weights, input_size, num_classes, say)
    notes: list[str] = []
    if src.weights == "random":
        notes.append(f"{src.entry.name} has random weights (timing only; pass --weights for trained ones)")
    macs, units = _count(src.module, src.chw, src.entry.name)
    original = PreparedModel("original", "original", "standard", {}, src.module, [], "weights", macs, units)
    converted = []
    for name, resolved in conversions:
        say(f"converting to {label_of(name, resolved)}")
        converted.append(_convert(src, name, resolved, input_size, seed, notes))
    return PreparedModels(src.entry.name, tuple(src.chw), src.weights, original, converted, src.eval_data, notes)


@dataclass
class _Source:
    """The original, as :func:`prepare_models` was given it."""

    loaded: Any  # a falcon.checkpoints.LoadedModel, or None for a bare module
    entry: Any  # its falcon.models.ModelEntry
    module: nn.Module  # eval mode
    weights: str  # "module", "random", "pretrained", a checkpoint...
    chw: tuple[int, int, int]
    classes: int | None = None
    eval_data: Any = None


def _source(model: Any, weights: str | None, input_size: Any, num_classes: int | None,
            say: Callable[[str], None]) -> _Source:
    from falcon.checkpoints import LoadedModel

    if isinstance(model, nn.Module) and not isinstance(model, LoadedModel):
        return _Source(None, _entry_of(model, input_size), model.eval(), "module", _chw_plain(input_size))
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        from falcon.sources import load_model

        say(f"loading {getattr(model, 'name', model)}")
        loaded = load_model(model, weights, num_classes)
    if loaded.converted is not None:
        raise FalconError("this model is already converted; measure the original model")
    chw = _chw(loaded.entry, input_size) if input_size is not None else loaded.input_size
    return _Source(loaded, loaded.entry, loaded.model.eval(), loaded.weights, chw, loaded.num_classes,
                   loaded.eval_data)


def _convert(src: _Source, name: str, resolved: dict, input_size: Any, seed: int, notes: list[str]) -> PreparedModel:
    """One conversion of the original: fitted with SVD when the type is fittable, else built with random weights."""
    from falcon.conversion import convert_model
    from falcon.sizing import build_sized

    ct, label, fit_error = get_conv_type(name), label_of(name, resolved), None
    if ct.fittable:
        target = src.loaded if src.loaded is not None else src.module
        kwargs = {} if src.loaded is not None else {"input_size": src.chw, "entry": src.entry}
        if src.loaded is not None and input_size is not None:
            kwargs["input_size"] = src.chw
        done = convert_model(target, name, ct.rank_hparams(resolved), "svd", seed=seed, **kwargs)
        module, replaced, init = done.model, [layer.name for layer in done.layers], "svd"
        errors = [layer.relative_error for layer in done.layers]
        fit_error = sum(errors) / len(errors) if errors else None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = build_sized(src.module if src.entry.family == "module" else src.entry, src.classes, src.chw[1],
                                name, device="cpu", **resolved)
        module, replaced, init = built[0], list(built[3]), "random"
        if built[6]:
            notes.append(f"{label}: {len(built[6])} conv(s) kept standard ({next(iter(built[6].values()))})")
        if name in src.entry.drop_shortcuts_for:
            notes.append(f"{label}: residual shortcuts removed, as the thesis did for {src.entry.name}")
        notes.append(f"{label} is not fittable to trained kernels: built with random weights (timing only)")
    module = module.eval()
    macs, units = _count(module, src.chw)
    return PreparedModel("converted", label, name, dict(resolved), module, replaced, init, macs, units, fit_error)


def prepared_from_modules(name: str, original: nn.Module, converted: Sequence[tuple[str, dict, nn.Module, list[str]]],
                          input_size: Sequence[int], weights: str = "module", init: str = "weights") -> PreparedModels:
    """Models built elsewhere (a fine-tuned conversion, say) as :func:`measure_model`'s ``prepared``.

    ``converted``: ``(conv, hparams, module, replaced layer names)`` per conversion; ``input_size``: (C, H, W).
    The modules are put in eval mode on the CPU (as :func:`prepare_models` gives them)."""
    chw = tuple(int(v) for v in input_size)
    if len(chw) != 3:
        raise FalconError(f"input size is (C, H, W), got {input_size!r}")
    original = original.cpu().eval()
    macs, units = _count(original, chw)
    orig = PreparedModel("original", "original", "standard", {}, original, [], "weights", macs, units)
    out = []
    for conv, hparams, module, replaced in converted:
        module = module.cpu().eval()
        macs, units = _count(module, chw)
        out.append(PreparedModel("converted", label_of(conv, hparams), conv, dict(hparams), module, list(replaced),
                                 init, macs, units))
    return PreparedModels(name, chw, weights, orig, out)


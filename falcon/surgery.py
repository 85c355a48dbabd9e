"""Finding the convs a conv type replaces in a model, and replacing them."""
from __future__ import annotations

import contextlib
import fnmatch
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from falcon.convtypes import get_conv_type
from falcon.counting import shape_only
from falcon.errors import FalconError
from falcon.models import ModelEntry
from falcon.spec import LayerSpec


@dataclass(frozen=True)
class ConvSite:
    """A conv of a model with the input size it sees: everything needed to replace it."""

    name: str
    spec: LayerSpec
    bias: bool
    is_stem: bool
    replaceable: bool  # groups=1, square kernel > 1, dilation 1, symmetric stride/padding


def _replaceable(conv: nn.Conv2d) -> bool:
    """groups=1, square kernel > 1, dilation 1, symmetric stride/padding, and PyTorch's own forward: a subclass
    that pads or standardizes its weight in ``forward`` (timm's Conv2dSame, StdConv2d) computes something
    else than its attributes say, so it is kept."""
    if type(conv).forward is not nn.Conv2d.forward:
        return False
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return (conv.groups == 1 and k[0] == k[1] and k[0] > 1 and s[0] == s[1] and isinstance(p, tuple)
            and p[0] == p[1] and d == (1, 1) and conv.padding_mode == "zeros")


def conv_sites(model: nn.Module, input_size: tuple[int, int, int], name: str = "the model") -> list[ConvSite]:
    """Every Conv2d of ``model`` in forward order, with the spatial size of its input."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    with recording_conv_inputs(model) as seen:
        try:
            model.eval()
            with torch.inference_mode(), shape_only(model):
                model(torch.zeros((1, *input_size), device=device))
        except FORWARD_ERRORS as e:
            raise does_not_run(input_size, e, name) from None
        finally:
            model.train(was_training)
    return sites_from(model, seen)


#: What a model's own forward pass raises on an input it does not take: torchvision checks sizes with
#: ``torch._assert`` (AssertionError), others raise RuntimeError (shapes), ValueError or IndexError.
FORWARD_ERRORS = (RuntimeError, AssertionError, ValueError, IndexError, TypeError, NotImplementedError)


def does_not_run(input_size: tuple[int, int, int], error: Exception, name: str = "the model") -> FalconError:
    """The user error for a model whose forward pass fails on a (C, H, W) input, in one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text if len(text) <= 200 else text[:199] + "…"
    size = f"{input_size[1]}×{input_size[2]}"
    if "expected" in text.lower() and isinstance(error, AssertionError):
        return FalconError(f"{name} does not run at {size} (it checks its input size): {text}; "
                           "give the size it expects with --input-size")
    return FalconError(f"{name} does not run on a {size} input of {input_size[0]} channels ({type(error).__name__}: "
                       f"{text}); check the input size and channels")


@contextlib.contextmanager
def recording_conv_inputs(model: nn.Module) -> Iterator[dict[str, tuple[int, int]]]:
    """While it lasts, a forward pass of ``model`` records each Conv2d's input size (H, W), in forward
    order, into the dict it yields; :func:`sites_from` turns that into sites. Lets a pass that does
    something else (counting) find the sites too."""
    seen: dict[str, tuple[int, int]] = {}
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def record(module: nn.Module, inputs: tuple) -> None:
        seen.setdefault(names[module], tuple(inputs[0].shape[-2:]))

    handles = [m.register_forward_pre_hook(record) for m in names]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def sites_from(model: nn.Module, seen: dict[str, tuple[int, int]]) -> list[ConvSite]:
    modules = dict(model.named_modules())
    sites = []
    for i, name in enumerate(seen):
        conv = modules[name]
        h, w = seen[name]
        ok = _replaceable(conv)
        spec = LayerSpec(conv.in_channels, conv.out_channels, conv.kernel_size[0], h, w,
                         stride=conv.stride[0], padding=conv.padding[0]) if ok else None
        sites.append(ConvSite(name, spec, conv.bias is not None, i == 0, ok))
    return sites


def plan(entry: ModelEntry, sites: list[ConvSite], conv: str, include_stem: bool | None = None,
         include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> list[ConvSite]:
    """The sites ``conv`` replaces: the model's policy (see :mod:`falcon.models`), then the patterns.

    ``include``: shell-style patterns on layer names (``features.*``, ``layer[34].*``); when given, only the
    replaceable convs that match one are replaced, the stem too if a pattern names it. ``exclude``: patterns
    of convs to keep. A pattern that matches no conv of the model is an error (a typo would silently change
    nothing otherwise).
    """
    if conv == "standard":
        return []
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    for pattern in (*include, *exclude):
        if not any(fnmatch.fnmatchcase(s.name, pattern) for s in sites):
            shown = ", ".join(s.name for s in sites[:4]) + (", …" if len(sites) > 4 else "")
            raise FalconError(f"pattern {pattern!r} matches no conv of {entry.name} (its convs: {shown}; "
                              "`python -m falcon layers --model …` lists them)")
    stem = (conv in entry.stem_replaced_by) if include_stem is None else include_stem
    chosen = []
    for s in sites:
        if not s.replaceable:
            continue
        if include:
            if not any(fnmatch.fnmatchcase(s.name, p) for p in include):
                continue
        elif s.is_stem and not stem:
            continue
        if any(fnmatch.fnmatchcase(s.name, p) for p in exclude):
            continue
        chosen.append(s)
    return chosen


def _patterns(patterns: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = [patterns]
    out = tuple(p.strip() for part in patterns for p in str(part).split(",") if p.strip())
    if not out and patterns:
        raise FalconError(f"{what} patterns are empty")
    return out


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def replace_convs(model: nn.Module, sites: list[ConvSite], conv: str, hparams: dict[str, Any],
                  make: Callable[[ConvSite], nn.Module] | None = None) -> dict[str, nn.Module]:
    """Replace each site's conv by a block of ``conv`` (the paper layout unless ``make`` is given)."""
    ct = get_conv_type(conv)
    made = {}
    for site in sites:
        block = make(site) if make else ct.block(site.spec, bias=site.bias, **hparams)
        set_module(model, site.name, block)
        made[site.name] = block
    return made


def _plain_basic_block(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)))


def drop_shortcuts(model: nn.Module) -> None:
    """Remove residual shortcuts (thesis §4.2: ResNet34 with ShuffleUnit does not converge with them)."""
    from torchvision.models.resnet import BasicBlock as TVBasicBlock

    for module in model.modules():
        if hasattr(module, "use_shortcut"):
            module.use_shortcut = False
            module.shortcut = None
        elif isinstance(module, TVBasicBlock):
            module.downsample = None
            module.forward = types.MethodType(_plain_basic_block, module)


def widen_for_shuffle(model: nn.Module, sites: list[ConvSite], all_sites: list[ConvSite], width_mult: float,
                      mode: str) -> dict[str, tuple[int, int]]:
    """Plan a ShuffleUnit α× model: (input, output) channels of each unit, and widen the other convs.

    The thesis's ShuffleUnit code was never published; these are the assumptions that come closest
    to its counts (docs/method.md §4). α widens the feature maps of the model:

    * ``mode="inner"`` (VGG): between the replaced convs only; the stem keeps its output and the
      last unit gives back N, so the classifier keeps its size;
    * ``mode="network"`` (ResNet): everywhere after the image, the stem and the shortcuts included,
      as a network-wide width multiplier does.

    BN and linear layers are resized afterwards by :func:`adapt_widths` (shapes-only models).
    """
    widths = {}
    for i, site in enumerate(sites):
        last = i == len(sites) - 1
        n = site.spec.N if (mode == "inner" and last) else int(width_mult * site.spec.N)
        widths[site.name] = (int(width_mult * site.spec.M), n)
    if mode == "network":
        replaced = {s.name for s in sites}
        for site in all_sites:
            if site.name not in replaced:
                conv = model.get_submodule(site.name)
                conv.out_channels = int(width_mult * conv.out_channels)
                conv.weight = nn.Parameter(torch.empty(conv.out_channels, *conv.weight.shape[1:], device=conv.weight.device))
                if conv.bias is not None:
                    conv.bias = nn.Parameter(torch.empty(conv.out_channels, device=conv.weight.device))
    return widths


def adapt_widths(model: nn.Module, input_size: tuple[int, int, int]) -> None:
    """Resize convs' inputs, BN and linear layers to the channels that actually reach them.

    Used after widening a model; only meaningful on the ``meta`` device, where no trained weight
    can be lost.
    """
    def fix(module: nn.Module, inputs: tuple) -> None:
        c = inputs[0].shape[1] if not isinstance(module, nn.Linear) else inputs[0].shape[-1]
        device = inputs[0].device
        if isinstance(module, nn.Conv2d) and module.in_channels != c:
            if module.groups not in (1,) and module.groups == module.in_channels:  # depthwise: keep it so
                module.groups = module.out_channels = c
                module.weight = nn.Parameter(torch.empty(c, 1, *module.kernel_size, device=device))
            else:
                if c % module.groups:
                    raise FalconError(f"groups {module.groups} do not divide the {c} channels that reach a widened conv")
                module.weight = nn.Parameter(torch.empty(module.out_channels, c // module.groups,
                                                         *module.kernel_size, device=device))
            module.in_channels = c
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_features != c:
            module.num_features = c
            if module.affine:
                module.weight = nn.Parameter(torch.empty(c, device=device))
                module.bias = nn.Parameter(torch.empty(c, device=device))
            if module.track_running_stats:
                module.running_mean = torch.empty(c, device=device)
                module.running_var = torch.empty(c, device=device)
        elif isinstance(module, nn.Linear) and module.in_features != c:
            module.in_features = c
            module.weight = nn.Parameter(torch.empty(module.out_features, c, device=device))

    handles = [m.register_forward_pre_hook(fix) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.Linear))]
    try:
        with torch.inference_mode(), shape_only(model):
            model.eval()(torch.zeros((1, *input_size), device=next(model.parameters()).device))
    except RuntimeError as e:
        raise FalconError("a width multiplier α ≠ 1 needs the replaced convs to form a chain; this model's "
                          f"wiring does not allow it ({str(e).splitlines()[0]}); use α = 1") from None
    finally:
        for h in handles:
            h.remove()

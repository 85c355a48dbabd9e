"""FALCON Explorer: size, fit and try FALCON depthwise-separable compression of CNNs.

The library never imports streamlit. Start here:

* :func:`size` — parameters and MACs of a model (yours, or one by name) with a conv type in place of its convs
* :func:`convert` — a copy of a trained model with its convs replaced by blocks fitted to their kernels
* :mod:`falcon.convtypes` — the registry of conv types (closed-form costs, modules, hyper-parameters)
* :mod:`falcon.counting` — counting parameters and MACs on real modules, under a declared convention
* :mod:`falcon.models`, :mod:`falcon.sizing` — the paper's models, torchvision's zoo, timm, whole-model sizing
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from falcon.errors import FalconError
from falcon.spec import LayerSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from falcon.conversion import Converted
    from falcon.sizing import SizeResult

__version__ = "0.1.0"
__all__ = ["FalconError", "LayerSpec", "__version__", "convert", "size"]


def _check_extra(name: str, func, extra: dict, allowed: Sequence[str]) -> None:
    """A FalconError for a keyword argument ``func`` does not take (a typo such as ``rnak=4`` is no default):
    its named arguments and ``allowed`` (what its ``**kwargs`` take) are listed."""
    import inspect

    from falcon.limits import check_kwargs

    named = [p.name for p in list(inspect.signature(func).parameters.values())[1:] if p.kind is p.POSITIONAL_OR_KEYWORD]
    check_kwargs(f"falcon.{name}", extra, [*named, *allowed])


def size(model: "nn.Module | str", input_size: int | Sequence[int] | None = None, conv: str = "falcon",
         convention: str = "clean", include: Sequence[str] | str | None = None,
         exclude: Sequence[str] | str | None = None, include_stem: bool | None = None,
         num_classes: int | None = None, **hparams: Any) -> "SizeResult":
    """Parameters and MACs of ``model`` with ``conv`` in place of its replaceable convs, next to the original.

    ``model``: any ``nn.Module`` (counted on a shapes-only copy on PyTorch's ``meta`` device: nothing is
    allocated, its weights are not copied) or a name/spec (``"resnet18"``, ``"timm:convnext_tiny"``,
    ``"pkg.mod:factory"``). ``input_size``: (C, H, W) of one image (a module's default: 3×224×224).
    ``hparams``: the conv type's (``rank=2`` for falcon). ``include``/``exclude``: shell-style patterns on
    layer names that override the default policy (every groups=1 square k>1 conv except the first).
    ``convention``: ``clean`` (default: what the model holds and computes), ``paper`` (the thesis's rules),
    ``torchvision``, ``thop``. Returns a :class:`falcon.sizing.SizeResult`: ``.params``, ``.macs``,
    ``.compression_rate``, ``.computation_reduction_rate``, ``.frame()`` (the per-layer table), ``.csv()``.
    """
    from falcon.convtypes import get_conv_type
    from falcon.sizing import size_model

    _check_extra("size", size, hparams, [h.name for h in get_conv_type(conv).hparams])
    return size_model(model, conv, num_classes, input_size, convention, include_stem, include=include,
                      exclude=exclude, **hparams)


def convert(model: "nn.Module", conv: str = "falcon", rank: int | None = 1, init: str = "svd",
            example_input: "torch.Tensor | None" = None, input_size: Sequence[int] | None = None,
            include: Sequence[str] | str | None = None, exclude: Sequence[str] | str | None = None,
            include_stem: bool | None = None, energy: float | None = None, seed: int = 0,
            **gd: Any) -> "Converted":
    """A copy of the trained ``model`` with its convs replaced by rank-``rank`` ``conv`` blocks (falcon or dsconv)
    fitted to each kernel; everything else (BN, activations, the classifier) is kept.

    ``example_input``: a batch (or one image, C×H×W) of the size the model takes; the forward pass on it
    finds the convs and the sizes they see (or give ``input_size``; default 3×224×224). ``init``: ``svd``
    (the closed-form optimum), ``gd`` (gradient descent) or ``random``. ``energy``: instead of ``rank``, each
    layer's smallest rank keeping that fraction of every channel's singular-value energy. Which convs:
    as in :func:`size`. Returns a :class:`falcon.conversion.Converted`: ``.model`` is a plain ``nn.Module``
    to fine-tune with your own loop; ``.layers`` (and ``.as_dict()``) the per-layer fit report.
    """
    from falcon.conversion import convert_model
    from falcon.ehp import GD_OPTIONS

    _check_extra("convert", convert, gd, GD_OPTIONS)
    if example_input is not None:
        shape = tuple(example_input.shape)
        input_size = shape if len(shape) == 3 else shape[1:]
    return convert_model(model, conv, None if energy is not None else rank, init, input_size=input_size,
                         include=include, exclude=exclude, include_stem=include_stem, energy=energy, seed=seed, **gd)

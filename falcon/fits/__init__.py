"""Fitting a trained kernel with a conv type: one entry point for every fittable type of the registry.

Each fittable :class:`~falcon.convtypes.ConvType` carries a :class:`~falcon.convtypes.FitRule` that names its
fitter (a :class:`~falcon.fits.base.Fitter` in this package, imported when a fit runs), its ranked
hyper-parameters and its full ranks. Conversion, the probe, the CLI and the app call the functions here with
a conv type's name; none of them knows how a type is fitted.

* :func:`fitter_of` — the fitter of a conv type (a :class:`FalconError` for a type that cannot be fitted);
* :func:`fit_kernel` — the fit of a kernel ``(N, M, D, D)``;
* :func:`fit_module` — a bare block standing in for a ``Conv2d``, loaded with the fit (and the conv's bias);
* :func:`attach_bias` — the replaced conv's bias on the block's last convolution.

The fitters: :mod:`falcon.fits.ehp` (falcon, dsconv), :mod:`falcon.fits.tucker` (tucker2),
:mod:`falcon.fits.cp` (cp), :mod:`falcon.fits.spatial` (spatial).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from falcon.errors import FalconError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from falcon.fits.base import Fitter


def fitter_of(conv_type: str) -> "Fitter":
    """The fitter of a registry conv type (its :class:`~falcon.convtypes.FitRule`'s, imported on first use)."""
    from falcon.convtypes import FITTABLE, get_conv_type

    ct = get_conv_type(conv_type)
    if ct.fit is None:
        raise FalconError(f"{conv_type} cannot be fitted to a trained kernel; fit one of {', '.join(FITTABLE)}")
    module, _, attr = ct.fit.fitter.partition(":")
    return getattr(importlib.import_module(module), attr)


def fit_kernel(kernel: "torch.Tensor", conv_type: str, ranks: int | dict | None = 1, method: str = "svd",
               **options: Any):
    """Fit ``kernel`` with ``conv_type``: ``ranks`` one rank for every ranked hyper-parameter, a dict of them, or
    None for the type's own rank rule (tucker2: EVBMF); ``method`` one of the fitter's ``methods`` (``svd``: the
    type's default fit); ``options`` go to the fitter (seed, steps, …)."""
    return fitter_of(conv_type).fit(kernel, ranks, method, **options)


def check_conv(conv: "nn.Module") -> None:
    """A FalconError unless ``conv`` is a square, ungrouped, undilated Conv2d with symmetric stride and zero padding."""
    from torch import nn

    if not isinstance(conv, nn.Conv2d):
        raise FalconError(f"expected a Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1] or conv.dilation != (1, 1) \
            or conv.stride[0] != conv.stride[1] or not isinstance(conv.padding, tuple) \
            or conv.padding[0] != conv.padding[1] or conv.padding_mode != "zeros":
        raise FalconError("only square, ungrouped, undilated convs with symmetric stride and zero padding can be fitted")


def fit_module(conv: "nn.Conv2d", conv_type: str, ranks: int | dict | None = 1, method: str = "svd", spec=None,
               **options: Any):
    """(block, fit): a bare ``conv_type`` block that stands in for ``conv``, loaded with the fit of its kernel.

    The conv's bias (if any) goes on the block's convolution that ends at the N outputs, so the block computes
    ``conv`` up to the fit error. ``spec`` (a LayerSpec with the input size) is optional."""
    from falcon.convtypes import get_conv_type
    from falcon.spec import LayerSpec

    check_conv(conv)
    if spec is None:
        d, pad = conv.kernel_size[0], conv.padding[0]
        spec = LayerSpec(conv.in_channels, conv.out_channels, d, max(d, 1), stride=conv.stride[0], padding=pad)
    fitter = fitter_of(conv_type)
    fit = fitter.fit(conv.weight.detach(), ranks, method, **options)
    block = get_conv_type(conv_type).build(spec, **fit.hparams)
    block = block.to(device=conv.weight.device, dtype=conv.weight.dtype)
    fitter.load(block, fit)
    if conv.bias is not None:
        fitter.attach_bias(block, conv.bias.detach())
    return block, fit


def attach_bias(block: "nn.Module", bias: "torch.Tensor") -> None:
    """Give a fitted block the replaced conv's bias (on its convolution that ends at the N outputs)."""
    fitter_of(block.conv_type).attach_bias(block, bias)


def block_kernel(block: "nn.Module") -> "torch.Tensor":
    """The standard-conv kernel ``(N, M, D, D)`` that a bare block of a fittable type computes."""
    return fitter_of(block.conv_type).kernel_of(block)

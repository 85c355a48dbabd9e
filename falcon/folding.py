"""Folding an eval-mode BatchNorm2d into the conv(s) before it: the math the registry's deploy rules use.

A BatchNorm2d in eval mode is the affine map ``y ↦ s·y + t`` per channel with ``s = γ / √(σ² + ε)`` and
``t = β − s·μ`` (:func:`bn_affine`). After a conv it folds into the conv: weights scaled by ``s`` per output
channel, bias ``s·b + t``. After a block whose output is the sum of several convs' outputs (DSConv's k
branches) it folds into each of them, the shift ``t`` added once (:func:`fold_bn_into`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from falcon.errors import FalconError


def bn_affine(bn: nn.BatchNorm2d, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale s, shift t) of ``bn`` in eval mode, in the dtype and device of ``like``."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise FalconError("only a BatchNorm2d with running statistics folds into a conv")
    scale = torch.rsqrt(bn.running_var.to(like) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(like)
    shift = (bn.bias.to(like) if bn.bias is not None else torch.zeros_like(scale)) - bn.running_mean.to(like) * scale
    return scale, shift


def convs_at(block: nn.Module, path: str) -> list[nn.Conv2d]:
    """The conv(s) at ``path`` inside ``block`` ("last"; "branches.*.pointwise": that conv of every branch)."""
    found = [block]
    for part in path.split("."):
        found = [c for m in found for c in (m.children() if part == "*" else [getattr(m, part, None)])]
    if not found or not all(isinstance(c, nn.Conv2d) for c in found):
        raise FalconError(f"{type(block).__name__} has no conv at {path!r} for a BatchNorm to fold into")
    return found


@torch.no_grad()
def fold_bn_into(block: nn.Module, path: str, bn: nn.BatchNorm2d | None) -> nn.Module:
    """A copy of ``block`` in eval mode with ``bn`` (which follows it) folded into its conv(s) at ``path``, whose
    outputs the block sums (or returns, for one); ``block`` itself when there is no ``bn``."""
    if bn is None:
        return block
    block = copy.deepcopy(block)
    convs = convs_at(block, path)
    if any(c.out_channels != bn.num_features for c in convs):
        raise FalconError(f"the BatchNorm has {bn.num_features} channels, the convs at {path!r} have "
                          f"{convs[0].out_channels}")
    scale, shift = bn_affine(bn, convs[0].weight)
    for i, conv in enumerate(convs):
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        bias = conv.bias * scale if conv.bias is not None else torch.zeros_like(scale)
        if i == 0:
            bias = bias + shift
        conv.bias = nn.Parameter(bias) if (conv.bias is not None or i == 0) else None
    return block.eval()

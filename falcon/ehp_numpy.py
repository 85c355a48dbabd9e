"""The EHP product in numpy: no torch, so a page can draw it before torch is imported, and an
implementation independent of :func:`falcon.ehp.ehp_kernel` (``bmm``) for the tests to compare with.
"""
from __future__ import annotations

import numpy as np

from falcon.errors import FalconError


def ehp_kernel_np(pointwise: np.ndarray, depthwise: np.ndarray, axis: str) -> np.ndarray:
    """``K`` of shape ``(N, M, D, D)`` from ``pointwise`` ``(k, N, M)`` or ``(N, M)`` and ``depthwise``
    ``(k, C, D, D)`` or ``(C, D, D)``: ``K[n,m] = Σ_r P[r,n,m]·D[r,n]`` for ``axis="output"`` (FALCON, C = N)
    and ``Σ_r P[r,n,m]·D[r,m]`` for ``"input"`` (DSConv, C = M)."""
    p, d = np.asarray(pointwise), np.asarray(depthwise)
    if p.ndim == 2:
        p = p[None]
    if d.ndim == 3:
        d = d[None]
    if axis not in ("output", "input"):
        raise FalconError(f"axis must be 'output' (falcon) or 'input' (dsconv), got {axis!r}")
    channels = p.shape[1] if axis == "output" else p.shape[2]
    if p.ndim != 3 or d.ndim != 4 or d.shape[0] != p.shape[0] or d.shape[1] != channels:
        raise FalconError(f"pointwise {p.shape} and depthwise {d.shape} do not make an EHP along the {axis} axis")
    return np.einsum("rnm,rnij->nmij" if axis == "output" else "rnm,rmij->nmij", p, d)

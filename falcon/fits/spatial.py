"""Spatial low-rank (Jaderberg et al., 2014; the closed form of Tai et al., 2016): a D×1 conv M→K then a 1×D
conv K→N.

With ``W[(m, i), (n, j)] = K[n, m, i, j]`` (the kernel as an (M·D) × (N·D) matrix) the block computes
``K[n, m, i, j] = Σ_c H[n, c, j] · V[c, m, i]``, a rank-K product ``W = V̄ H̄`` of it, so the best fit in Frobenius
norm is the truncated SVD of W (Eckart–Young); it is exact from K = D·min(M, N) on.
"""
from __future__ import annotations

import math

import torch

from falcon.fits.base import Fitter


def kernel_matrix(kernel: torch.Tensor) -> torch.Tensor:
    """The kernel ``(N, M, D, D)`` as the (M·D) × (N·D) matrix ``W[(m, i), (n, j)] = K[n, m, i, j]``."""
    n, m, d, _ = kernel.shape
    return kernel.permute(1, 2, 0, 3).reshape(m * d, n * d)


class SpatialFitter(Fitter):
    methods = ("svd", "random")
    bias_on = "horizontal"

    def decompose(self, kernel, ranks, method, **options):
        n, m, d, _ = kernel.shape
        k = ranks["rank"]
        u, s, vh = torch.linalg.svd(kernel_matrix(kernel.double()), full_matrices=False)
        root = s[:k].sqrt()
        vertical = (u[:, :k] * root).T.reshape(k, m, d)  # V[c, m, i]
        horizontal = (root[:, None] * vh[:k]).reshape(k, n, d).permute(1, 0, 2)  # H[n, c, j]
        return {"vertical": vertical, "horizontal": horizontal}, []

    def compose(self, factors):
        return torch.einsum("cmi,ncj->nmij", factors["vertical"], factors["horizontal"])

    def factors_of(self, block):
        return {"vertical": block.vertical.weight[:, :, :, 0], "horizontal": block.horizontal.weight[:, :, 0, :]}

    def write(self, block, factors):
        block.vertical.weight.copy_(factors["vertical"][:, :, :, None])
        block.horizontal.weight.copy_(factors["horizontal"][:, :, None, :])

    def structure(self, ranks):
        return f"writes its kernel as a rank-{ranks['rank']} product of D×1 and 1×D filters (the SVD of K as an (M·D)×(N·D) matrix)"

    def error_by_rank(self, kernel):
        s2 = torch.linalg.svdvals(kernel_matrix(kernel.detach().double())) ** 2
        total = s2.sum().item()
        if total == 0:
            return [0.0] * len(s2)
        dropped = s2.flip(0).cumsum(0).flip(0).tolist()[1:] + [0.0]  # Σ s² past rank r, for r = 1 … full
        return [math.sqrt(v / total) for v in dropped]


SPATIAL = SpatialFitter("spatial")

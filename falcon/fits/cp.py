"""CP (Lebedev et al., 2015): a 1×1 conv M→R, a D×1 depthwise conv, a 1×D depthwise conv (the layer's stride
split between them), a 1×1 conv R→N.

The block computes ``K[n, m, i, j] = Σ_r B[n, r] · v[r, i] · h[r, j] · A[r, m]``: a rank-R CP decomposition of the
kernel, fitted by alternating least squares (tensorly's ``parafac``, SVD start, seeded for the columns the SVD
cannot fill). Each component's scale is split evenly over its four factors. From R = min(M, N)·D² on the fit is
exact by construction (one component per input channel — or output channel — and kernel position), so no ALS runs.

ALS is refused where it is impractical (:data:`MAX_ALS_WORK`) and a degenerate fit — NaN, or components far
larger than the kernel that cancel each other (:data:`MAX_CANCELLATION`) — is refused instead of returned.
"""
from __future__ import annotations

import warnings

import torch

from falcon.errors import FalconError
from falcon.fits.base import Fitter

ALS_ITERATIONS = 200
ALS_TOL = 1e-8
#: ALS is refused above this many multiply-adds per iteration (≈ R·N·M·D²·4 for the four MTTKRPs); see
#: docs or the report for the timings behind it.
MAX_ALS_WORK = 4e10
#: A fit whose components' norms sum to more than this many times the fitted kernel's norm is degenerate:
#: large components cancelling each other (Lebedev et al. §3.2), useless for fine-tuning.
MAX_CANCELLATION = 1e3


def exact_factors(kernel: torch.Tensor) -> dict[str, torch.Tensor]:
    """A rank-min(M, N)·D² CP of the kernel, exact: one unit component per (channel, i, j) of the smaller side."""
    n, m, d, _ = kernel.shape
    eye_d = torch.eye(d, dtype=kernel.dtype, device=kernel.device)
    smaller = m if m <= n else n
    idx = torch.arange(smaller * d * d, device=kernel.device)
    c, i, j = idx // (d * d), (idx // d) % d, idx % d
    unit = torch.eye(smaller, dtype=kernel.dtype, device=kernel.device)[:, c]  # (C, R)
    vertical, horizontal = eye_d[i], eye_d[j]  # (R, D)
    if m <= n:
        return {"first": unit.T, "vertical": vertical, "horizontal": horizontal, "last": kernel[:, c, i, j]}
    return {"first": kernel[c, :, i, j], "vertical": vertical, "horizontal": horizontal, "last": unit}  # (R, M)


def als_factors(kernel: torch.Tensor, rank: int, seed: int = 0, iterations: int = ALS_ITERATIONS,
                tol: float = ALS_TOL) -> dict[str, torch.Tensor]:
    """Rank-R CP by ALS (tensorly's parafac, numpy backend, float64), each component's scale split evenly."""
    import numpy as np
    import tensorly as tl
    from tensorly.decomposition import parafac

    n, m, d, _ = kernel.shape
    work = rank * n * m * d * d * 4
    if work > MAX_ALS_WORK:
        raise FalconError(f"CP by ALS at rank {rank} on a {n}×{m}×{d}×{d} kernel is about {work:.1e} multiply-adds "
                          f"per iteration (limit {MAX_ALS_WORK:.0e}); use a lower rank or another conv type")
    with tl.backend_context("numpy"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SVD start warns when R exceeds a mode's size (it fills in at random)
        weights, (b, a, v, h) = parafac(kernel.cpu().numpy(), rank, n_iter_max=iterations, init="svd", tol=tol,
                                        random_state=np.random.RandomState(seed), normalize_factors=True)
    norms = [np.linalg.norm(f, axis=0) for f in (b, a, v, h)]
    scale = np.abs(weights) * np.prod(norms, axis=0)
    root = np.where(scale > 0, scale, 0.0) ** 0.25
    unit = [f / np.where(nrm > 0, nrm, 1.0) for f, nrm in zip((b, a, v, h), norms)]
    b, a, v, h = (f * root for f in unit)
    b = b * np.sign(weights)
    as_t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(kernel.device)  # noqa: E731
    return {"first": as_t(a.T), "vertical": as_t(v.T), "horizontal": as_t(h.T), "last": as_t(b)}


def cancellation(factors: dict[str, torch.Tensor], kernel_hat: torch.Tensor) -> float:
    """Σ_r ‖component r‖ / ‖Σ_r component r‖: 1 for components that do not cancel, large for a degenerate fit."""
    norms = (factors["last"].norm(dim=0) * factors["first"].norm(dim=1) * factors["vertical"].norm(dim=1)
             * factors["horizontal"].norm(dim=1))
    total = kernel_hat.norm().item()
    return norms.sum().item() / total if total > 0 else (0.0 if norms.sum().item() == 0 else float("inf"))


class CPFitter(Fitter):
    methods = ("als", "random")
    bias_on = "last"

    def decompose(self, kernel, ranks, method, seed=0, **options):
        k = kernel.double()
        rank = ranks["rank"]
        if rank >= self.full_ranks(k.shape)["rank"]:
            return exact_factors(k), ["exact CP at the full rank (no ALS)"]
        factors = als_factors(k, rank, seed, options.get("iterations", ALS_ITERATIONS), options.get("tol", ALS_TOL))
        if not all(bool(torch.isfinite(f).all()) for f in factors.values()):
            raise FalconError(f"CP by ALS diverged at rank {rank} (NaN factors); lower the rank")
        ratio = cancellation(factors, self.compose(factors))
        if ratio > MAX_CANCELLATION:
            raise FalconError(f"CP by ALS at rank {rank} is degenerate: its components are {ratio:.0f}× larger than "
                              "the kernel and cancel each other; lower the rank")
        return factors, []

    def structure(self, ranks):
        return f"writes its kernel as a sum of {ranks['rank']} rank-one terms (1×1, D×1, 1×D and 1×1 filters)"

    def compose(self, factors):
        return torch.einsum("nr,ri,rj,rm->nmij", factors["last"], factors["vertical"], factors["horizontal"],
                            factors["first"])

    def factors_of(self, block):
        return {"first": block.first.weight[:, :, 0, 0], "vertical": block.vertical.weight[:, 0, :, 0],
                "horizontal": block.horizontal.weight[:, 0, 0, :], "last": block.last.weight[:, :, 0, 0]}

    def write(self, block, factors):
        block.first.weight.copy_(factors["first"][:, :, None, None])
        block.vertical.weight.copy_(factors["vertical"][:, None, :, None])
        block.horizontal.weight.copy_(factors["horizontal"][:, None, None, :])
        block.last.weight.copy_(factors["last"][:, :, None, None])


CP = CPFitter("cp")

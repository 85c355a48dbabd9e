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

import torch

from falcon.errors import FalconError
from falcon.fits.base import Fitter

ALS_ITERATIONS = 100
ALS_TOL = 1e-7  # on the change of the relative error between iterations (tensorly's abs_rec_error)
#: Multiply-adds of one ALS iteration ≈ 4·R·N·M·D² (one MTTKRP per mode). Measured here (one thread, numpy
#: backend, a shared 2-core machine): 128×64×3×3 at R=16: 0.005 s per iteration; 256×128×3×3 at R=32: 0.1 s;
#: 512×512×3×3 at R=64: 3.1 s (2–9·10⁸ multiply-adds per second). Above this much work per iteration
#: (≈ 10 s per iteration, 15+ minutes for one layer) ALS is refused; above :data:`ALS_NOTE_SECONDS` of
#: estimated time a fit carries a note.
MAX_ALS_WORK = 2e9
ALS_RATE = 3e8  # multiply-adds per second, for the estimate
ALS_NOTE_SECONDS = 60.0
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


def _svd_start(kernel, rank: int, seed: int) -> list:
    """ALS's start: per mode the leading left singular vectors of the unfolding, columns past the mode's size
    drawn from N(0, 1) with ``seed`` (tensorly's own SVD start computes full SVDs of the 3 × N·M·D unfoldings)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    factors = []
    for mode, size in enumerate(kernel.shape):
        u = np.linalg.svd(np.moveaxis(kernel, mode, 0).reshape(size, -1), full_matrices=False)[0][:, :rank]
        factors.append(np.concatenate([u, rng.standard_normal((size, rank - u.shape[1]))], axis=1))
    return factors


def als_work(shape, rank: int) -> float:
    """Multiply-adds of one ALS iteration on a kernel of ``shape`` (N, M, D, D) at rank R: ≈ 4·R·N·M·D²."""
    n, m, d = shape[0], shape[1], shape[2]
    return 4.0 * rank * n * m * d * d


def als_factors(kernel: torch.Tensor, rank: int, seed: int = 0, iterations: int = ALS_ITERATIONS,
                tol: float = ALS_TOL) -> dict[str, torch.Tensor]:
    """Rank-R CP by ALS (tensorly's parafac, numpy backend, float64) from :func:`_svd_start`, each component's
    scale split evenly over its four factors."""
    import numpy as np
    import tensorly as tl
    from tensorly.cp_tensor import CPTensor
    from tensorly.decomposition import parafac

    n, m, d, _ = kernel.shape
    work = als_work(kernel.shape, rank)
    if work > MAX_ALS_WORK:
        raise FalconError(f"CP by ALS at rank {rank} on a {n}×{m}×{d}×{d} kernel is about {work:.1e} multiply-adds "
                          f"per iteration (limit {MAX_ALS_WORK:.0e}, ~10 s each here); use a lower rank or another "
                          "conv type")
    x = kernel.cpu().numpy()
    with tl.backend_context("numpy"):
        start = CPTensor((np.ones(rank), _svd_start(x, rank, seed)))
        weights, (b, a, v, h) = parafac(x, rank, n_iter_max=iterations, init=start, tol=tol)
    norms = [np.linalg.norm(f, axis=0) for f in (b, a, v, h)]
    root = (np.abs(weights) * np.prod(norms, axis=0)) ** 0.25
    b, a, v, h = (f / np.where(nrm > 0, nrm, 1.0) * root for f, nrm in zip((b, a, v, h), norms))
    b = b * np.sign(weights)
    as_t = lambda y: torch.from_numpy(np.ascontiguousarray(y)).to(kernel.device)  # noqa: E731
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
        iterations = options.get("iterations", ALS_ITERATIONS)
        estimate = iterations * als_work(k.shape, rank) / ALS_RATE
        notes = [f"ALS is slow here: about {estimate:.0f} s for {iterations} iterations"] if estimate > ALS_NOTE_SECONDS else []
        factors = als_factors(k, rank, seed, iterations, options.get("tol", ALS_TOL))
        if not all(bool(torch.isfinite(f).all()) for f in factors.values()):
            raise FalconError(f"CP by ALS diverged at rank {rank} (NaN factors); lower the rank")
        ratio = cancellation(factors, self.compose(factors))
        if ratio > MAX_CANCELLATION:
            raise FalconError(f"CP by ALS at rank {rank} is degenerate: its components are {ratio:.0f}× larger than "
                              "the kernel and cancel each other; lower the rank")
        return factors, notes

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

"""Tucker-2 (Kim et al., 2016): a 1×1 conv M→R₃, a D×D conv R₃→R₄ (the layer's stride and padding), a 1×1 conv
R₄→N.

The block computes ``K[n, m, i, j] = Σ U_out[n, b] · G[b, a, i, j] · U_in[m, a]``: a Tucker decomposition of the
kernel along its two channel modes. ``hosvd`` (closed form): U_out, U_in the leading left singular vectors of the
output- and input-channel unfoldings, G the kernel projected on them; ``hooi`` (the default) refines it by
higher-order orthogonal iteration (tensorly's ``partial_tucker``), whose error is never above the HOSVD's (the
HOSVD is kept when rounding would make it so). Exact from R₃ = min(M, N·D²), R₄ = min(N, M·D²) on. Without
ranks, EVBMF on the two unfoldings chooses them (:func:`evbmf_ranks`).
"""
from __future__ import annotations

import torch

from falcon.fits.base import Fitter, relative_error
from falcon.fits.evbmf import evbmf_rank

#: HOOI's iterations and tolerance (tensorly's partial_tucker, on the relative error's change).
HOOI_ITERATIONS = 100
HOOI_TOL = 1e-6


def unfold(kernel: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-0 (output channels, N × M·D²) or mode-1 (input channels, M × N·D²) unfolding of the kernel."""
    return kernel.movedim(mode, 0).reshape(kernel.shape[mode], -1)


def evbmf_ranks(kernel: torch.Tensor) -> dict[str, int]:
    """Tucker-2's ranks by EVBMF on the input- (R₃) and output-channel (R₄) unfoldings, each at least 1."""
    k = kernel.detach().double().cpu()
    return {"rank_in": evbmf_rank(unfold(k, 1).numpy()), "rank_out": evbmf_rank(unfold(k, 0).numpy())}


def hosvd(kernel: torch.Tensor, rank_in: int, rank_out: int) -> dict[str, torch.Tensor]:
    """The truncated HOSVD along the two channel modes: {first: U_inᵀ (R₃, M), core (R₄, R₃, D, D), last: U_out (N, R₄)}."""
    u_out = torch.linalg.svd(unfold(kernel, 0), full_matrices=False)[0][:, :rank_out]
    u_in = torch.linalg.svd(unfold(kernel, 1), full_matrices=False)[0][:, :rank_in]
    core = torch.einsum("nmij,nb,ma->baij", kernel, u_out, u_in)
    return {"first": u_in.T, "core": core, "last": u_out}


def hooi(kernel: torch.Tensor, rank_in: int, rank_out: int, iterations: int = HOOI_ITERATIONS,
         tol: float = HOOI_TOL) -> dict[str, torch.Tensor]:
    """HOOI from the HOSVD (tensorly's ``partial_tucker`` on modes 0 and 1, numpy backend, float64)."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    with tl.backend_context("numpy"):
        (core, (u_out, u_in)), _ = partial_tucker(kernel.cpu().numpy(), rank=[rank_out, rank_in], modes=[0, 1],
                                                  init="svd", n_iter_max=iterations, tol=tol)
    as_t = lambda a: torch.from_numpy(a.copy()).to(kernel.device)  # noqa: E731
    return {"first": as_t(u_in).T, "core": as_t(core), "last": as_t(u_out)}


def _leading_basis(a: torch.Tensor) -> torch.Tensor:
    """The left singular vectors of ``a`` (rows × many columns), most energy first, from the eigenvectors of the
    small Gram matrix a·aᵀ: the same basis as the SVD's, an order of magnitude faster for wide unfoldings."""
    values, vectors = torch.linalg.eigh(a @ a.T)
    return vectors.flip(1)


class TuckerFitter(Fitter):
    methods = ("hooi", "hosvd", "random")
    bias_on = "last"

    def auto_ranks(self, kernel):
        return evbmf_ranks(kernel)

    def decompose(self, kernel, ranks, method, **options):
        k = kernel.double()
        closed = hosvd(k, ranks["rank_in"], ranks["rank_out"])
        if method == "hosvd":
            return closed, []
        refined = hooi(k, ranks["rank_in"], ranks["rank_out"], options.get("iterations", HOOI_ITERATIONS),
                       options.get("tol", HOOI_TOL))
        if relative_error(k, self.compose(refined)) > relative_error(k, self.compose(closed)):
            return closed, ["HOOI did not improve on the HOSVD; the HOSVD is kept"]
        return refined, []

    def compose(self, factors):
        return torch.einsum("nb,baij,am->nmij", factors["last"], factors["core"], factors["first"])

    def factors_of(self, block):
        return {"first": block.first.weight[:, :, 0, 0], "core": block.core.weight, "last": block.last.weight[:, :, 0, 0]}

    def write(self, block, factors):
        block.first.weight.copy_(factors["first"][:, :, None, None])
        block.core.weight.copy_(factors["core"])
        block.last.weight.copy_(factors["last"][:, :, None, None])

    def structure(self, ranks):
        return (f"writes its kernel as a {ranks['rank_out']}×{ranks['rank_in']}×D×D core between a 1×1 conv from M "
                f"to R₃ = {ranks['rank_in']} channels and one from R₄ = {ranks['rank_out']} to N")

    def error_by_rank(self, kernel):
        """HOSVD's error at uniform ranks R₃ = R₄ = 1 … the larger full rank (each clamped to its own)."""
        full = self.full_ranks(kernel.shape)
        top = max(full.values())
        return self.error_curve(kernel, [{n: min(r, f) for n, f in full.items()} for r in range(1, top + 1)])

    def error_curve(self, kernel, options):
        """HOSVD's error at each ``{rank_in, rank_out}`` of ``options``, from one rotation of the kernel: with the
        full singular bases U_out, U_in, the kernel rotated into them, C = K ×₀ U_outᵀ ×₁ U_inᵀ, keeps its norm, and
        the truncated HOSVD's core is C's leading R₄ × R₃ block, so ‖K − K̂‖² = ‖K‖² − ‖C[:R₄, :R₃]‖²."""
        k = kernel.detach().double()
        u_out, u_in = _leading_basis(unfold(k, 0)), _leading_basis(unfold(k, 1))
        energy = torch.einsum("nmij,nb,ma->baij", k, u_out, u_in).pow(2).sum((2, 3)).cumsum(0).cumsum(1)
        total = float(k.pow(2).sum())
        if total == 0.0:
            return [0.0] * len(options)
        out = []
        for o in options:
            b, a = min(int(o["rank_out"]), energy.shape[0]), min(int(o["rank_in"]), energy.shape[1])
            out.append(max(0.0, total - float(energy[b - 1, a - 1])) ** 0.5 / total ** 0.5)
        return out


TUCKER2 = TuckerFitter("tucker2")

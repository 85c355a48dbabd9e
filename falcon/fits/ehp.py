"""FALCON and DSConv: the extended Hadamard product of :mod:`falcon.ehp`, along the output or input channel.

The math (the per-channel SVD, the thesis's gradient descent, the factors in a block) is in :mod:`falcon.ehp`;
this fitter gives it the registry's interface. Its fits return :class:`falcon.ehp.Fit` (with ``P`` and ``D``).
"""
from __future__ import annotations

import torch

from falcon import ehp
from falcon.errors import FalconError
from falcon.fits.base import Fitter


class EHPFitter(Fitter):
    methods = ("svd", "gd", "random")

    def __init__(self, conv_type: str, axis: ehp.Axis):
        super().__init__(conv_type)
        self.axis = axis

    def _rank(self, kernel, ranks) -> int:
        if isinstance(ranks, dict):
            return self.resolve_ranks(kernel, ranks)[1]["rank"]
        if ranks is None:
            raise FalconError(f"{self.conv_type} has no rank rule of its own; give a rank (or convert with an energy)")
        return ranks

    def fit(self, kernel, ranks=1, method="svd", seed=0, **gd):
        method = self.method_of(method)
        rank = self._rank(kernel, ranks)
        if method == "svd":
            return ehp.svd_fit(kernel, rank, self.axis)
        if method == "gd":
            return ehp.run_gd(kernel, rank, self.axis, seed=seed, **gd).fit
        return self.random_fit(kernel, rank, seed)

    def random_fit(self, kernel, rank: int, seed: int = 0) -> ehp.Fit:
        """No fit: the factors of a freshly initialized block (PyTorch's default init, seeded)."""
        ehp._check_kernel(kernel)
        k, clamped = ehp.clamp_rank(kernel.shape, rank, self.axis)
        factors = self.random_factors(kernel, {"rank": k}, seed)
        kh = self.compose(factors)
        return ehp.Fit(factors["P"], factors["D"], kh, ehp.relative_error(kernel, kh), k, clamped, self.axis, rank,
                       "random")

    def compose(self, factors):
        return ehp.ehp_kernel(factors["P"], factors["D"], self.axis)

    def factors_of(self, block):
        p, d, _ = ehp.block_factors(block)
        return {"P": p, "D": d}

    def load(self, block, fit):
        return ehp.load_fit_into(block, fit)

    def attach_bias(self, block, bias):
        ehp.attach_bias(block, bias)

    def structure(self, ranks):
        k = ranks["rank"]
        return (f"writes its kernel as {k} pointwise × depthwise product{'s' if k > 1 else ''} sharing the "
                f"{self.axis} channel")

    def error_by_rank(self, kernel):
        return ehp.error_by_rank(kernel, self.axis)

    def channel_energy(self, kernel: torch.Tensor) -> torch.Tensor:
        """Cumulative singular-value energy per channel of the common axis, ``(C, q)`` (:func:`falcon.ehp.singular_energy`)."""
        return ehp.singular_energy(kernel, self.axis)

    def energy_ranks(self, kernel: torch.Tensor, energy: float) -> dict[str, int]:
        """The smallest rank that keeps ``energy`` of every channel's singular-value energy (Network Decoupling)."""
        return {"rank": int(ehp.rank_for_energy(kernel, self.axis, energy).max())}


FALCON = EHPFitter("falcon", "output")
DSCONV = EHPFitter("dsconv", "input")

"""Empirical variational Bayesian matrix factorization (Nakajima et al., 2013): the rank a noisy matrix holds.

The analytic EVBMF solution keeps the singular values above a threshold set by the noise variance σ², and σ²
is the minimizer of the free energy over a bounded interval. Kim et al. (2016) choose Tucker-2's ranks by
EVBMF on the kernel's output- and input-channel unfoldings (:func:`falcon.fits.tucker.evbmf_ranks`).
"""
from __future__ import annotations

import math

import numpy as np

#: τ̄ / √α of the threshold (Nakajima et al., 2013, Theorem 3 and eq. 33).
TAU_FACTOR = 2.5129


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _free_energy(sigma2: float, s2: np.ndarray, big: int, alpha: float, x_bar: float) -> float:
    """EVBMF's free energy (up to constants) at noise variance ``sigma2``; ``s2``: squared singular values."""
    x = s2 / (big * sigma2)
    above, below = x[x > x_bar], np.maximum(x[x <= x_bar], 1e-300)
    tau = _tau(above, alpha)
    return float(np.sum(below - np.log(below)) + np.sum(above - tau) + np.sum(np.log((tau + 1) / above))
                 + alpha * np.sum(np.log(tau / alpha + 1)))


def evbmf_rank(matrix) -> int:
    """The number of components EVBMF keeps in ``matrix`` (a 2-d array), clamped to at least 1."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(matrix, dtype=np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    small, big = y.shape
    s2 = np.linalg.svd(y, compute_uv=False) ** 2
    if small < 2 or not s2.sum() > 0:
        return 1
    alpha = small / big
    tau_bar = TAU_FACTOR * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    upper = s2.sum() / (small * big)
    bound = max(0, min(math.ceil(small / (1 + alpha)) - 1, small) - 1)  # the largest rank the bound allows
    lower = max(s2[min(bound + 1, small - 1)] / (big * x_bar), np.mean(s2[bound + 1:] if bound + 1 < small else s2[-1:]) / big)
    lower = min(lower, upper * (1 - 1e-9))
    sigma2 = minimize_scalar(_free_energy, args=(s2, big, alpha, x_bar), bounds=(max(lower, 1e-300), upper),
                             method="bounded").x
    threshold = big * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar)
    return max(1, int((s2 > threshold).sum()))

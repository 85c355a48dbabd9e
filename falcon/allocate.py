"""Where should the budget go? A per-layer choice of conv type and rank that meets a cost target with the least
predicted error: a multiple-choice knapsack.

Each layer ``l`` offers options ``(cost c_lj, error e_lj)`` (keeping the original conv is one of them). Choose one
option per layer to minimise ``Σ e_lj`` subject to ``Σ c_lj ≤ budget``.

:func:`solve` is dynamic programming over costs rounded **up** to a grid of ``bins`` steps of the budget. A plan it
returns always meets the true budget (rounding up only over-counts), and it is the exact optimum of the rounded
problem. Rounding can only exclude plans whose costs lie within one step per layer of the budget, so the true
optimum is bracketed: ``lower_bound ≤ optimum ≤ objective``, where ``lower_bound`` is the Lagrangian dual bound
``max_λ Σ_l min_j (e_lj + λ c_lj) − λ·budget`` (:func:`lagrangian_bound`). Both are reported, so the gap is stated
rather than assumed. :func:`greedy` is the usual marginal-gain loop, kept as the baseline the solver must not lose to.

Pure Python and numpy: it knows nothing of models; :mod:`falcon.planning` builds the options from the registry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from falcon.errors import FalconError

#: grid steps of the budget for the dynamic programme: cost precision 1/bins of the budget per layer
DEFAULT_BINS = 4000


@dataclass(frozen=True)
class Option:
    """One way to build a layer: its cost (MACs or params, any non-negative number), its predicted error, and
    what it is (``label`` for people; ``data`` carries the conv type and hyper-parameters)."""

    cost: float
    error: float
    label: str = ""
    data: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class Solution:
    choice: tuple[int, ...]  # the option index chosen per layer
    cost: float
    objective: float
    lower_bound: float  # the Lagrangian dual bound: no plan meeting the budget has a smaller objective
    method: str

    @property
    def gap(self) -> float:
        """objective − lower bound (≥ 0): how far from optimal this plan can be, at most."""
        return max(0.0, self.objective - self.lower_bound)


def _check(layers: Sequence[Sequence[Option]], budget: float) -> None:
    if not layers or any(not opts for opts in layers):
        raise FalconError("every layer needs at least one option")
    for opts in layers:
        for o in opts:
            if not (math.isfinite(o.cost) and math.isfinite(o.error)) or o.cost < 0 or o.error < 0:
                raise FalconError(f"option {o.label or o}: cost and error must be finite and non-negative")
    if not math.isfinite(budget) or budget <= 0:
        raise FalconError(f"the budget must be a positive finite number, got {budget!r}")


def cheapest(layers: Sequence[Sequence[Option]]) -> float:
    """The smallest total cost any plan reaches."""
    return sum(min(o.cost for o in opts) for opts in layers)


def _totals(layers, choice) -> tuple[float, float]:
    picked = [layers[i][j] for i, j in enumerate(choice)]
    return sum(o.cost for o in picked), sum(o.error for o in picked)


def solve(layers: Sequence[Sequence[Option]], budget: float, bins: int = DEFAULT_BINS) -> Solution:
    """The least total error with total cost ≤ ``budget`` (dynamic programming on costs rounded up; see the
    module's docstring for what is guaranteed). A FalconError naming the cheapest reachable cost if none fits."""
    _check(layers, budget)
    floor = cheapest(layers)
    if floor > budget:
        raise FalconError(f"no plan reaches a cost of {budget:,.0f}: the cheapest is {floor:,.0f}")
    step = budget / bins
    units = [np.array([math.ceil(o.cost / step - 1e-9) for o in opts], dtype=np.int64) for opts in layers]
    inf = np.inf
    best = np.zeros(bins + 1)  # best[b]: least error of the layers so far with rounded cost ≤ b
    picks: list[np.ndarray] = []
    for opts, cost in zip(layers, units):
        errors = np.array([o.error for o in opts])
        new = np.full(bins + 1, inf)
        arg = np.full(bins + 1, -1, dtype=np.int64)
        for j, (c, e) in enumerate(zip(cost, errors)):
            if c > bins:
                continue
            shifted = np.full(bins + 1, inf)
            shifted[c:] = best[: bins + 1 - c] + e
            better = shifted < new
            new[better], arg[better] = shifted[better], j
        best = new
        picks.append(arg)
    if not np.isfinite(best[bins]):  # the rounding pushed every fitting plan over: fall back on the greedy plan
        return greedy(layers, budget)
    choice, b = [], bins
    for i in range(len(layers) - 1, -1, -1):
        j = int(picks[i][b])
        choice.append(j)
        b -= int(units[i][j])
    choice.reverse()
    cost, objective = _totals(layers, choice)
    return Solution(tuple(choice), cost, objective, lagrangian_bound(layers, budget), "dp")


def lagrangian_bound(layers: Sequence[Sequence[Option]], budget: float, iters: int = 60) -> float:
    """``max_λ≥0 Σ_l min_j (e_lj + λ c_lj) − λ·budget``: a lower bound on the objective of every plan that meets
    the budget (weak duality). The dual is concave in λ; a golden-section search finds its maximum."""
    costs = [np.array([o.cost for o in opts]) for opts in layers]
    errors = [np.array([o.error for o in opts]) for opts in layers]

    def dual(lam: float) -> float:
        return sum(float(np.min(e + lam * c)) for e, c in zip(errors, costs)) - lam * budget

    hi = 0.0  # the steepest error-per-cost trade of any layer: past it, raising λ only lowers the dual
    for e, c in zip(errors, costs):
        gaps = np.diff(np.unique(c))
        if gaps.size:
            hi = max(hi, float(e.max() - e.min()) / float(gaps.min()))
    lo_, hi_ = 0.0, hi
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(iters):
        a, b = hi_ - ratio * (hi_ - lo_), lo_ + ratio * (hi_ - lo_)
        if dual(a) < dual(b):
            lo_ = a
        else:
            hi_ = b
    return max(dual(0.0), dual((lo_ + hi_) / 2))


def greedy(layers: Sequence[Sequence[Option]], budget: float) -> Solution:
    """The baseline: start from each layer's least-error option and, while over budget, take the move with the
    smallest error added per cost saved."""
    _check(layers, budget)
    choice = [min(range(len(opts)), key=lambda j: (opts[j].error, opts[j].cost)) for opts in layers]
    cost, _ = _totals(layers, choice)
    while cost > budget:
        moves = []
        for i, opts in enumerate(layers):
            here = opts[choice[i]]
            for j, o in enumerate(opts):
                saved = here.cost - o.cost
                if saved > 0:
                    moves.append(((o.error - here.error) / saved, i, j))
        if not moves:
            raise FalconError(f"no plan reaches a cost of {budget:,.0f}: the cheapest is {cheapest(layers):,.0f}")
        _, i, j = min(moves)
        choice[i] = j
        cost, _ = _totals(layers, choice)
    cost, objective = _totals(layers, choice)
    return Solution(tuple(choice), cost, objective, lagrangian_bound(layers, budget), "greedy")

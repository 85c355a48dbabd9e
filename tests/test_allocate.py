"""The budget allocator's solver: exact on problems small enough to enumerate, never worse than greedy, and its
Lagrangian bound below every feasible plan."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from falcon.allocate import Option, cheapest, greedy, lagrangian_bound, solve
from falcon.errors import FalconError

option = st.builds(Option, cost=st.integers(0, 40).map(float), error=st.floats(0, 10, allow_nan=False))
problems = st.lists(st.lists(option, min_size=1, max_size=4), min_size=1, max_size=5)


def brute_force(layers, budget):
    best = None
    for choice in itertools.product(*(range(len(opts)) for opts in layers)):
        cost = sum(layers[i][j].cost for i, j in enumerate(choice))
        err = sum(layers[i][j].error for i, j in enumerate(choice))
        if cost <= budget and (best is None or err < best):
            best = err
    return best


@settings(max_examples=300, deadline=None)
@given(problems, st.integers(1, 150))
def test_dp_finds_the_optimum_of_its_objective(layers, budget):
    """Integer costs with one grid step per unit: the rounded problem is the problem, so the DP must be exact."""
    best = brute_force(layers, budget)
    if best is None:
        with pytest.raises(FalconError, match="cheapest"):
            solve(layers, budget, bins=budget)
        return
    sol = solve(layers, budget, bins=budget)
    assert sol.cost <= budget
    assert sol.objective == pytest.approx(best, abs=1e-9)
    assert sol.lower_bound <= best + 1e-6  # weak duality


@settings(max_examples=200, deadline=None)
@given(problems, st.integers(1, 150))
def test_dp_meets_the_budget_and_is_no_worse_than_greedy(layers, budget):
    if cheapest(layers) > budget:
        return
    sol = solve(layers, budget, bins=97)  # a coarse grid: still feasible, and never worse than greedy (fallback)
    assert sol.cost <= budget + 1e-9
    g = greedy(layers, budget)
    assert g.cost <= budget + 1e-9
    exact = solve(layers, budget, bins=budget)
    assert exact.objective <= g.objective + 1e-9


def test_the_bound_is_tight_on_a_convex_problem():
    layers = [[Option(10, 0.0), Option(5, 1.0), Option(1, 3.0)] for _ in range(4)]
    sol = solve(layers, 20)
    assert sol.cost == 20 and sol.objective == pytest.approx(4.0)
    assert lagrangian_bound(layers, 20) == pytest.approx(4.0, abs=1e-6)
    assert sol.gap == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf")])
def test_bad_budgets_are_one_line(budget):
    with pytest.raises(FalconError, match="budget"):
        solve([[Option(1, 0)]], budget)

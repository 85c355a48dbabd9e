"""Plans beyond `falcon plan`: the uniform answer reuses the plan's problem, a planned (mixed-type) converted model
saves and loads exactly, and an experiment run takes a plan and stores what it counted."""
from __future__ import annotations

import json

import pytest
import torch

from falcon.cli import main
from falcon.planning import DEFAULT_TYPES, plan_model, problem, uniform_plan


@pytest.fixture(scope="module")
def digits():
    from falcon.sources import load_model

    return load_model("digits-vgg")


def _same(a, b) -> dict:
    return {k: v for k, v in a.as_dict().items() if k != "seconds"} == \
        {k: v for k, v in b.as_dict().items() if k != "seconds"}


@pytest.mark.parametrize("proxy", ["kernel", "data"])
def test_uniform_plan_on_the_plans_problem_is_unchanged(digits, proxy):
    prob = problem(digits, DEFAULT_TYPES, proxy)
    for ratio in (2, 4):
        assert _same(uniform_plan(digits, target_ratio=ratio, proxy=proxy, prob=prob),
                     uniform_plan(digits, target_ratio=ratio, proxy=proxy))
        assert _same(plan_model(digits, target_ratio=ratio, proxy=proxy, prob=prob),
                     plan_model(digits, target_ratio=ratio, proxy=proxy))
    # a problem whose types leave FALCON out is not reused: the uniform answer makes its own
    other = problem(digits, ("tucker2",), proxy)
    assert _same(uniform_plan(digits, target_ratio=2, proxy=proxy, prob=other),
                 uniform_plan(digits, target_ratio=2, proxy=proxy))


def test_the_plan_command_makes_one_problem(monkeypatch, capsys):
    import falcon.planning as planning

    calls = []
    real = planning.problem
    monkeypatch.setattr(planning, "problem", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["plan", "--model", "digits-vgg", "--target-crr", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(calls) == 1 and "error" not in out["uniform"]

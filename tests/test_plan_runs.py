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


# ----------------------------------------------------------------------------------------------
# a mixed-type converted model saves and loads
def test_a_planned_model_saves_and_loads_exactly(digits, tmp_path, capsys):
    from falcon.conversion import load_converted
    from falcon.sources import load_model

    plan = plan_model(digits, target_ratio=3).as_dict()
    kinds = {c["conv"] for c in plan["layers"]} - {"standard"}
    assert len(kinds) >= 2, kinds  # a mixed plan: the point of the test
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out_file = tmp_path / "planned.pt"
    assert main(["convert", "--model", "digits-vgg", "--plan", str(path), "--output", str(out_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macs"] == plan["after"]["macs"] and out["output"] == str(out_file)

    from falcon.planning import apply_plan

    before, _ = apply_plan(digits.model, plan, "digits-vgg", digits.input_size)
    loaded = load_converted(out_file)
    x = torch.randn(8, *digits.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(before(x), loaded.model(x))
    assert {type(m).__name__ for m in loaded.model.modules()} == {type(m).__name__ for m in before.modules()}
    assert sum(p.numel() for p in loaded.model.parameters()) == plan["after"]["params"]
    assert "by a plan" in loaded.description
    # the same file through load_model (--weights), as every command reads it
    again = load_model("digits-vgg", str(out_file))
    with torch.no_grad():
        assert torch.equal(again.model(x), before(x))


def test_a_uniform_converted_file_without_site_types_still_loads(digits, tmp_path):
    from falcon.conversion import convert_model, load_converted, save_converted

    converted = convert_model(digits, "falcon", 2)
    path = save_converted(converted, tmp_path / "f.pt")
    obj = torch.load(path, weights_only=True)
    for site in obj["sites"]:
        assert site.pop("conv") == "falcon"  # files from before the per-site type
    torch.save(obj, path)
    x = torch.randn(4, *digits.input_size)
    with torch.no_grad():
        assert torch.equal(load_converted(path).model(x), converted.model(x))

"""Per-layer plans (falcon.planning): they meet their target (counted on the converted model, not only predicted),
the solver is exact on a model small enough to enumerate, it is never worse than greedy, and bad targets are one line."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from falcon.cli import main
from falcon.errors import FalconError
from falcon.planning import apply_plan_report, layer_options, plan_model, problem, uniform_plan


@pytest.fixture(scope="module")
def digits():
    from falcon.sources import load_model

    return load_model("digits-vgg")


@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_plan_meets_its_target_on_the_counted_model(digits, ratio):
    plan = plan_model(digits, target_ratio=ratio)
    d = plan.as_dict()
    assert d["after"]["macs"] <= d["original"]["macs"] / ratio
    assert d["lower_bound"] <= d["objective"] + 1e-9
    assert d["objective"] <= d["greedy_objective"] + 1e-9
    out = apply_plan_report(digits, d)
    assert (out["params"], out["macs"]) == (d["after"]["params"], d["after"]["macs"])  # predicted == counted
    assert out["computation_reduction_rate"] >= ratio


def test_the_plan_is_no_worse_than_uniform_rank_at_the_same_budget(digits):
    for ratio in (2, 4):
        plan, uniform = plan_model(digits, target_ratio=ratio), uniform_plan(digits, target_ratio=ratio)
        assert uniform.total("macs") <= uniform.budget
        assert plan.objective <= uniform.objective + 1e-9  # uniform FALCON is one of the plans the solver weighs


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.c = nn.Conv2d(12, 6, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.head(x.mean((2, 3)))


def test_the_solver_finds_the_optimum_of_its_objective_by_brute_force():
    torch.manual_seed(0)
    model = Tiny().eval()
    types = ("falcon", "spatial", "standard")
    prob = problem(model, types, "kernel", include_stem=True)
    layers = [layer_options(s.name, model.get_submodule(s.name), s.spec, prob.types[s.name], "macs", "kernel")
              for s in prob.sites]
    assert len(layers) == 3 and all(len(o) > 3 for o in layers)
    for ratio in (1.5, 2.5, 4):
        budget = prob.original["macs"] / ratio - prob.fixed["macs"]
        best = min((sum(o.error for o in combo) for combo in itertools.product(*layers)
                    if sum(o.cost for o in combo) <= budget), default=None)
        if best is None:
            with pytest.raises(FalconError, match="best reachable"):
                plan_model(model, target_ratio=ratio, types=types, include_stem=True)
            continue
        plan = plan_model(model, target_ratio=ratio, types=types, include_stem=True, bins=20000)
        assert plan.total("macs") <= plan.budget
        assert plan.objective == pytest.approx(best, abs=1e-9)


def test_error_curves_equal_the_fits():
    from falcon.fits import fitter_of

    k = torch.randn(24, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    opts = [{"rank_in": a, "rank_out": b} for a in (1, 5, 16) for b in (2, 7, 24)]
    fast = fitter_of("tucker2").error_curve(k, opts)
    assert fast == pytest.approx([fitter_of("tucker2").fit(k, o, "hosvd").relative_error for o in opts], abs=1e-6)
    for conv in ("falcon", "dsconv", "spatial"):
        f = fitter_of(conv)
        opts = [{"rank": r} for r in (1, 2, 5)]
        assert f.error_curve(k, opts) == pytest.approx([f.fit(k, o).relative_error for o in opts], abs=1e-6)


@pytest.mark.parametrize("argv, words", [
    (["--target-crr", "0"], "best reachable is"),  # a bad target still says what the model can reach
    (["--target-crr", "-2"], "best reachable is"),
    (["--target-crr", "nan"], "best reachable is"),
    (["--target-params", "0"], "params, of which"),
    (["--target-crr", "5000"], "best reachable"),
    (["--target-macs", "10"], "best reachable"),
    (["--target-crr", "2", "--types", "nonsense"], "--types"),
    (["--target-crr", "2", "--types", "mobilev2"], "cannot be fitted"),
    (["--target-crr", "2", "--proxy", "data", "--types", "falcon"], None),
])
def test_bad_targets_are_one_line(argv, words, capsys):
    try:
        rc = main(["plan", "--model", "digits-vgg", *argv])
    except SystemExit as e:  # argparse's own one line
        rc = e.code
    out = capsys.readouterr()
    if words is None:
        assert rc == 0
        return
    err = out.err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err


def test_a_plan_file_is_data_checked_before_use(digits, tmp_path, capsys):
    plan = plan_model(digits, target_ratio=2).as_dict()
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert main(["convert", "--model", "digits-vgg", "--plan", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macs"] == plan["after"]["macs"]
    for bad, words in ((dict(plan, model="resnet18"), "made for"),
                       (dict(plan, layers=[{"layer": "nope", "conv": "falcon", "hparams": {"rank": 1}}]), "not a layer"),
                       (dict(plan, layers=[{"layer": "features.3", "conv": "os:system", "hparams": {}}]), "unknown"),
                       (dict(plan, layers=[{"layer": "features.3", "conv": "falcon", "hparams": {"rank": 10**12}}]),
                        "rank")):
        path.write_text(json.dumps(bad))
        assert main(["convert", "--model", "digits-vgg", "--plan", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_data_proxy_calibrates_on_a_named_data_set():
    """--data names the calibration set: for digits-vgg, the digits data set gives the same site inputs (same seed)
    as the bundled data; a data set of the wrong shape, or none, is one line naming what to give."""
    from falcon.planning import problem

    named = problem("digits-vgg", proxy="data", data="digits", seed=3)
    bundled = problem("digits-vgg", proxy="data", seed=3)
    assert named.inputs.keys() == bundled.inputs.keys() and len(named.inputs) >= 4
    assert all(torch.equal(named.inputs[k], bundled.inputs[k]) for k in named.inputs)
    assert named.inputs[next(iter(named.inputs))].shape[0] == 64 and "digits" in named.calibration
    with pytest.raises(FalconError, match=r"1×32×32 but resnet18 takes 3×224×224"):
        problem("resnet18", proxy="data", data="digits")
    with pytest.raises(FalconError, match="give --data"):
        problem("resnet18", proxy="data")

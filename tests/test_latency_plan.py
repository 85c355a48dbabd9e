"""Latency-target plans (falcon.latency_plan): with an injected timer whose times add up exactly (every conv costs
its MACs, every other leaf module a constant), the planned model's measured time must equal the prediction and
meet the budget; the cache times each shape once; the estimate refuses before timing; should_stop ends it; bad
targets are one line. One test times for real (a few seconds)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import falcon.latency_plan as lat
from falcon.cli import main
from falcon.errors import FalconError
from falcon.planning import layer_options, problem


class AdditiveTimer:
    """Seconds = 1 ns per conv MAC + 2 µs per conv + 5 µs per other leaf module: a model's time is exactly the sum
    of its parts, so a correct prediction is exact. Records every module it is asked to time."""

    def __init__(self):
        self.timed: list[tuple[nn.Module, tuple]] = []

    def cost(self, module: nn.Module, x: torch.Tensor) -> float:
        total = [0.0]

        def hook(m, args, out):
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                total[0] += 1e-9 * out.numel() * (m.in_channels // m.groups) * k + 2e-6
            elif not list(m.children()):
                total[0] += 5e-6

        hooks = [m.register_forward_hook(hook) for m in module.modules()]
        try:
            with torch.no_grad():
                module(x)
        finally:
            for h in hooks:
                h.remove()
        return total[0]

    def __call__(self, module, x, visits):
        self.timed.append((module, tuple(x.shape)))
        return [self.cost(module, x)] * visits


@pytest.fixture(scope="module")
def digits():
    from falcon.sources import load_model

    return load_model("digits-vgg")


@pytest.fixture(scope="module")
def additive(digits):
    timer = AdditiveTimer()
    return timer, lat.latency_problem(digits, timer=timer)


@pytest.mark.parametrize("target", [{"speedup": 1.5}, {"speedup": 2}, {"ms": 0.5}])
def test_the_plan_meets_its_budget_and_the_additive_model_measures_what_was_predicted(digits, additive, target):
    timer, lp = additive
    result = lat.solve_latency(lp, target)
    result.check = lat.check_plan(digits.model, result.plan.as_dict(), digits.input_size, timer=timer, rounds=2)
    d = result.as_dict()["latency"]
    model_ms = timer.cost(digits.model, torch.zeros(1, *digits.input_size)) * 1e3  # independent of the table
    assert d["original_ms"] == pytest.approx(model_ms)
    budget = model_ms / target["speedup"] if "speedup" in target else target["ms"]
    assert d["budget_ms"] == pytest.approx(budget)
    assert d["predicted_ms"] <= budget * (1 + 1e-9)
    assert d["measured"]["planned_ms"] == pytest.approx(d["predicted_ms"], rel=1e-9)  # the timer adds up exactly
    assert abs(d["prediction_error"]) < 1e-9
    assert d["measured"]["speedup"] >= model_ms / budget * (1 - 1e-9)
    assert result.plan.objective <= result.plan.greedy_objective + 1e-12
    assert any(c.conv != "standard" for c in result.plan.layers)


class Repeats(nn.Module):
    """b and c have one shape (8→8 3×3 at the same size): they are timed once."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.head(x.mean((2, 3)))


def test_the_cache_times_each_unique_shape_once():
    torch.manual_seed(0)
    model = Repeats().eval()
    timer = AdditiveTimer()
    lp = lat.latency_problem(model, types=("falcon", "standard"), include_stem=True, timer=timer)
    prob = problem(model, ("falcon", "standard"), include_stem=True)
    opts = {s.name: layer_options(s.name, model.get_submodule(s.name), s.spec, prob.types[s.name], "macs", "kernel")
            for s in prob.sites}
    assert [s.name for s in prob.sites] == ["a", "b", "c"]
    want = len(opts["a"]) + len(opts["b"]) + 1  # keep is an option of each; c repeats b; + the whole model once
    built = list({id(m): (m, x) for m, x in timer.timed}.values())  # each block is built once, visited every round
    assert len(built) == want == len(lp.table.seconds) + 1 == lp.estimate.timings + 1
    assert len(timer.timed) == want * lat.ROUNDS
    assert [o.cost for o in lp.layers[1]] == [o.cost for o in lp.layers[2]]
    shapes = [(tuple((type(m).__name__, tuple(p.shape)) for m in mod.modules() for p in m.parameters(False)), x)
              for mod, x in built]
    assert len(set(shapes)) == len(shapes)  # no shape built twice


def test_unreachable_targets_say_the_best_reachable_figure(additive):
    _, lp = additive
    best_ms = (lp.overhead + sum(min(o.cost for o in opts) for opts in lp.layers)) * 1e3
    for target in ({"speedup": 500.0}, {"ms": best_ms * 0.9}):
        with pytest.raises(FalconError) as e:
            lat.solve_latency(lp, target)
        text = str(e.value)
        assert "\n" not in text and f"the best reachable is {best_ms:.4g} ms" in text, text
    assert lat.solve_latency(lp, {"ms": best_ms * 1.001}).predicted <= best_ms * 1.001e-3


@pytest.mark.parametrize("target", [{"target_speedup": 0}, {"target_speedup": -2}, {"target_ms": 0},
                                    {"target_ms": -1.0}, {"target_ms": float("nan")}, {}])
def test_zero_negative_and_missing_targets_are_refused_before_anything_is_timed(digits, target):
    timer = AdditiveTimer()
    with pytest.raises(FalconError) as e:
        lat.plan_latency(digits, timer=timer, **target)
    assert "\n" not in str(e.value) and "target" in str(e.value)
    assert timer.timed == []


def test_the_estimate_refuses_a_long_run_before_timing(digits):
    timer = AdditiveTimer()
    with pytest.raises(FalconError, match=r"would take about .* the limit is .*--max-seconds") as e:
        lat.plan_latency(digits, target_speedup=2, timer=timer, max_seconds=0.01)
    assert "\n" not in str(e.value) and timer.timed == []
    ok = lat.latency_problem(digits, timer=timer, max_seconds=600)
    assert 0 < ok.estimate.seconds < 600 and ok.estimate.timings == len(ok.table.seconds)


def test_should_stop_ends_it_between_timings(digits):
    timer, asked = AdditiveTimer(), []

    def should_stop():
        asked.append(1)
        return len(timer.timed) >= 3

    with pytest.raises(lat.Stopped, match="stopped after 3 of"):
        lat.plan_latency(digits, target_speedup=2, timer=timer, should_stop=should_stop)
    assert len(timer.timed) == 3 and len(asked) == 4
    plan = lat.solve_latency(lat.latency_problem(digits, timer=timer), {"speedup": 1.5}).plan.as_dict()
    before = len(timer.timed)
    with pytest.raises(lat.Stopped, match="check of the planned model was stopped after 0 of"):
        lat.check_plan(digits.model, plan, digits.input_size, timer=timer, should_stop=lambda: True)
    assert len(timer.timed) == before


def test_cli_json_and_one_line_errors(monkeypatch, capsys):
    timer = AdditiveTimer()
    monkeypatch.setattr(lat, "bench_timer", lambda threads=None, min_run_time=0.0: timer)
    assert main(["plan", "--model", "digits-vgg", "--target-speedup", "1.5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    lt = d["latency"]
    assert d["metric"] == "latency" and lt["predicted_ms"] <= lt["budget_ms"] * (1 + 1e-9)
    assert lt["measured"]["planned_ms"] == pytest.approx(lt["predicted_ms"])
    assert {"original_ms", "planned_iqr_ms", "load_average", "speedup"} <= set(lt["measured"])
    assert main(["plan", "--model", "digits-vgg", "--target-speedup", "1.5"]) == 0
    assert "predicted" in capsys.readouterr().out
    for argv, words in ((["--target-speedup", "0"], "target"), (["--target-ms", "-1"], "target"),
                        (["--target-ms", "1e-6"], "best reachable"), (["--target-speedup", "2", "--max-seconds", "0.001"],
                                                                     "--max-seconds"),
                        (["--target-speedup", "2", "--data", "cifar10"], "--proxy data")):
        try:
            rc = main(["plan", "--model", "digits-vgg", *argv])
        except SystemExit as e:
            rc = e.code
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("timing: ")]  # progress
        assert rc == 2 and len(err) == 1 and words in err[0], (argv, err)


def test_the_data_proxy_plans_on_the_same_timings(digits):
    timer = AdditiveTimer()
    result = lat.plan_latency(digits, target_speedup=1.5, proxy="data", timer=timer, check=False)
    d = result.as_dict()
    assert d["proxy"] == "data" and d["latency"]["predicted_ms"] <= d["latency"]["budget_ms"] * (1 + 1e-9)
    assert result.check is None and "measured" not in d["latency"]


def test_a_real_timing_on_digits_meets_its_own_prediction(digits):
    """The bench timer for real (few rounds): every block timed once, a positive model time, a plan within its
    predicted budget, and the planned model measured (not asserted close: the machine is shared). The target is
    1×: keeping every layer meets it by construction, so a busy machine cannot make it unreachable."""
    result = lat.plan_latency(digits, target_speedup=1.0, types=("falcon", "standard"), rounds=1,
                              min_run_time=0.005, check_rounds=2, threads=1)
    d = result.as_dict()["latency"]
    assert all(s > 0 for s in result.problem.table.seconds.values()) and d["original_ms"] > 0
    assert d["predicted_ms"] <= d["budget_ms"] * (1 + 1e-9)
    assert d["measured"]["planned_ms"] > 0 and d["threads"] == 1 and "prediction_error" in d

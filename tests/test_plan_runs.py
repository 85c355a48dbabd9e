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


# ----------------------------------------------------------------------------------------------
# an experiment run takes a plan
TINY = ["--limit-train", "96", "--limit-test", "48", "--epochs", "1", "--batch-size", "32", "--threads", "1"]


@pytest.fixture(scope="module")
def plan3(digits):
    plan = plan_model(digits, target_ratio=3).as_dict()
    assert len({c["conv"] for c in plan["layers"]} - {"standard"}) >= 2  # mixed
    return plan


def _macs(module, chw) -> int:
    """Conv and linear MACs and their bias adds (1 per output) of one image, by forward hooks (the ``clean``
    convention, independent of falcon.counting)."""
    total = [0]

    def hook(m, inputs, out):
        bias = out[0].numel() if m.bias is not None else 0
        if isinstance(m, torch.nn.Conv2d):
            total[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] + bias
        else:
            total[0] += m.in_features * m.out_features + bias

    hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        module.eval()(torch.zeros(1, *chw))
    for h in hooks:
        h.remove()
    return total[0]


def test_an_experiment_run_takes_a_plan_and_stores_what_it_counts(digits, plan3, tmp_path, capsys):
    from falcon.experiments import store
    from falcon.planning import apply_plan

    path, db = tmp_path / "plan.json", str(tmp_path / "r.sqlite")
    path.write_text(json.dumps(plan3))
    assert main(["experiment", "--plan", str(path), *TINY, "--no-latency", "--db", db, "--json", "-q"]) == 0
    rec = json.loads(capsys.readouterr().out)
    module, _ = apply_plan(digits.model, plan3, "digits-vgg")
    assert rec["params"] == sum(p.numel() for p in module.parameters()) == plan3["after"]["params"]
    assert rec["macs"] == _macs(module, digits.input_size) == plan3["after"]["macs"]
    assert rec["baseline_params"] == plan3["original"]["params"] and rec["baseline_macs"] == plan3["original"]["macs"]
    assert rec["status"] == "completed" and rec["conv"] == "plan" and rec["rank"] is None and rec["init"] == "svd"
    planned = [(c["layer"], c["conv"], c["hparams"]) for c in plan3["layers"] if c["conv"] != "standard"]
    assert [(x["layer"], x["conv"], x["hparams"]) for x in rec["config"]["plan"]["layers"]] == planned
    assert [(x["layer"], x["conv"]) for x in rec["metrics"]["layers"]] == [p[:2] for p in planned]
    assert rec["metrics"]["plan"]["label"] == "plan (macs 3×)" and len(rec["metrics"]["plan"]["digest"]) == 16

    stored = store.get_run(rec["run_id"], db)  # stored like any run, listed by its label
    assert stored["params"] == rec["params"] and stored["config"]["plan"] == rec["config"]["plan"]
    assert main(["results", "--db", db]) == 0
    assert "plan (macs 3×)" in capsys.readouterr().out
    points = store.accuracy_points(db)
    assert {p["method"] for p in points} == {"standard", "plan (macs 3×)"}
    ours = [p for p in points if p["method"] != "standard"][0]
    assert ours["params_m"] == rec["params"] / 1e6 and ours["top1"] == 100 * rec["finetuned_accuracy"]

    from falcon.experiments.report import runs_frame
    from falcon.views.figures import points_figure
    from falcon.views.tables import accuracy_table

    assert list(runs_frame([stored])["label"]) == ["plan (macs 3×)"]
    import pandas as pd

    table = accuracy_table(pd.DataFrame(columns=store.OWN_RUN_COLUMNS), store.own_runs(db))
    assert "plan (macs 3×)" in set(table["method_label"])
    assert any("plan (macs 3×)" in (t.name or "") for t in points_figure(table, x="macs_m").data)


def test_a_planned_run_is_rebuilt_and_timed(digits, plan3, tmp_path):
    from falcon.experiments import store
    from falcon.experiments.backfill import rebuild_models
    from falcon.experiments.pipeline import ExperimentConfig, run_experiment

    db = tmp_path / "r.sqlite"
    rec = run_experiment(ExperimentConfig(plan=plan3, limit_train=96, limit_test=48, epochs=0, batch_size=32,
                                          latency_rounds=1, latency_min_run_time=0.05), db=db)
    lat = rec["metrics"]["latency"]
    assert lat["status"] == "ok" and lat["converted_ms"] > 0
    built = rebuild_models(store.get_run(rec["run_id"], db))  # `experiment measure` rebuilds it from the config
    assert built["replaced"] == [c["layer"] for c in plan3["layers"] if c["conv"] != "standard"]
    assert sum(p.numel() for p in built["converted"].parameters()) == rec["params"]


@pytest.mark.parametrize("make, extra, words", [
    (None, [], "cannot read the plan"),
    (lambda p: {"format": "x"}, [], "is not a plan"),
    (lambda p: dict(p, model="resnet18"), [], "made for"),
    (lambda p: dict(p, layers=[1]), [], "each layer of a plan"),
    (lambda p: dict(p, layers=[{"layer": "features.0", "conv": "mobilev2", "hparams": {}}]), [], "cannot be fitted"),
    (lambda p: dict(p, layers=[{"layer": "nope", "conv": "falcon", "hparams": {"rank": 1}}]), [], "not a layer"),
    (lambda p: dict(p, layers=[{"layer": "features.0", "conv": "falcon", "hparams": {"rank": "1; rm"}}]), [], "rank"),
    (lambda p: p, ["--conv", "falcon"], "leave out --conv"),
    (lambda p: p, ["--rank", "2"], "leave out --rank"),
    (lambda p: p, ["--sweep"], "leave out --sweep"),
])
def test_a_bad_plan_is_one_line_exit_2(plan3, tmp_path, capsys, make, extra, words):
    path = tmp_path / "plan.json"
    if make is not None:
        path.write_text(json.dumps(make(plan3)))
    db = tmp_path / "r.sqlite"
    assert main(["experiment", "--plan", str(path), *extra, *TINY, "--no-latency", "--db", str(db), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    from falcon.experiments import store

    assert store.list_runs(db) == []

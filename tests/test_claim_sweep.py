"""falcon.experiments.claim (benchmarks/claim_sweep.py): the matched-budget table from run records (no training), and the budget matching."""
import pytest

from falcon.experiments import claim as cs

A = {"budget": "FALCON k=1", "budget_params": 1000}
B = {"budget": "FALCON k=2", "budget_params": 2000}


def rec(conv, hparams, tf, ft, claim=A, status="completed", params=900, seed=0):
    return {"conv": conv, "hparams": hparams, "status": status, "params": params, "macs": 10 * params, "seed": seed,
            "training_free_accuracy": tf, "finetuned_accuracy": ft, "baseline_accuracy": 0.99,
            "metrics": {"claim": claim} if claim else {}}


@pytest.fixture
def records():
    return [
        rec("falcon", {"rank": 1}, 0.10, 0.98, seed=0), rec("falcon", {"rank": 1}, 0.30, 0.96, seed=1),
        rec("falcon", {"rank": 1}, 0.20, 0.97, seed=2),
        rec("cp", {"rank": 35}, 0.50, 0.95), rec("cp", {"rank": 35}, 0.70, 0.99),
        rec("dsconv", {"rank": 1}, 0.28, 0.90),
        rec("falcon", {"rank": 2}, 0.45, 0.985, claim=B, params=1900),
        rec("tucker2", {"rank_in": 26, "rank_out": 26}, 0.60, 0.99, claim=B, params=1950),
        rec("falcon", {"rank": 1}, 0.0, 0.0, status="stopped"),  # not completed: left out
        rec("falcon", {"rank": 1}, 0.0, 0.0, claim=None),  # not from the claim sweep: left out
        rec("mobilev2", {"expansion": 0.5}, 0.10, 0.95, claim={"budget": "paper setting", "budget_params": None}),
    ]


def test_summary_rows_groups_by_budget_and_settings(records):
    rows = cs.summary_rows(records)
    assert [(r["budget"], r["conv"], r["seeds"]) for r in rows] == [
        ("FALCON k=1", "falcon", 3), ("FALCON k=1", "cp", 2), ("FALCON k=1", "dsconv", 1),
        ("FALCON k=2", "falcon", 1), ("FALCON k=2", "tucker2", 1), ("paper setting", "mobilev2", 1)]
    f = rows[0]
    assert (f["training_free_median"], f["training_free_min"], f["training_free_max"]) == pytest.approx((20, 10, 30))
    assert (f["finetuned_median"], f["finetuned_min"], f["finetuned_max"]) == pytest.approx((97, 96, 98))
    cp = rows[1]  # an even count: the median is the mean of the middle two
    assert cp["finetuned_median"] == pytest.approx(97.0) and cp["training_free_median"] == pytest.approx(60.0)
    assert rows[1]["settings"] == "CP R=35" and rows[4]["settings"] == "Tucker-2 R₃=26 R₄=26"
    assert rows[4]["params"] == 1950 and rows[4]["macs"] == 19500


def test_markdown_table_bolds_the_best_per_budget(records):
    table = cs.markdown_table(cs.summary_rows(records)).splitlines()
    assert len(table) == 2 + 6
    falcon1 = next(line for line in table if "FALCON k=1 (1,000) | falcon" in line)
    assert "20.00 [10.00–30.00]" in falcon1 and "97.00 [96.00–98.00]" in falcon1  # tied with cp: both bold
    assert "**97.00 [96.00–98.00]**" in falcon1
    tucker = next(line for line in table if "| tucker2 |" in line)
    assert "**99.00 [99.00–99.00]**" in tucker and "1,950" in tucker
    dsconv = next(line for line in table if "| dsconv |" in line)
    assert "**" not in dsconv
    mobile = next(line for line in table if "| mobilev2 |" in line)
    assert "**" not in mobile and mobile.startswith("| paper setting |")


def test_verdict_gives_the_gap_to_each_family(records):
    lines = cs.verdict(cs.summary_rows(records))
    assert len(lines) == 2
    assert "+7.00 points vs the best depthwise separable" in lines[0]  # 97 - 90 (dsconv)
    assert "+0.00 points vs the best tensor decomposition" in lines[0]  # 97 - 97 (cp)
    assert "-0.50 points vs the best tensor decomposition" in lines[1]  # 98.5 - 99 (tucker2)


def test_csv_round_trips_through_load_summary(records, tmp_path):
    rows = cs.summary_rows(records)
    cs.write_csv(rows, tmp_path / "s.csv")
    back = cs.load_summary(tmp_path / "s.csv")
    assert back == [{k: pytest.approx(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    assert back[-1]["budget_params"] is None and back[0]["params"] == 900
    assert cs.markdown_table(back) == cs.markdown_table(rows)
    assert cs.load_summary(tmp_path / "missing.csv") == []


def test_budget_matching_against_the_counted_conversion():
    """The closed-form estimate equals the params counted on the pipeline's converted model, and the chosen
    rank is the largest at or under the budget."""
    from falcon.experiments.pipeline import ExperimentConfig
    from falcon.experiments.report import planned_cost

    entry, sites, base = cs.model_sites()
    for conv, hp in (("tucker2", {"rank_in": 5, "rank_out": 7}), ("cp", {"rank": 12}), ("spatial", {"rank": 40})):
        counted = planned_cost(ExperimentConfig(conv=conv, hparams=hp, latency=False))["params"]
        assert cs.estimated_cost(entry, sites, base, conv, hp) == counted
    budget = 20_000
    k = cs.rank_for_budget(entry, sites, base, "spatial", budget)
    assert cs.estimated_cost(entry, sites, base, "spatial", {"rank": k}) <= budget
    assert cs.estimated_cost(entry, sites, base, "spatial", {"rank": k + 1}) > budget
    assert cs.rank_for_budget(entry, sites, base, "cp", 10) is None


def _accuracy_page(tmp_path, monkeypatch):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "app"))
    import common
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FALCON_RESULTS_DB", str(tmp_path / "results.sqlite"))
    page = next(p for p in common.PAGES if p.file == "accuracy.py")
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=60)
    at.run()
    at.switch_page(page.path).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_accuracy_page_shows_the_bundled_claim_table(tmp_path, monkeypatch):
    rows = cs.load_summary()
    assert rows, "falcon/data/claim_digits.csv is bundled"
    assert {r["conv"] for r in rows} >= {"falcon", "dsconv", "mobilev2", "shuffle", "tucker2", "cp", "spatial"}
    assert {r["seeds"] for r in rows} == {3}
    at = _accuracy_page(tmp_path, monkeypatch)
    shown = [m.value for m in at.markdown]
    assert cs.markdown_table(rows) in shown
    assert any(cs.verdict(rows)[0] in m for m in shown) and any(cs.CLAIM in m for m in shown)


def test_accuracy_page_without_a_summary_says_how_to_make_one(tmp_path, monkeypatch):
    real = cs.load_summary
    monkeypatch.setattr(cs, "load_summary", lambda path=None: real(tmp_path / "none.csv"))
    at = _accuracy_page(tmp_path, monkeypatch)
    assert any("benchmarks/claim_sweep.py" in i.value for i in at.info)
    assert not any("| budget (params) |" in m.value for m in at.markdown)


# ---------------------------------------------------------------------------------------------- matched MACs
def _counted(conv, hp):
    """The MACs of the model a run of (conv, hp) fine-tunes: converted by the pipeline, counted by falcon.counting."""
    from falcon.experiments.pipeline import ExperimentConfig
    from falcon.experiments.report import planned_cost

    return planned_cost(ExperimentConfig(conv=conv, hparams=hp, latency=False))["macs"]


def test_sweep_plan_at_macs_picks_the_largest_rank_within_the_counted_budget():
    from falcon.convtypes import get_conv_type

    plans = cs.sweep_plan(metric="macs")
    entry, sites, _ = cs.model_sites()
    ranked = [p for p in plans if p["budget_macs"]]
    assert [p["conv"] for p in ranked] == list(cs.RANKED_TYPES) * 3
    assert all("budget_params" not in p for p in plans)
    for r in cs.BUDGET_RANKS:  # the budgets: FALCON k=r's counted MACs
        at = [p for p in ranked if p["budget"] == f"FALCON k={r}"]
        assert {p["budget_macs"] for p in at} == {_counted("falcon", {"rank": r})}
    for p in ranked:
        ct = get_conv_type(p["conv"])
        k = next(iter(p["hparams"].values()))
        assert p["hparams"] == ct.rank_hparams(k)
        assert _counted(p["conv"], p["hparams"]) == p["estimated_macs"] <= p["budget_macs"], p
        top = max(ct.full_rank(s.spec.N, s.spec.M, s.spec.D) for s in sites if s.replaceable)
        assert k == top or _counted(p["conv"], ct.rank_hparams(k + 1)) > p["budget_macs"], p
    assert [(p["conv"], p["budget_macs"]) for p in plans[-2:]] == [("mobilev2", None), ("shuffle", None)]


def test_a_macs_summary_keeps_its_budget_through_table_verdict_and_csv(records, tmp_path):
    for r in records:  # the same runs, tagged as a MACs sweep tags them
        claim = r["metrics"].get("claim")
        if claim:
            r["metrics"]["claim"] = {"budget": claim["budget"], "budget_macs": claim["budget_params"]}
    rows = cs.summary_rows(records)
    assert cs.metric_of(rows) == "macs" and rows[0]["budget_macs"] == 1000 and "budget_params" not in rows[0]
    table = cs.markdown_table(rows)
    assert table.startswith("| budget (MACs) |") and "| FALCON k=2 (2,000) | tucker2 |" in table
    assert "+7.00 points vs the best depthwise separable" in cs.verdict(rows)[0]
    cs.write_csv(rows, tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text().splitlines()[0].startswith("budget,budget_macs,conv,")
    back = cs.load_summary(tmp_path / "m.csv")
    assert back[0]["budget_macs"] == 1000 and back[-1]["budget_macs"] is None
    assert cs.markdown_table(back) == table


def test_an_unknown_budget_metric_says_what_to_choose():
    from falcon.errors import FalconError

    with pytest.raises(FalconError, match="choose one of params, macs"):
        cs.sweep_plan(metric="flops")


@pytest.mark.usefixtures("isolated_app")
def test_accuracy_page_shows_both_matched_tables(tmp_path, monkeypatch):
    tables = {m: cs.load_summary(cs.summary_path(m)) for m in cs.METRICS}
    assert all(tables.values()), "falcon/data/claim_digits.csv and claim_digits_macs.csv are bundled"
    macs = tables["macs"]
    assert {r["seeds"] for r in macs} == {3} and cs.metric_of(macs) == "macs"
    for r in macs:  # every ranked type within its MACs budget (the counted MACs the runs stored)
        assert r["budget_macs"] is None or r["macs"] <= r["budget_macs"], r
    at = _accuracy_page(tmp_path, monkeypatch)
    shown = [m.value for m in at.markdown]
    for rows in tables.values():
        assert cs.markdown_table(rows) in shown
        assert any(cs.verdict(rows)[0] in m for m in shown)


def test_from_db_without_a_sweep_of_that_metric_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    db = tmp_path / "none.sqlite"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "claim_sweep.py"), "--match", "macs", "--from-db",
                        "--db", str(db)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"error: {db} holds no claim sweep matched by macs; run it without --from-db\n"

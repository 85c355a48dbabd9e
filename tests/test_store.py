"""The SQLite results store: rows, listing, CSV export, concurrent writers, plot points."""
from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing

import pytest

from falcon.errors import FalconError
from falcon.experiments import store


def _record(i: int, **kw) -> dict:
    rec = {
        "model": "digits-vgg", "dataset": "digits", "conv": "falcon", "rank": 1 + i % 3, "init": "svd",
        "hparams": {"rank": 1 + i % 3}, "epochs": 3, "lr": 5e-3, "optimizer": "adamw", "seed": i,
        "baseline_accuracy": 0.99, "training_free_accuracy": 0.5, "finetuned_accuracy": 0.98,
        "params": 20_000 + i, "macs": 3_000_000, "baseline_params": 135_674, "baseline_macs": 24_000_000,
        "seconds": 1.5, "device": "CPU", "world_size": 1,
        "config": {"model": "digits-vgg", "seed": i, "nested": {"a": [1, 2]}},
        "metrics": {"history": [{"epoch": 1, "loss": 0.3}]}, "timings": {"total": 1.5},
        "environment": {"torch": "x"},
    }
    rec.update(kw)
    return rec


def test_default_path_env_and_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(store.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store.default_db_path() == tmp_path / "xdg" / "falcon-explorer" / "results.sqlite"
    monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "env.sqlite"))
    assert store.default_db_path() == tmp_path / "env.sqlite"
    assert store.db_path(tmp_path / "x.sqlite") == tmp_path / "x.sqlite"


def test_save_list_get_roundtrip(tmp_path):
    db = tmp_path / "r.sqlite"
    assert store.list_runs(db) == []  # no database yet: nothing, and nothing created
    assert not db.exists()
    ids = [store.save_run(_record(i), db) for i in range(3)]
    assert len(set(ids)) == 3
    runs = store.list_runs(db)
    assert [r["run_id"] for r in runs] == ids
    r = runs[0]
    assert r["config"]["nested"] == {"a": [1, 2]} and r["hparams"] == {"rank": 1}
    assert r["metrics"]["history"][0]["loss"] == 0.3 and r["status"] == "completed"
    assert store.get_run(ids[1], db)["seed"] == 1
    assert len(store.list_runs(db, limit=2)) == 2 and store.list_runs(db, limit=2)[-1]["run_id"] == ids[-1]
    assert store.list_runs(db, dataset="cifar10") == []
    with pytest.raises(FalconError):
        store.get_run("nope", db)
    # unknown keys are kept in metrics; saving an existing run_id replaces the row
    store.save_run({**_record(9), "run_id": ids[0], "extra_number": 7}, db)
    again = store.get_run(ids[0], db)
    assert again["seed"] == 9 and again["metrics"]["extra_number"] == 7
    assert len(store.list_runs(db)) == 3
    assert store.delete_runs([ids[0]], db) == 1 and len(store.list_runs(db)) == 2


def test_journal_marks_and_busy_timeout(tmp_path):
    db = tmp_path / "r.sqlite"
    store.save_run(_record(0), db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # readers need no -wal/-shm files
    conn.execute("PRAGMA journal_mode = WAL")  # as earlier versions left it: switched back on the next write
    conn.close()
    store.save_run(_record(1), db)
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite"]
    with closing(store.open_for_write(db)) as c:
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS
        assert c.execute("PRAGMA application_id").fetchone()[0] == 0x46414C43 == int.from_bytes(b"FALC", "big")
        assert c.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION


def test_export_csv(tmp_path):
    db = tmp_path / "r.sqlite"
    for i in range(4):
        store.save_run(_record(i), db)
    out = tmp_path / "sub" / "runs.csv"
    assert store.export_csv(out, db) == 4
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and rows[0]["model"] == "digits-vgg"
    assert list(rows[0])[: len(store.COLUMNS)] == list(store.COLUMNS)
    assert json.loads(rows[0]["config"])["nested"] == {"a": [1, 2]}


def test_unwritable_location_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FalconError, match="--db"):
        store.save_run(_record(0), blocker / "r.sqlite")


WRITER = textwrap.dedent("""
    import sys
    from falcon.experiments import store
    db, who, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        store.save_run({"model": "m", "dataset": "d", "conv": "falcon", "seed": who * 1000 + i,
                        "config": {"writer": who, "i": i}, "metrics": {"blob": "x" * 2000}}, db)
""")


def test_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "r.sqlite"
    writers, per_writer = 6, 25
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(w), str(per_writer)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(writers)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    runs = store.list_runs(db)
    assert len(runs) == writers * per_writer
    assert len({r["run_id"] for r in runs}) == writers * per_writer
    assert sorted(r["seed"] for r in runs) == sorted(w * 1000 + i for w in range(writers) for i in range(per_writer))


def test_accuracy_points_match_the_paper_columns(tmp_path):
    from falcon.paper import COLUMNS

    db = tmp_path / "r.sqlite"
    store.save_run(_record(0, conv="falcon", rank=1), db)
    store.save_run(_record(1, conv="mobilev2", rank=None, init="random", finetuned_accuracy=0.97), db)
    store.save_run(_record(2, status="stopped", finetuned_accuracy=None), db)
    pts = store.accuracy_points(db)
    assert {p["method"] for p in pts} == {"standard", "falcon", "mobilev2"}  # stopped run left out
    for p in pts:
        assert set(COLUMNS) <= set(p) and p["source"] == "ours"
    falcon = next(p for p in pts if p["method"] == "falcon")
    assert falcon["top1"] == pytest.approx(98.0) and falcon["params_m"] == pytest.approx(0.02)
    assert falcon["rank"] == 1 and falcon["training_free_top1"] == pytest.approx(50.0)
    std = next(p for p in pts if p["method"] == "standard")
    assert std["top1"] == pytest.approx(99.0) and std["params_m"] == pytest.approx(0.135674)
    mob = next(p for p in pts if p["method"] == "mobilev2")
    assert mob["rank"] is None and mob["init"] == "random"
    again = store.save_run(_record(3, conv="falcon", rank=1, finetuned_accuracy=0.985), db)  # same config, newer
    assert len([p for p in store.accuracy_points(db) if p["method"] == "falcon"]) == 2
    (newest,) = [p for p in store.accuracy_points(db, latest=True) if p["method"] == "falcon"]
    assert newest["run_id"] == again and newest["top1"] == pytest.approx(98.5)

    import pandas as pd

    from falcon.views.figures import accuracy_figure
    from falcon.paper import load_paper_results

    fig = accuracy_figure(load_paper_results(), pd.DataFrame(pts))
    assert any("(ours)" in (t.name or "") for t in fig.data)


LATENCY = {"status": "ok", "note": "", "weights": "trained", "device": "cpu", "device_name": "AMD EPYC", "threads": 2,
           "torch_version": "2.x", "runtime": "eager", "runtime_version": "torch 2.x", "batch_size": 1,
           "input_size": [1, 32, 32], "layout": "channels_last", "original_ms": 0.8, "original_iqr_ms": 0.05,
           "converted_ms": 0.4, "converted_iqr_ms": 0.02, "speedup": 2.0}


def test_latency_columns_and_old_rows_without_latency(tmp_path):
    """Runs stored before latency was measured (no metrics["latency"], even no metrics at all) still list and
    plot; a run with one carries it in its point, the baseline point the baseline's."""
    import pandas as pd

    from falcon.paper import load_paper_results
    from falcon.views.figures import points_figure
    from falcon.views.tables import accuracy_table, latency_summary

    db = tmp_path / "r.sqlite"
    old = store.save_run(_record(0, conv="falcon", rank=1), db)  # as an older version stored it
    with sqlite3.connect(db) as conn:  # an even older row: metrics NULL
        conn.execute("INSERT INTO runs (run_id, created_at, status, model, dataset, conv, rank, finetuned_accuracy, "
                     "params, macs, baseline_accuracy, baseline_params) VALUES ('old-1', '2020', 'completed', "
                     "'digits-vgg', 'digits', 'dsconv', 1, 0.9, 18000, 3000000, 0.99, 135674)")
    assert len(store.list_runs(db)) == 2
    ours = store.own_runs(db)
    assert set(store.LATENCY_COLUMNS) <= set(ours.columns) and ours["latency_ms"].isna().all()
    paper = load_paper_results()
    assert len(accuracy_table(paper, ours, x="params_m").query("source == 'ours'")) == 3
    empty = accuracy_table(paper, ours, x="latency_ms")  # nobody has a latency: no point, no error
    assert len(empty) == 0 and latency_summary(empty)["points"] == 0
    points_figure(empty, x="latency_ms", log_x=True, panels=[])
    assert len(accuracy_table(paper, None, x="latency_ms")) == 0  # the thesis reports no latency

    store.update_metrics(old, {"latency": LATENCY}, db)
    run = store.get_run(old, db)
    assert run["metrics"]["latency"]["converted_ms"] == 0.4 and run["metrics"]["history"]  # merged, not replaced
    with pytest.raises(FalconError, match="no run"):
        store.update_metrics("nope", {"latency": LATENCY}, db)
    ours = store.own_runs(db)
    falcon = ours[ours["method"] == "falcon"].iloc[0]
    base = ours[ours["method"] == "standard"].iloc[0]
    assert falcon["latency_ms"] == 0.4 and falcon["latency_speedup"] == 2.0 and falcon["latency_batch"] == 1
    assert falcon["latency_device"] == "cpu (AMD EPYC), 2 threads" and falcon["latency_runtime"] == "eager"
    assert base["latency_ms"] == 0.8 and base["latency_speedup"] == 1.0
    assert pd.isna(ours.loc[ours["method"] == "dsconv", "latency_ms"].item())

    data = accuracy_table(paper, ours, x="latency_ms")
    assert set(data["source"]) == {"ours"} and sorted(data["latency_ms"]) == [0.4, 0.8]
    assert data["pareto"].all()  # faster and less accurate than its baseline: both on the frontier
    summary = latency_summary(data)
    assert summary["devices"] == ["cpu (AMD EPYC), 2 threads"] and summary["runtimes"] == ["eager"]
    assert summary["batches"] == [1] and summary["mixed"] == [] and "batch 1" in summary["caption"]
    fig = points_figure(data, x="latency_ms", log_x=True)
    assert fig.layout.xaxis.title.text.startswith("latency per batch (ms")
    assert sorted(x for t in fig.data if t.name != "Pareto frontier" for x in t.x) == [0.4, 0.8]
    # another run measured elsewhere: the points are mixed
    store.save_run(_record(5, conv="dsconv", rank=2, metrics={"latency": {**LATENCY, "batch_size": 8,
                                                                             "runtime": "onnxruntime"}}), db)
    mixed = latency_summary(accuracy_table(paper, store.own_runs(db), x="latency_ms"))
    assert mixed["mixed"] == ["runtimes", "batch sizes"] and mixed["batches"] == [1, 8]
    # a latency that failed counts as none
    store.update_metrics(old, {"latency": {**LATENCY, "status": "failed", "note": "x"}}, db)
    assert store.own_runs(db).query("method == 'falcon'")["latency_ms"].isna().all()

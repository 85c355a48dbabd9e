"""Results are never lost, never someone else's (#19 item 4): every command that takes --db leaves a database that
is not ours byte-identical, never overwrites a damaged one, refuses directories and devices with one line, checks the
database before any training; CSV and model exports are written whole or not at all and never over the database."""
from __future__ import annotations

import csv
import errno
import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from falcon.cli import main
from falcon.errors import FalconError
from falcon.experiments import store

#: The table every version before the application_id created (git history of falcon/experiments/store.py, d01a055 to
#: 2a082a9), written out here so that the test does not depend on the code it checks.
LEGACY_DDL = """CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, created_at TEXT, status TEXT, sweep_id TEXT, model TEXT, dataset TEXT, conv TEXT,
  rank INTEGER, init TEXT, hparams TEXT, epochs INTEGER, lr REAL, optimizer TEXT, seed INTEGER,
  baseline_accuracy REAL, training_free_accuracy REAL, finetuned_accuracy REAL, params INTEGER, macs INTEGER,
  baseline_params INTEGER, baseline_macs INTEGER, seconds REAL, device TEXT, world_size INTEGER,
  config TEXT, metrics TEXT, timings TEXT, environment TEXT
)"""


def _run(**kw) -> dict:
    return {"model": "digits-vgg", "dataset": "digits", "conv": "falcon", "rank": 1, "finetuned_accuracy": 0.9,
            "params": 20_000, "baseline_accuracy": 0.99, "baseline_params": 135_674, **kw}


def _sqlite(path: Path, *statements: str, wal: bool = False) -> Path:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode = WAL")
        for s in statements:
            conn.execute(s)
    return path


def _foreign_files(tmp: Path) -> dict[str, Path]:
    """SQLite databases that belong to someone else, each in a folder of its own."""
    made = {}
    specs = {
        "other tables": ["CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)", "INSERT INTO notes VALUES (1, 'x')"],
        "wal, other tables": ["CREATE TABLE t (a)", "INSERT INTO t VALUES (42)"],
        # someone else's application_id, even with a table that looks like ours
        "other application_id": [f"PRAGMA application_id = {0x12345678}", LEGACY_DDL],
        # what an older `results --db theirs.sqlite` left behind: our table beside theirs
        "ours added to theirs": ["CREATE TABLE notes (id INTEGER)", LEGACY_DDL, "PRAGMA user_version = 1"],
        "user_version only": ["PRAGMA user_version = 7"],
    }
    for name, statements in specs.items():
        folder = tmp / name.replace(" ", "_").replace(",", "")
        folder.mkdir()
        made[name] = _sqlite(folder / "theirs.sqlite", *statements, wal=name.startswith("wal"))
    return made


def _snapshot(path: Path) -> tuple[bytes, list[str]]:
    return path.read_bytes(), sorted(os.listdir(path.parent))


def _one_line_error(capsys, code: int, *words: str) -> str:
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + out
    for w in words:
        assert w in err, err
    return err


@pytest.fixture
def no_training(monkeypatch):
    """The first step of any run (loading data, the baseline, training) raises a sentinel and counts: where the
    database is refused, the count stays 0."""
    from falcon.experiments import data, pipeline

    calls = []

    def reached(name):
        def fn(*a, **k):
            calls.append(name)
            raise FalconError(f"sentinel: {name} reached")
        return fn

    monkeypatch.setattr(data, "load_dataset", reached("load_dataset"))
    monkeypatch.setattr(pipeline, "build_baseline", reached("build_baseline"))
    monkeypatch.setattr(pipeline, "train", reached("train"))
    return calls


EXPERIMENT = ["experiment", "--conv", "falcon", "--rank", "1", "--epochs", "1", "--no-latency", "--quiet"]


def _commands(db: Path, tmp: Path) -> list[list[str]]:
    """Every command that takes --db (the experiment ones stop at the sentinel where the db is accepted)."""
    return [["results", "--db", str(db)], ["results", "--db", str(db), "--json"],
            ["results", "--db", str(db), "--csv", str(tmp / "out.csv")],
            [*EXPERIMENT, "--db", str(db)], [*EXPERIMENT, "--sweep", "--convs", "falcon", "--db", str(db)],
            ["experiment", "measure", "--db", str(db), "--quiet"]]


def test_foreign_databases_are_byte_identical_after_every_command(tmp_path, capsys, no_training):
    for name, db in _foreign_files(tmp_path).items():
        before = _snapshot(db)
        for argv in _commands(db, tmp_path):
            _one_line_error(capsys, main(argv), "is not a FALCON Explorer results database", "--db")
            assert _snapshot(db) == before, (name, argv)
        for call in (lambda: store.list_runs(db), lambda: store.get_run("x", db), lambda: store.check_writable(db),
                     lambda: store.save_run(_run(), db), lambda: store.update_metrics("x", {}, db),
                     lambda: store.delete_runs(["x"], db), lambda: store.own_runs(db)):
            with pytest.raises(FalconError, match="not a FALCON Explorer results database"):
                call()
            assert _snapshot(db) == before, name
    assert no_training == [] and not (tmp_path / "out.csv").exists()


def _damaged(tmp: Path) -> dict[str, Path]:
    good = tmp / "good.sqlite"
    store.save_run(_run(), good)
    raw = good.read_bytes()
    _sqlite(good, "PRAGMA user_version = 1", wal=True)  # as earlier versions kept it: WAL mode
    wal = good.read_bytes()
    made = {"text": b"run_id,model\n1,digits-vgg\n", "short": b"SQLite format 3\x00" + b"\x00" * 20,
            "garbage after the header": raw[:100] + os.urandom(len(raw) - 100),
            "garbage after a WAL header": wal[:100] + os.urandom(len(wal) - 100),
            "truncated": raw[: len(raw) // 2 + 7], "json": json.dumps({"runs": []}).encode()}
    out = {}
    for name, data in made.items():
        folder = tmp / name.replace(" ", "_")
        folder.mkdir()
        (folder / "r.sqlite").write_bytes(data)
        out[name] = folder / "r.sqlite"
    return out


def test_damaged_and_non_sqlite_files_are_never_overwritten(tmp_path, capsys, no_training):
    for name, db in _damaged(tmp_path).items():
        before = _snapshot(db)
        for argv in _commands(db, tmp_path):
            err = _one_line_error(capsys, main(argv), str(db))
            assert "sentinel" not in err, (name, argv, err)
            assert _snapshot(db) == before, (name, argv)
        with pytest.raises(FalconError):
            store.save_run(_run(), db)
        assert _snapshot(db) == before, name
    assert no_training == []


def test_directories_devices_and_unwritable_places_are_one_line(tmp_path, capsys, no_training):
    places = [tmp_path, Path("/dev/null"), Path("/proc/falcon-results.sqlite"), Path("/proc/falcon/r.sqlite")]
    for db in places:
        _one_line_error(capsys, main([*EXPERIMENT, "--db", str(db)]), str(db))
    for db in places[:2]:  # (the /proc ones do not exist: a read finds no runs there, and measure none to time)
        _one_line_error(capsys, main(["results", "--db", str(db)]), str(db))
        _one_line_error(capsys, main(["experiment", "measure", "--db", str(db)]), str(db))
    assert not Path("/dev/null-journal").exists() and not Path("/dev/null-wal").exists()
    assert no_training == [] and os.listdir(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_folder_and_file(tmp_path, capsys, no_training):
    folder = tmp_path / "ro"
    folder.mkdir()
    ours = folder / "r.sqlite"
    store.save_run(_run(), ours)
    before = _snapshot(ours)
    folder.chmod(0o555)
    ours.chmod(0o444)
    try:
        _one_line_error(capsys, main([*EXPERIMENT, "--db", str(folder / "new.sqlite")]), "new.sqlite")
        _one_line_error(capsys, main([*EXPERIMENT, "--db", str(ours)]), str(ours))
        assert no_training == [] and _snapshot(ours) == before
    finally:
        folder.chmod(0o755)


def test_a_bad_db_is_refused_before_any_training_step(tmp_path, capsys, no_training):
    from falcon.experiments.pipeline import ExperimentConfig, run_experiment
    from falcon.experiments.sweep import SweepRunner, run_sweep

    bad = tmp_path / "a-folder"
    bad.mkdir()
    cfg = ExperimentConfig(conv="falcon", hparams={"rank": 1}, epochs=1, latency=False)
    with pytest.raises(FalconError, match="directory"):
        run_experiment(cfg, db=bad)
    with pytest.raises(FalconError, match="directory"):
        run_sweep([cfg], db=bad)
    runner = SweepRunner([cfg], db=bad).start()  # what the Experiments page starts
    assert runner.wait(60)
    assert runner.status == "failed" and "directory" in runner.error
    assert no_training == []
    # the control: with a good database the same calls reach the first step
    good = tmp_path / "r.sqlite"
    assert main([*EXPERIMENT, "--db", str(good)]) == 2 and "sentinel: load_dataset" in capsys.readouterr().err
    assert main([*EXPERIMENT, "--sweep", "--convs", "falcon", "--db", str(good)]) == 2
    assert no_training == ["load_dataset", "load_dataset"]
    assert store.exists(good) and store.list_runs(good) == []  # made (with our marks) before the run, still empty


def test_reads_create_nothing(tmp_path, capsys):
    db = tmp_path / "sub" / "r.sqlite"
    assert main(["results", "--db", str(db)]) == 0
    out, _ = capsys.readouterr()
    assert out == f"no runs stored yet in {db}\n"
    assert not (tmp_path / "sub").exists()
    assert store.list_runs(db) == [] and not store.exists(db)
    with pytest.raises(FalconError, match="no run"):
        store.get_run("x", db)
    assert store.delete_runs(["x"], db) == 0 and not (tmp_path / "sub").exists()
    # our own database: reading it changes no byte of it
    ours = tmp_path / "ours.sqlite"
    store.save_run(_run(), ours)
    before = ours.read_bytes()
    assert main(["results", "--db", str(ours)]) == 0 and "digits-vgg" in capsys.readouterr().out
    assert ours.read_bytes() == before


def test_empty_file_and_empty_sqlite_database_are_adopted(tmp_path, capsys):
    for db in (tmp_path / "zero.sqlite", _sqlite(tmp_path / "blank.sqlite", "PRAGMA page_size = 4096", "VACUUM")):
        db.touch()
        before = db.read_bytes()
        assert main(["results", "--db", str(db)]) == 0  # a read: "nothing stored yet", the file untouched
        assert capsys.readouterr().out == f"no runs stored yet in {db}\n" and db.read_bytes() == before
        rid = store.save_run(_run(), db)
        assert [r["run_id"] for r in store.list_runs(db)] == [rid]
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA application_id").fetchone()[0] == int.from_bytes(b"FALC", "big")


def test_databases_of_earlier_versions_are_read_as_they_are_and_adopted_on_write(tmp_path):
    db = _sqlite(tmp_path / "old.sqlite", LEGACY_DDL, "PRAGMA user_version = 1",
                 "INSERT INTO runs (run_id, created_at, status, model, dataset, conv, rank, finetuned_accuracy, params, "
                 "baseline_accuracy, baseline_params, metrics) VALUES ('old-1', '2024', 'completed', 'digits-vgg', "
                 "'digits', 'falcon', 2, 0.95, 19000, 0.99, 135674, '{\"history\": []}')", wal=True)
    before = _snapshot(db)
    assert [r["run_id"] for r in store.list_runs(db)] == ["old-1"]  # read-only: not adopted by a read
    assert store.get_run("old-1", db)["rank"] == 2 and _snapshot(db)[0] == before[0]
    store.save_run(_run(run_id="new-1"), db)
    assert [r["run_id"] for r in store.list_runs(db)] == ["old-1", "new-1"]
    with closing(sqlite3.connect(db)) as conn:
        marks = [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version")]
    assert marks == [0x46414C43, store.SCHEMA_VERSION]


def test_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "r.sqlite"
    store.save_run(_run(), db)
    _sqlite(db, f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    before = _snapshot(db)
    for call in (lambda: store.list_runs(db), lambda: store.save_run(_run(), db)):
        with pytest.raises(FalconError, match="newer FALCON Explorer"):
            call()
    assert _snapshot(db) == before


def test_the_save_takes_every_value_validation_lets_through(tmp_path):
    import numpy as np

    db = tmp_path / "r.sqlite"
    rid = store.save_run(_run(seed=2**63 - 1, lr=float("nan"), epochs=np.int64(3), rank=True,
                              metrics={"by_layer": {1: "a", "x": 2}, "big": 2**80}), db)
    r = store.get_run(rid, db)
    assert r["seed"] == 2**63 - 1 and r["lr"] is None and r["epochs"] == 3 and r["rank"] == 1
    assert r["metrics"]["by_layer"] == {"1": "a", "x": 2} and r["metrics"]["big"] == 2**80
    # beyond SQLite's 64-bit integers (the API, past the CLI's bounds): stored, the column as the nearest REAL,
    # the config (JSON) exactly
    rid = store.save_run(_run(seed=2**64 + 1, config={"seed": 2**64 + 1}), db)
    r = store.get_run(rid, db)
    assert r["seed"] == pytest.approx(2.0**64) and r["config"]["seed"] == 2**64 + 1


def test_a_run_the_database_cannot_take_is_written_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(store.tempfile, "tempdir", str(tmp_path))
    db = tmp_path / "r.sqlite"
    store.check_writable(db)

    def broken(*a, **k):
        raise FalconError(f"cannot store the run in the results database {db} (disk I/O error)")

    monkeypatch.setattr(store, "_write", broken)
    with pytest.raises(FalconError, match="the run was written to") as e:
        store.save_run(_run(run_id="r-1", seed=5), db)
    (rescued,) = tmp_path.glob("falcon-unsaved-run-r-1-*.json")
    assert str(rescued) in str(e.value) and json.loads(rescued.read_text())["seed"] == 5


# ---------------------------------------------------------------------------------------------- CSV
def test_csv_is_never_the_database_nor_someone_elses_file(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    store.save_run(_run(), db)
    link = tmp_path / "link.csv"
    link.symlink_to(db)
    for target in (db, link, Path(f"{db}-wal")):
        exists = target.exists()
        before = _snapshot(db)
        _one_line_error(capsys, main(["results", "--db", str(db), "--csv", str(target)]), "results database itself")
        assert _snapshot(db) == before and target.exists() == exists
    theirs = tmp_path / "notes.txt"
    theirs.write_text("my notes\n")
    _one_line_error(capsys, main(["results", "--db", str(db), "--csv", str(theirs)]), "not a CSV of runs")
    assert theirs.read_text() == "my notes\n"
    for target in (tmp_path, Path("/dev/full"), Path("/dev/null")):
        _one_line_error(capsys, main(["results", "--db", str(db), "--csv", str(target)]), str(target))
    assert sorted(os.listdir(tmp_path)) == ["link.csv", "notes.txt", "r.sqlite"]
    # our own CSV is replaced, whole
    out = tmp_path / "runs.csv"
    assert main(["results", "--db", str(db), "--csv", str(out)]) == 0
    store.save_run(_run(seed=9), db)
    assert main(["results", "--db", str(db), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and sorted(r["seed"] for r in rows) == ["", "9"]


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    from falcon import outputs

    db = tmp_path / "r.sqlite"
    store.save_run(_run(), db)
    out = tmp_path / "runs.csv"
    store.export_csv(out, db)
    before = out.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    store.save_run(_run(seed=3), db)
    with pytest.raises(FalconError, match="No space left on device") as e:
        store.export_csv(out, db)
    assert "\n" not in str(e.value) and out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["r.sqlite", "runs.csv"]


# ---------------------------------------------------------------------------------------------- model export
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_to_a_device_or_a_directory_is_one_line(tmp_path, capsys, fmt, monkeypatch):
    import falcon.modelbench

    def never(*a, **k):
        raise AssertionError("the model was prepared for a target that is refused")

    monkeypatch.setattr(falcon.modelbench, "prepare_models", never)
    for target in (Path("/dev/full"), tmp_path, Path("/dev/null")):
        _one_line_error(capsys, main(["export", "--model", "digits-vgg", "--format", fmt, "--output", str(target)]),
                        str(target))
    assert os.listdir(tmp_path) == []


def test_export_write_failure_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from falcon import outputs

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    target = tmp_path / "m.pt"
    code = main(["export", "--model", "digits-vgg", "--format", "torchscript", "--no-evaluate", "--output", str(target)])
    _one_line_error(capsys, code, "No space left on device")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- the app
@pytest.mark.parametrize("page", ["accuracy", "experiments"])
def test_pages_show_a_bad_database_as_an_error(tmp_path, monkeypatch, page):
    import sys

    import streamlit as st
    from conftest import REPO
    from streamlit.testing.v1 import AppTest

    sys.path.insert(0, str(REPO / "app"))
    import common

    path = {p.file.removesuffix(".py"): p.path for p in common.PAGES}[page]
    bad = {"theirs": _foreign_files(tmp_path)["other tables"], "damaged": _damaged(tmp_path)["truncated"]}
    for what, db in bad.items():
        before = _snapshot(db)
        monkeypatch.setenv(store.ENV_VAR, str(db))
        st.cache_data.clear()
        at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=60)
        at.run()
        at.switch_page(path).run()
        assert not at.exception, [e.value for e in at.exception]
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and str(db) in errors[0] and "give another --db" in errors[0], (what, errors)
        assert _snapshot(db) == before
    st.cache_data.clear()

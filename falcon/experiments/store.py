"""The results store: one SQLite database, one row per run.

Where it lives: ``db`` if given, else the environment variable ``FALCON_RESULTS_DB``, else
``$XDG_DATA_HOME/falcon-explorer/results.sqlite`` (``~/.local/share/...`` by default): outside the
repository, so runs survive a fresh checkout and never end up in a commit.

Concurrency: WAL journal, a busy timeout, and every write is one short ``BEGIN IMMEDIATE``
transaction retried on ``database is locked``; several processes (a sweep, a torchrun job, the app)
can write at once and none of their rows is lost (tests/test_store.py).

A row keeps the headline numbers as columns (for listing and plotting) and the whole story as JSON:
``config`` (everything that defines the run), ``metrics`` (per-epoch history, ...), ``timings``
(seconds per phase), ``environment`` (device, versions, host).
"""
from __future__ import annotations

import csv
import json
import os
import random
import sqlite3
import time
import uuid
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from falcon.convtypes import RANKED
from falcon.errors import FalconError

ENV_VAR = "FALCON_RESULTS_DB"
BUSY_TIMEOUT_MS = 30_000
SCHEMA_VERSION = 1

#: Scalar columns of the ``runs`` table, in listing order (JSON columns come after).
COLUMNS: tuple[str, ...] = (
    "run_id", "created_at", "status", "sweep_id", "model", "dataset", "conv", "rank", "init", "hparams",
    "epochs", "lr", "optimizer", "seed", "baseline_accuracy", "training_free_accuracy", "finetuned_accuracy",
    "params", "macs", "baseline_params", "baseline_macs", "seconds", "device", "world_size",
)
JSON_COLUMNS: tuple[str, ...] = ("config", "metrics", "timings", "environment")

_SQL_TYPES = {
    "rank": "INTEGER", "epochs": "INTEGER", "seed": "INTEGER", "params": "INTEGER", "macs": "INTEGER",
    "baseline_params": "INTEGER", "baseline_macs": "INTEGER", "world_size": "INTEGER",
    "lr": "REAL", "baseline_accuracy": "REAL", "training_free_accuracy": "REAL", "finetuned_accuracy": "REAL",
    "seconds": "REAL",
}

_CREATE = (
    "CREATE TABLE IF NOT EXISTS runs (\n  "
    + ",\n  ".join(f"{c} {_SQL_TYPES.get(c, 'TEXT')}" + (" PRIMARY KEY" if c == "run_id" else "") for c in COLUMNS)
    + ",\n  " + ",\n  ".join(f"{c} TEXT" for c in JSON_COLUMNS)
    + "\n)"
)


def default_db_path() -> Path:
    """``$FALCON_RESULTS_DB``, else ``$XDG_DATA_HOME/falcon-explorer/results.sqlite``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "falcon-explorer" / "results.sqlite"


def db_path(db: str | os.PathLike | None = None) -> Path:
    return Path(db).expanduser() if db else default_db_path()


def new_run_id() -> str:
    """Unique across processes and machines, sortable by time: ``20250101-120000-1a2b3c4d``."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except (OSError, sqlite3.Error) as e:
        raise FalconError(f"cannot open the results database {path}: {e}; pass --db PATH or set {ENV_VAR}") from None
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
    conn.execute("PRAGMA synchronous = NORMAL")
    _retry(lambda: conn.execute(_CREATE))
    _retry(lambda: conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}"))
    return conn


def _retry(fn, attempts: int = 50):
    """Run ``fn``; on 'database is locked/busy' wait a little (jittered) and try again."""
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            msg = str(e).lower()
            if ("locked" not in msg and "busy" not in msg) or i == attempts - 1:
                raise
            time.sleep(min(0.05 * (i + 1), 0.5) * (0.5 + random.random()))
    return None


def _jsonable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def save_run(record: dict[str, Any], db: str | os.PathLike | None = None) -> str:
    """Store one run; returns its ``run_id`` (made here if the record has none).

    ``record`` holds any of :data:`COLUMNS` plus the JSON parts :data:`JSON_COLUMNS` (dicts).
    Unknown keys go into ``metrics``. Saving a ``run_id`` that exists replaces that row.
    """
    rec = dict(record)
    rec.setdefault("run_id", new_run_id())
    rec.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="microseconds"))
    rec.setdefault("status", "completed")
    extra = {k: rec.pop(k) for k in list(rec) if k not in COLUMNS and k not in JSON_COLUMNS}
    if extra:
        rec["metrics"] = {**(rec.get("metrics") or {}), **extra}
    if isinstance(rec.get("hparams"), dict):
        rec["hparams"] = _jsonable(rec["hparams"])
    names = list(COLUMNS) + list(JSON_COLUMNS)
    values = [(_jsonable(rec.get(c) or {}) if c in JSON_COLUMNS else rec.get(c)) for c in names]
    sql = f"INSERT OR REPLACE INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    path = db_path(db)
    with closing(_connect(path)) as conn:
        def write():
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(sql, values)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        _retry(write)
    return rec["run_id"]


def update_metrics(run_id: str, patch: dict[str, Any], db: str | os.PathLike | None = None) -> None:
    """Merge ``patch`` into the stored run's ``metrics`` (one transaction: a concurrent writer's row is not lost).

    What :func:`falcon.experiments.latency.measure_stored_runs` uses to add a run's ``latency``."""
    path = db_path(db)
    if not path.exists():
        raise FalconError(f"no run {run_id!r} in {path}")
    with closing(_connect(path)) as conn:
        def write():
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT metrics FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                if row is None:
                    raise FalconError(f"no run {run_id!r} in {path}")
                metrics = {**(json.loads(row["metrics"]) if row["metrics"] else {}), **patch}
                conn.execute("UPDATE runs SET metrics = ? WHERE run_id = ?", (_jsonable(metrics), run_id))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        _retry(write)


def _row_to_dict(row: sqlite3.Row, parse_json: bool) -> dict[str, Any]:
    d = dict(row)
    if parse_json:
        for c in JSON_COLUMNS:
            d[c] = json.loads(d[c]) if d.get(c) else {}
        if d.get("hparams"):
            try:
                d["hparams"] = json.loads(d["hparams"])
            except ValueError:
                pass
    return d


def list_runs(db: str | os.PathLike | None = None, *, dataset: str | None = None, model: str | None = None,
              sweep_id: str | None = None, status: str | None = None, limit: int | None = None,
              parse_json: bool = True) -> list[dict[str, Any]]:
    """Stored runs, oldest first, as dicts (``pd.DataFrame(list_runs())`` works).

    Each dict has the :data:`COLUMNS` (``params``/``macs`` are of the converted model, accuracies are
    fractions in [0, 1]) and, with ``parse_json``, ``config``/``metrics``/``timings``/``environment``
    as dicts. A database that does not exist yet gives ``[]``.
    """
    path = db_path(db)
    if not path.exists():
        return []
    where, args = [], []
    for col, val in (("dataset", dataset), ("model", model), ("sweep_id", sweep_id), ("status", status)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at, rowid"
    with closing(_connect(path)) as conn:
        rows = _retry(lambda: conn.execute(sql, args).fetchall())
    if limit is not None:
        rows = rows[-int(limit):] if limit > 0 else []
    return [_row_to_dict(r, parse_json) for r in rows]


def get_run(run_id: str, db: str | os.PathLike | None = None) -> dict[str, Any]:
    path = db_path(db)
    if path.exists():
        with closing(_connect(path)) as conn:
            row = _retry(lambda: conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone())
        if row is not None:
            return _row_to_dict(row, True)
    raise FalconError(f"no run {run_id!r} in {path}")


def delete_runs(run_ids: Iterable[str], db: str | os.PathLike | None = None) -> int:
    ids = list(run_ids)
    path = db_path(db)
    if not ids or not path.exists():
        return 0
    with closing(_connect(path)) as conn:
        cur = _retry(lambda: conn.execute(f"DELETE FROM runs WHERE run_id IN ({', '.join('?' * len(ids))})", ids))
    return cur.rowcount


def export_csv(path: str | os.PathLike, db: str | os.PathLike | None = None, runs: list[dict] | None = None) -> int:
    """Write the runs (all, or ``runs``) to a CSV file, JSON parts as JSON text; returns the row count."""
    runs = list_runs(db, parse_json=False) if runs is None else runs
    columns = list(COLUMNS) + list(JSON_COLUMNS)
    out = Path(path).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in runs:
                w.writerow({c: (_jsonable(r[c]) if isinstance(r.get(c), (dict, list)) else r.get(c)) for c in columns})
    except OSError as e:
        raise FalconError(f"cannot write {out}: {e}") from None
    return len(runs)


def accuracy_points(db: str | os.PathLike | None = None, runs: list[dict] | None = None,
                    which: str = "finetuned_accuracy", include_baseline: bool = True,
                    latest: bool = False) -> list[dict[str, Any]]:
    """Stored runs in the columns of ``falcon/data/paper_results.csv``, to plot beside the paper's points.

    One point per completed run: ``model``, ``dataset``, ``method`` (conv type), ``rank`` (falcon/dsconv,
    else None), ``top1`` (percent, ``which`` accuracy), ``params_m``, ``macs_m`` (millions), plus
    ``run_id``, ``init``, ``epochs``, ``training_free_top1`` and ``source="ours"``, and the measured latency
    (:data:`LATENCY_COLUMNS`: ``latency_ms``, the converted model's median per batch, the baseline point's the
    baseline's; ``latency_iqr_ms``, ``latency_speedup``, ``latency_device``, ``latency_runtime``,
    ``latency_batch``, ``latency_weights``; None where the run has no measured latency). With
    ``include_baseline``, one ``standard`` point per distinct (model, dataset, baseline) as well.
    With ``latest``, only the most recent run of each (model, dataset, conv, hparams, init, epochs).
    ``pd.DataFrame(accuracy_points())`` is ready for :func:`falcon.figures.accuracy_figure` (``own=``).
    """
    runs = list_runs(db, status="completed") if runs is None else runs
    if latest:
        newest: dict[tuple, dict] = {}
        for r in runs:  # oldest first: later runs overwrite
            hp = r.get("hparams")
            key = (r.get("model"), r.get("dataset"), r.get("conv"), json.dumps(hp, sort_keys=True, default=str),
                   r.get("init"), r.get("epochs"))
            newest.pop(key, None)
            newest[key] = r
        runs = list(newest.values())
    points: list[dict[str, Any]] = []
    baselines: dict[tuple, dict] = {}
    for r in runs:
        acc = r.get(which)
        if acc is None or r.get("params") is None:
            continue
        rank = r.get("rank") if r.get("conv") in RANKED else None
        points.append({
            "model": r["model"], "dataset": r["dataset"], "method": r["conv"], "rank": rank,
            "top1": 100.0 * acc, "top5": None, "params_m": r["params"] / 1e6, "macs_m": (r.get("macs") or 0) / 1e6,
            "table": "ours", "source": "ours", "run_id": r["run_id"], "init": r.get("init"),
            "epochs": r.get("epochs"),
            "training_free_top1": None if r.get("training_free_accuracy") is None else 100.0 * r["training_free_accuracy"],
            **_latency_columns(r, "converted"),
        })
        if include_baseline and r.get("baseline_accuracy") is not None and r.get("baseline_params"):
            key = (r["model"], r["dataset"], round(r["baseline_accuracy"], 6), r["baseline_params"])
            baselines.setdefault(key, {
                "model": r["model"], "dataset": r["dataset"], "method": "standard", "rank": None,
                "top1": 100.0 * r["baseline_accuracy"], "top5": None, "params_m": r["baseline_params"] / 1e6,
                "macs_m": (r.get("baseline_macs") or 0) / 1e6, "table": "ours", "source": "ours",
                "run_id": r["run_id"], "init": None, "epochs": 0, "training_free_top1": None,
                **_latency_columns(None, "original"),
            })
            if baselines[key]["latency_ms"] is None:  # the first of its runs that timed the baseline
                baselines[key].update(_latency_columns(r, "original"))
    return list(baselines.values()) + points


#: The latency columns of :func:`accuracy_points` (and :func:`own_runs`).
LATENCY_COLUMNS = ["latency_ms", "latency_iqr_ms", "latency_speedup", "latency_device", "latency_runtime",
                   "latency_batch", "latency_weights"]


def device_label(latency: dict[str, Any]) -> str:
    """``cpu (AMD EPYC 7B13), 2 threads`` / ``cuda:0 (NVIDIA H200)``: where a latency record was measured."""
    name = latency.get("device_name")
    dev = latency.get("device") or "?"
    text = f"{dev} ({name})" if name else str(dev)
    if str(dev).startswith("cpu") and latency.get("threads"):
        text += f", {latency['threads']} thread{'s' if latency['threads'] != 1 else ''}"
    return text


def _latency_columns(run: dict | None, role: str) -> dict[str, Any]:
    """A run's measured latency (``metrics["latency"]``, status ok) as the point's columns; all None without one."""
    metrics = (run or {}).get("metrics") or {}
    if isinstance(metrics, str):
        try:
            metrics = json.loads(metrics)
        except ValueError:
            metrics = {}
    lat = metrics.get("latency") if isinstance(metrics, dict) else None
    ms = lat.get(f"{role}_ms") if isinstance(lat, dict) and lat.get("status") == "ok" else None
    if ms is None:
        return dict.fromkeys(LATENCY_COLUMNS)
    return {"latency_ms": float(ms), "latency_iqr_ms": lat.get(f"{role}_iqr_ms"),
            "latency_speedup": 1.0 if role == "original" else lat.get("speedup"),
            "latency_device": device_label(lat), "latency_runtime": lat.get("runtime"),
            "latency_batch": lat.get("batch_size"), "latency_weights": lat.get("weights")}


OWN_RUN_COLUMNS = ["model", "dataset", "method", "rank", "top1", "top5", "params_m", "macs_m", "table", "run_id",
                   *LATENCY_COLUMNS]


def own_runs(db: str | os.PathLike | None = None):
    """The project's completed fine-tuning runs as accuracy points, in the paper frame's columns
    (percent, millions; :func:`accuracy_points`), as a DataFrame; empty (with those columns) when there are none."""
    import pandas as pd

    points = accuracy_points(db, latest=True)  # the latest run of each configuration
    if not points:
        return pd.DataFrame(columns=OWN_RUN_COLUMNS)
    df = pd.DataFrame(points)
    df["rank"] = pd.array(df["rank"], dtype="Int64")
    df["latency_ms"] = pd.to_numeric(df["latency_ms"], errors="coerce")  # NaN where a run has none
    df["latency_batch"] = pd.array(df["latency_batch"], dtype="Int64")
    return df

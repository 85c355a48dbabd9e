"""The results store: one SQLite database, one row per run.

Where it lives: ``db`` if given, else the environment variable ``FALCON_RESULTS_DB``, else
``$XDG_DATA_HOME/falcon-explorer/results.sqlite`` (``~/.local/share/...`` by default): outside the
repository, so runs survive a fresh checkout and never end up in a commit.

Concurrency: a busy timeout, and every write is one short ``BEGIN IMMEDIATE`` transaction retried on
``database is locked``; several processes (a sweep, a torchrun job, the app) can write at once and none of
their rows is lost (tests/test_store.py). The journal is SQLite's rollback journal (``DELETE``), not WAL: a
read-only connection to it creates no file (a WAL database needs ``-wal``/``-shm`` files beside it even to be
read); databases made in WAL mode by earlier versions are switched back when next written.

Whose database: ours carry ``PRAGMA application_id`` = :data:`APPLICATION_ID` (b"FALC") and ``user_version`` =
:data:`SCHEMA_VERSION`. Reads open read-only (``mode=ro``) and never create or change anything; a database that
does not exist yet reads as no runs. Writes (:func:`open_for_write`) make a new file, a 0-byte file or an empty
SQLite database ours; adopt a database of an earlier version (application_id 0, exactly our ``runs`` table: the
marks are set); and refuse, leaving the file as it was, anything else: someone else's SQLite database (other
tables, another application_id), a damaged or non-SQLite file, a newer schema, a directory or a device.
:func:`check_writable` is what every command that trains calls first. Tests: tests/test_store_safety.py.

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
import stat
import tempfile
import time
import uuid
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

from falcon.convtypes import RANKED
from falcon.errors import FalconError

ENV_VAR = "FALCON_RESULTS_DB"
BUSY_TIMEOUT_MS = 30_000
#: ``PRAGMA application_id`` of our results databases: b"FALC" as a big-endian 32-bit int (0x46414C43).
APPLICATION_ID = int.from_bytes(b"FALC", "big")
#: ``PRAGMA user_version``: the schema below. Version 1 predates the application_id (those files are adopted).
SCHEMA_VERSION = 1
_MAGIC = b"SQLite format 3\x00"

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
#: (name, declared type, primary-key position) of every column, as ``PRAGMA table_info(runs)`` gives them.
_SCHEMA = [(c, _SQL_TYPES.get(c, "TEXT"), int(c == "run_id")) for c in COLUMNS] + [(c, "TEXT", 0) for c in JSON_COLUMNS]
#: Everything a database of versions before the marks holds: the table and its primary key's index.
_LEGACY_OBJECTS = {("table", "runs"), ("index", "sqlite_autoindex_runs_1")}


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


# ----------------------------------------------------------------------------------------------
# whose database this is: checked before anything is read or written
def _not_ours(path: Path, why: str) -> FalconError:
    return FalconError(f"{path} is not a FALCON Explorer results database ({why}); it was left as it is; "
                       "give another --db")


def _screen(path: Path) -> str:
    """What the file's first 100 bytes say, read without SQLite: ``missing``, ``empty`` (0 bytes), ``ours``
    (our application_id) or ``check`` (SQLite with application_id 0: an empty or older database of ours, or
    someone else's, which only its schema tells). Not a regular file, not SQLite, another application_id:
    a :class:`FalconError`."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise FalconError(f"--db {path} is a directory; give a file, such as {path / 'results.sqlite'}")
        if not stat.S_ISREG(st.st_mode):
            raise FalconError(f"--db {path} is not a regular file (a device, pipe or socket); give a file")
        with open(path, "rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise FalconError(f"cannot read the results database {path} ({e.strerror or e}); give another --db") from None
    if not head:
        return "empty"
    if len(head) < 100 or not head.startswith(_MAGIC):
        raise _not_ours(path, "not a SQLite database")
    app_id = int.from_bytes(head[68:72], "big", signed=True)
    if app_id == APPLICATION_ID:
        return "ours"
    if app_id:
        raise _not_ours(path, f"SQLite application_id {app_id:#x}, ours is {APPLICATION_ID:#x}")
    return "check"


def _kind(conn: sqlite3.Connection, path: Path) -> str:
    """``ours``, ``legacy`` (the exact ``runs`` table of versions before the marks, application_id 0) or ``blank``
    (application_id 0, user_version 0, no schema at all); else a :class:`FalconError`: someone else's database, one
    made by a newer FALCON Explorer, or a damaged one."""
    try:
        app_id, version = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version"))
        objects = {(t, n) for t, n in conn.execute("SELECT type, name FROM sqlite_master")}
        columns = [(c[1], c[2].upper(), c[5]) for c in conn.execute("PRAGMA table_info(runs)")]
    except sqlite3.DatabaseError as e:
        raise FalconError(f"the results database {path} is damaged or not SQLite ({e}); it was left as it is; "
                          "give another --db") from None
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise FalconError(f"{path} was made by a newer FALCON Explorer (schema {version}, this one knows "
                              f"{SCHEMA_VERSION}); upgrade, or give another --db")
        if objects and columns[: len(_SCHEMA)] != _SCHEMA:
            raise FalconError(f"the results database {path} is damaged (its runs table is not ours); it was left "
                              "as it is; give another --db")
        return "ours" if objects else "blank"
    if app_id == 0 and version == 0 and not objects:
        return "blank"
    if app_id == 0 and version in (0, 1) and objects == _LEGACY_OBJECTS and columns == _SCHEMA:
        return "legacy"
    tables = sorted(n for t, n in objects if t == "table")
    why = f"tables {', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}" if tables else \
        f"application_id {app_id}, user_version {version}"
    raise _not_ours(path, why)


def _uri(path: Path, mode: str, immutable: bool = False) -> str:
    return f"file:{quote(str(path.absolute()))}?mode={mode}" + ("&immutable=1" if immutable else "")


def _sqlite_error(path: Path, e: sqlite3.Error, doing: str = "open") -> FalconError:
    return FalconError(f"cannot {doing} the results database {path} ({e}); give another --db or set {ENV_VAR}")


def _connect(path: Path, mode: str, immutable: bool = False) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(_uri(path, mode, immutable), uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None)
    except sqlite3.Error as e:
        raise _sqlite_error(path, e) from None
    conn.row_factory = sqlite3.Row
    return conn


def _look(path: Path) -> str:
    """:func:`_kind` of a file opened read-only and immutable (SQLite creates nothing beside it, even in WAL mode)."""
    with closing(_connect(path, "ro", immutable=True)) as conn:
        return _kind(conn, path)


def _needs_look(path: Path, first: str) -> bool:
    """Whether the file must pass :func:`_look` before SQLite opens it normally: application_id 0 (someone else's
    until its schema says otherwise), or WAL mode with no ``-wal`` beside it (a normal open would create one)."""
    if first == "check":
        return True
    if first != "ours" or Path(f"{path}-wal").exists():
        return False
    with open(path, "rb") as f:
        return f.read(20)[18:20] == b"\x02\x02"


def open_for_read(db: str | os.PathLike | None = None) -> sqlite3.Connection | None:
    """A read-only connection (``mode=ro``) to our results database, or None where there is none yet (no file, an
    empty file, an empty SQLite database). Nothing is created or changed; someone else's database, a damaged one,
    a directory or a device: a :class:`FalconError`."""
    path = db_path(db)
    first = _screen(path)
    if first in ("missing", "empty") or (_needs_look(path, first) and _look(path) == "blank"):
        return None
    conn = _connect(path, "ro")
    try:
        kind = _kind(conn, path)
    except BaseException:
        conn.close()
        raise
    if kind == "blank":
        conn.close()
        return None
    return conn


def exists(db: str | os.PathLike | None = None) -> bool:
    """Whether ``db`` holds our results database (read-only, as :func:`open_for_read`; someone else's: an error)."""
    conn = open_for_read(db)
    if conn is not None:
        conn.close()
    return conn is not None


def open_for_write(db: str | os.PathLike | None = None) -> sqlite3.Connection:
    """A read-write connection to our results database (rollback journal, busy timeout), made with our marks
    (``PRAGMA application_id`` = :data:`APPLICATION_ID`, ``user_version`` = :data:`SCHEMA_VERSION`) where there was
    none (no file, a 0-byte file, an empty SQLite database); an older database of this project (the exact ``runs``
    table, application_id 0) is adopted: the marks are set. Someone else's database, a damaged one, a newer
    schema, a directory or a device: a :class:`FalconError`, and the file is left as it was."""
    path = db_path(db)
    first = _screen(path)
    if _needs_look(path, first):
        _look(path)  # someone else's, or a damaged one, is refused before SQLite opens it for writing
    if first == "missing":
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FalconError(f"cannot create the results database {path} ({e.strerror or e}); give another --db "
                              f"or set {ENV_VAR}") from None
    conn = _connect(path, "rwc" if first == "missing" else "rw")
    try:
        _retry(lambda: _transaction(conn, lambda: _mark(conn, path)))
        _leave_wal(conn)
    except sqlite3.Error as e:
        conn.close()
        raise _sqlite_error(path, e, "write") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _leave_wal(conn: sqlite3.Connection) -> None:
    """An earlier version's WAL database back to the rollback journal, when no other process has it open now
    (else it stays WAL until a later write: both work)."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        return
    conn.execute("PRAGMA busy_timeout = 1000")
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.OperationalError:
        pass
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _mark(conn: sqlite3.Connection, path: Path) -> None:
    """Inside a write transaction: what :func:`_kind` says, and our marks and table where they are missing."""
    kind = _kind(conn, path)
    if kind != "ours":
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if kind == "blank":
        conn.execute(_CREATE)


def _transaction(conn: sqlite3.Connection, body):
    """``body()`` in one ``BEGIN IMMEDIATE`` transaction: committed, or rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


def check_writable(db: str | os.PathLike | None = None) -> Path:
    """What the experiment command, a sweep and a run call before any training: the database is opened for writing
    (:func:`open_for_write`: made, adopted or refused), passes SQLite's ``quick_check``, and a transaction is
    committed to it (``user_version`` written again: nothing changes). Returns its path; a :class:`FalconError`
    saying what to change otherwise."""
    path = db_path(db)
    with closing(open_for_write(path)) as conn:
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise FalconError(f"the results database {path} is damaged ({'; '.join(problems)}); it was left as "
                                  "it is; give another --db")
            _retry(lambda: _transaction(conn, lambda: conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")))
        except sqlite3.Error as e:
            raise _sqlite_error(path, e, "write") from None
    return path


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
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):  # keys that are not strings, or of mixed types: as strings
        return json.dumps(_str_keys(value), sort_keys=True, default=str)


def _str_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _str_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_str_keys(v) for v in value]
    return value


def _sql_value(value: Any) -> Any:
    """A value SQLite can bind, whatever validation let through: an integer beyond 64 bits as its decimal text
    (an INTEGER column keeps it as the nearest REAL; the JSON ``config`` keeps it exactly), a numpy/torch scalar as
    a number, anything else that is not a number or text as JSON text."""
    if value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return int(value) if -2**63 <= value < 2**63 else str(value)
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        try:
            return _sql_value(value.item())
        except (TypeError, ValueError):
            pass
    return _jsonable(value)


def _write(db, what: str, body) -> Any:
    """``body(conn, path)`` in one write transaction on :func:`open_for_write`'s connection, retried while
    another process holds the lock; a SQLite error (disk full, a damaged page) as one :class:`FalconError` line."""
    path = db_path(db)
    with closing(open_for_write(path)) as conn:
        try:
            return _retry(lambda: _transaction(conn, lambda: body(conn, path)))
        except sqlite3.Error as e:
            raise FalconError(f"cannot {what} in the results database {path} ({e}); nothing was changed") from None


def save_run(record: dict[str, Any], db: str | os.PathLike | None = None) -> str:
    """Store one run; returns its ``run_id`` (made here if the record has none).

    ``record`` holds any of :data:`COLUMNS` plus the JSON parts :data:`JSON_COLUMNS` (dicts).
    Unknown keys go into ``metrics``. Saving a ``run_id`` that exists replaces that row. When the database
    cannot take it (removed, disk full, ...), the record is written as JSON to a file in the temporary
    folder, and the :class:`FalconError` names that file: a finished run is never lost.
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
    values = [(_jsonable(rec.get(c) or {}) if c in JSON_COLUMNS else _sql_value(rec.get(c))) for c in names]
    sql = f"INSERT OR REPLACE INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    try:
        _write(db, "store the run", lambda conn, path: conn.execute(sql, values))
    except FalconError as e:
        raise FalconError(f"{e}; {_rescue(rec)}") from None
    return rec["run_id"]


def _rescue(rec: dict[str, Any]) -> str:
    """The record as JSON in the temporary folder, for a run the database could not take; what to tell the user."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"falcon-unsaved-run-{rec['run_id']}-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_jsonable(rec))
    except OSError as e:
        return f"the run could not be written elsewhere either ({e.strerror or e})"
    return f"the run was written to {name}"


def update_metrics(run_id: str, patch: dict[str, Any], db: str | os.PathLike | None = None) -> None:
    """Merge ``patch`` into the stored run's ``metrics`` (one transaction: a concurrent writer's row is not lost).

    What :func:`falcon.experiments.backfill.measure_stored_runs` uses to add a run's ``latency``."""
    if _screen(db_path(db)) in ("missing", "empty"):
        raise FalconError(f"no run {run_id!r} in {db_path(db)}")

    def body(conn, path):
        row = conn.execute("SELECT metrics FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise FalconError(f"no run {run_id!r} in {path}")
        metrics = {**_json_dict(row["metrics"]), **patch}
        conn.execute("UPDATE runs SET metrics = ? WHERE run_id = ?", (_jsonable(metrics), run_id))

    _write(db, f"update run {run_id!r}", body)


def _json_dict(text: str | None) -> dict[str, Any]:
    """A JSON column as a dict; {} where it is empty or not a JSON object."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _row_to_dict(row: sqlite3.Row, parse_json: bool) -> dict[str, Any]:
    d = dict(row)
    if parse_json:
        for c in JSON_COLUMNS:
            d[c] = _json_dict(d.get(c))
        if d.get("hparams"):
            try:
                d["hparams"] = json.loads(d["hparams"])
            except ValueError:
                pass
    return d


def _read(db, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
    """Rows of ``sql`` from :func:`open_for_read` (read-only; no database yet: no rows)."""
    path = db_path(db)
    conn = open_for_read(path)
    if conn is None:
        return []
    with closing(conn):
        try:
            return _retry(lambda: conn.execute(sql, list(args)).fetchall())
        except sqlite3.Error as e:
            raise FalconError(f"cannot read the results database {path} ({e}); give another --db") from None


def list_runs(db: str | os.PathLike | None = None, *, dataset: str | None = None, model: str | None = None,
              sweep_id: str | None = None, status: str | None = None, limit: int | None = None,
              parse_json: bool = True) -> list[dict[str, Any]]:
    """Stored runs, oldest first, as dicts (``pd.DataFrame(list_runs())`` works).

    Each dict has the :data:`COLUMNS` (``params``/``macs`` are of the converted model, accuracies are
    fractions in [0, 1]) and, with ``parse_json``, ``config``/``metrics``/``timings``/``environment``
    as dicts. A database that does not exist yet gives ``[]`` (and is not created: reads are read-only).
    """
    where, args = [], []
    for col, val in (("dataset", dataset), ("model", model), ("sweep_id", sweep_id), ("status", status)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at, rowid"
    rows = _read(db, sql, args)
    if limit is not None:
        rows = rows[-int(limit):] if limit > 0 else []
    return [_row_to_dict(r, parse_json) for r in rows]


def get_run(run_id: str, db: str | os.PathLike | None = None) -> dict[str, Any]:
    rows = _read(db, "SELECT * FROM runs WHERE run_id = ?", (run_id,))
    if not rows:
        raise FalconError(f"no run {run_id!r} in {db_path(db)}")
    return _row_to_dict(rows[0], True)


def delete_runs(run_ids: Iterable[str], db: str | os.PathLike | None = None) -> int:
    ids = list(run_ids)
    if not ids or _screen(db_path(db)) in ("missing", "empty"):
        return 0
    sql = f"DELETE FROM runs WHERE run_id IN ({', '.join('?' * len(ids))})"
    return _write(db, "delete runs", lambda conn, path: conn.execute(sql, ids).rowcount)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _csv_header() -> str:
    return ",".join(list(COLUMNS) + list(JSON_COLUMNS))


def check_csv_target(path: str | os.PathLike, db: str | os.PathLike | None = None) -> Path:
    """Where :func:`export_csv` may write: not the results database (nor its -wal/-shm/-journal), not a directory
    or device, and not an existing file other than a CSV of runs written here; else a :class:`FalconError`."""
    from falcon.outputs import check_target

    out = check_target(path, "--csv")
    base = db_path(db)
    if any(_same_file(out, Path(f"{base}{side}")) for side in ("", "-wal", "-shm", "-journal")):
        raise FalconError(f"--csv {out} is the results database itself; give another file, such as runs.csv")
    if out.exists() and out.stat().st_size:
        try:
            with open(out, encoding="utf-8", newline="") as f:
                first = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            first = None
        if first != _csv_header():
            raise FalconError(f"--csv {out} exists and is not a CSV of runs written by FALCON Explorer; it was left "
                              "as it is; give a new file name (or remove it)")
    return out


def export_csv(path: str | os.PathLike, db: str | os.PathLike | None = None, runs: list[dict] | None = None) -> int:
    """Write the runs (all, or ``runs``) to a CSV file, JSON parts as JSON text; returns the row count.

    The target is checked first (:func:`check_csv_target`: never the database, never a file not ours) and written
    whole or not at all (a temporary file beside it, renamed into place: :func:`falcon.outputs.replacing`)."""
    from falcon.outputs import replacing

    out = check_csv_target(path, db)
    runs = list_runs(db, parse_json=False) if runs is None else runs
    columns = list(COLUMNS) + list(JSON_COLUMNS)
    with replacing(out, "--csv", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in runs:
            w.writerow({c: (_jsonable(r[c]) if isinstance(r.get(c), (dict, list)) else r.get(c)) for c in columns})
    return len(runs)


def accuracy_points(db: str | os.PathLike | None = None, runs: list[dict] | None = None,
                    which: str = "finetuned_accuracy", include_baseline: bool = True,
                    latest: bool = False) -> list[dict[str, Any]]:
    """Stored runs in the columns of ``falcon/data/paper_results.csv``, to plot beside the paper's points.

    One point per completed run: ``model``, ``dataset``, ``method`` (conv type; a planned run's label such as
    ``plan (macs 4×)``, :func:`falcon.experiments.plans.method_of`), ``rank`` (falcon/dsconv,
    else None), ``top1`` (percent, ``which`` accuracy), ``params_m``, ``macs_m`` (millions), plus
    ``run_id``, ``init``, ``epochs``, ``training_free_top1`` and ``source="ours"``, and the measured latency
    (:data:`LATENCY_COLUMNS`: ``latency_ms``, the converted model's median per batch, the baseline point's the
    baseline's; ``latency_iqr_ms``, ``latency_speedup``, ``latency_device``, ``latency_runtime``,
    ``latency_batch``, ``latency_weights``; None where the run has no measured latency). With
    ``include_baseline``, one ``standard`` point per distinct (model, dataset, baseline) as well.
    With ``latest``, only the most recent run of each (model, dataset, conv, hparams or plan, init, epochs).
    ``pd.DataFrame(accuracy_points())`` is ready for :func:`falcon.figures.accuracy_figure` (``own=``).
    """
    from falcon.experiments.plans import latest_key, method_of

    runs = list_runs(db, status="completed") if runs is None else runs
    if latest:
        newest: dict[tuple, dict] = {}
        for r in runs:  # oldest first: later runs overwrite
            key = (r.get("model"), r.get("dataset"), r.get("conv"), latest_key(r), r.get("init"), r.get("epochs"))
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
            "model": r["model"], "dataset": r["dataset"], "method": method_of(r), "rank": rank,
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


def own_runs(db: str | os.PathLike | None = None, hide_sweep: str | None = None):
    """The project's completed fine-tuning runs as accuracy points, in the paper frame's columns
    (percent, millions; :func:`accuracy_points`), as a DataFrame; empty (with those columns) when there are none.
    ``hide_sweep``: leave out the runs of that sweep (one still running in another session: its runs are its own
    until it ends)."""
    import pandas as pd

    runs = [r for r in list_runs(db, status="completed") if hide_sweep is None or r.get("sweep_id") != hide_sweep]
    points = accuracy_points(runs=runs, latest=True)  # the latest run of each configuration
    if not points:
        return pd.DataFrame(columns=OWN_RUN_COLUMNS)
    df = pd.DataFrame(points)
    df["rank"] = pd.array(df["rank"], dtype="Int64")
    df["latency_ms"] = pd.to_numeric(df["latency_ms"], errors="coerce")  # NaN where a run has none
    df["latency_batch"] = pd.array(df["latency_batch"], dtype="Int64")
    return df

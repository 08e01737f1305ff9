"""The results history: every finished run of every suite, in one SQLite file (``<store>/history.db``).

The JSON store (bench.store) stays canonical: records are written atomically by the workers, and a
run manifest lists each trial's outcome. But ``records/<key>.json`` holds only the *latest* record of
a computation (``bench run --force`` overwrites it), so the history of nightly re-runs lives here:
the driver appends each finished run (``append_run``, called once at the end of
``bench.runner._finish_manifest``), with every seed's metrics, timings, memory, provenance and the
full record JSON.

Safety: WAL journal (readers never block the writer), ``busy_timeout`` so concurrent writers (several
drivers, or Ray workers if anyone calls this from them) wait instead of failing, and one
``BEGIN IMMEDIATE`` transaction per run: a crash mid-append rolls back to the previous state, and a
run is either fully in the database or not at all. Appending the same run again replaces it
(idempotent), so :func:`sync` can import every ``runs/*.json`` manifest that is missing or changed
and the JSON layer and the database never disagree.

Schema::

    runs(run_id PK, suite, started_at, finished_at, status, mode, code_version, git_commit, git_dirty,
         suite_path, n_trials, n_ok, n_failed, manifest_json, appended_at)
    results(run_id, key, method, variant, dataset, seed, status, error, acc, nmi, ari, wall_s, fit_s,
            peak_rss_mb, peak_gpu_mem_mb, device, config_hash, protocol_hash, config_json, protocol_json,
            data_md5, code_version, hostname, cpu, gpu, torch, python, reused_from, source, record_json,
            PRIMARY KEY (run_id, key))

``source`` is "record" when the row comes from the record file of that run, "manifest" when the
record was since overwritten by a later run and only the manifest's metrics were available (rebuild).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.context import stable_hash
from bench.errors import BenchError
from bench.records import ResultRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, suite TEXT, started_at TEXT, finished_at TEXT, status TEXT, mode TEXT,
    code_version TEXT, git_commit TEXT, git_dirty INTEGER, suite_path TEXT, n_trials INTEGER, n_ok INTEGER,
    n_failed INTEGER, manifest_json TEXT, appended_at TEXT);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, key TEXT NOT NULL, method TEXT,
    variant TEXT, dataset TEXT, seed INTEGER, status TEXT, error TEXT, acc REAL, nmi REAL, ari REAL,
    wall_s REAL, fit_s REAL, peak_rss_mb REAL, peak_gpu_mem_mb REAL, device TEXT, config_hash TEXT,
    protocol_hash TEXT, config_json TEXT, protocol_json TEXT, data_md5 TEXT, code_version TEXT, hostname TEXT,
    cpu TEXT, gpu TEXT, torch TEXT, python TEXT, reused_from TEXT, source TEXT, record_json TEXT,
    PRIMARY KEY (run_id, key));
CREATE INDEX IF NOT EXISTS runs_suite ON runs(suite, started_at);
CREATE INDEX IF NOT EXISTS results_group ON results(method, variant, dataset);
"""

RESULT_COLS = ("run_id", "key", "method", "variant", "dataset", "seed", "status", "error", "acc", "nmi", "ari",
               "wall_s", "fit_s", "peak_rss_mb", "peak_gpu_mem_mb", "device", "config_hash", "protocol_hash",
               "config_json", "protocol_json", "data_md5", "code_version", "hostname", "cpu", "gpu", "torch",
               "python", "reused_from", "source", "record_json")


def default_db_path(store) -> Path:
    return Path(store.root) / "history.db"


def connect(path: str | Path, timeout_s: float = 60.0) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None)  # we issue BEGIN ourselves
    con.row_factory = sqlite3.Row
    con.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":  # e.g. a network filesystem without shared memory
        con.execute("PRAGMA journal_mode = DELETE")
    con.execute("PRAGMA synchronous = FULL")
    con.execute("PRAGMA foreign_keys = ON")
    for attempt in range(20):
        try:
            con.executescript(SCHEMA)
            break
        except sqlite3.OperationalError as exc:  # another process creating the schema at the same moment
            if "locked" not in str(exc) or attempt == 19:
                raise
            time.sleep(0.05 * (attempt + 1))
    return con


def _result_row(run_id: str, rec: ResultRecord, entry: dict[str, Any], source: str) -> tuple:
    env, tim, res = rec.env or {}, rec.timings or {}, rec.resources or {}
    m = rec.metrics or {}
    return (run_id, rec.key, rec.method, rec.variant, rec.dataset, rec.seed, rec.status, rec.error,
            m.get("acc"), m.get("nmi"), m.get("ari"), tim.get("wall_s"), tim.get("fit_s"), res.get("peak_rss_mb"),
            res.get("peak_gpu_mem_mb"), res.get("device"), stable_hash(rec.config, 12), stable_hash(rec.protocol, 12),
            json.dumps(rec.config, sort_keys=True, default=str), json.dumps(rec.protocol, sort_keys=True, default=str),
            rec.data_md5, env.get("code_version"), env.get("hostname"), env.get("cpu"), env.get("gpu"),
            env.get("torch"), env.get("python"), entry.get("reused_from") or (rec.run_id if entry.get("status") ==
                                                                              "reused" else None),
            source, rec.to_json())


def _records_of(store, manifest: dict[str, Any]) -> list[tuple[ResultRecord, dict[str, Any], str]]:
    """The run's records, via ``store.run_records``. A record file that a later run has overwritten
    (same key, other run_id, not a reuse) is replaced by this run's own manifest entry (its metrics and
    status as of this run)."""
    out = []
    entries = manifest.get("trials", [])
    for rec, entry in zip(store.run_records(manifest), entries, strict=False):
        reused = entry.get("status") == "reused" or bool(entry.get("reused_from"))
        if rec.run_id in (None, manifest.get("run_id")) or reused:
            out.append((rec, entry, "record"))
            continue
        status = entry.get("status") if entry.get("status") in ("ok", "failed", "interrupted") else "interrupted"
        own = rec.model_copy(update={"run_id": manifest.get("run_id"), "status": status,
                                     "metrics": entry.get("metrics") or {}, "error": entry.get("error"),
                                     "timings": {}, "resources": {}, "curve": [],
                                     "cluster_profile": None, "degenerate": None})  # the later run's, not this one's
        out.append((own, entry, "manifest"))
    return out


def records_as_of_run(store, manifest: dict[str, Any]) -> list[ResultRecord]:
    """One run's records as that run left them (a later run's overwrite replaced by this run's own
    manifest entry): what `bench report --run` and `bench audit --run` show."""
    return [rec for rec, _entry, _source in _records_of(store, manifest)]


def append_run(store, manifest: dict[str, Any], db_path: str | Path | None = None) -> int:
    """Add (or replace) one run and all its per-seed results, in one transaction. Returns the row count.
    Single trials (`bench trial`, manifest kind "trial") are not suite runs and stay out (`bench trials`)."""
    if manifest.get("kind") == "trial":
        return 0
    rows = [_result_row(manifest["run_id"], rec, entry, src) for rec, entry, src in _records_of(store, manifest)]
    code = manifest.get("code") or {}
    statuses = [r[6] for r in rows]
    run_row = (manifest["run_id"], manifest.get("suite"), manifest.get("started_at"), manifest.get("finished_at"),
               manifest.get("status"), manifest.get("mode"), code.get("code_version"), code.get("git_commit"),
               None if code.get("git_dirty") is None else int(bool(code.get("git_dirty"))), manifest.get("suite_path"),
               len(rows), statuses.count("ok"), len(rows) - statuses.count("ok"),
               json.dumps(manifest, default=str, sort_keys=True),
               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    con = connect(db_path or default_db_path(store))
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("DELETE FROM results WHERE run_id = ?", (manifest["run_id"],))
            con.execute("INSERT OR REPLACE INTO runs VALUES (" + ",".join("?" * 15) + ")", run_row)
            marks = ",".join("?" * len(RESULT_COLS))
            con.executemany(f"INSERT INTO results ({','.join(RESULT_COLS)}) VALUES ({marks})", rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    return len(rows)


def sync(store, db_path: str | Path | None = None, *, rebuild: bool = False) -> dict[str, int]:
    """Import every finished manifest under ``runs/`` that the database lacks or holds in an older state.

    ``rebuild`` drops the database's contents first (the JSON layer is the source of truth). Runs still
    marked "running" are left out (their driver will append them when they finish)."""
    path = Path(db_path or default_db_path(store))
    try:
        have = _clear_and_list(path, rebuild)
    except sqlite3.DatabaseError as exc:
        if not rebuild or damaged(exc) is None:
            raise
        # a damaged file (flipped bytes, truncated, a folder): DELETE cannot run on it, and `--rebuild` is what every
        # message about it advises; the JSON layer is the truth, so the file is kept aside and built again
        aside = path.with_name(f"{path.name}.damaged-{secrets.token_hex(3)}")
        os.replace(path, aside)
        for extra in ("-wal", "-shm"):
            Path(str(path) + extra).unlink(missing_ok=True)
        logging.getLogger("bench.history").warning("history database %s is damaged (%s); kept aside as %s and "
                                                   "rebuilt from runs/ and records/", path, exc, aside.name)
        have = _clear_and_list(path, rebuild)
    added = 0
    for man in store.runs():
        if man.get("status") == "running" or not man.get("finished_at") or man.get("kind") == "trial":
            continue
        if have.get(man["run_id"]) == (man.get("finished_at"), man.get("status")):
            continue
        try:
            append_run(store, man, path)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a hand-edited manifest (a trial without
            # its key, ...) was a traceback of `bench history` and `bench regress`; it is skipped, and said
            logging.getLogger("bench.history").warning("run %s: its manifest in runs/ is malformed (%s: %s); left out "
                                                       "of the history", man["run_id"], type(exc).__name__, exc)
            continue
        added += 1
    for run_id, why in store.malformed_runs.items():  # left out by store.runs(): said here, as above
        logging.getLogger("bench.history").warning("run %s: its manifest in runs/ is malformed (%s); left out of the "
                                                   "history", run_id, why)
    return {"imported": added, "total": len(have) + added}


def _clear_and_list(path: Path, rebuild: bool) -> dict[str, tuple]:
    con = connect(path)
    try:
        if rebuild:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM results")
            con.execute("DELETE FROM runs")
            con.execute("COMMIT")
        return {r["run_id"]: (r["finished_at"], r["status"])
                for r in con.execute("SELECT run_id, finished_at, status FROM runs")}
    finally:
        con.close()


def damaged(exc: BaseException) -> str | None:
    """Why an sqlite error means the database file is damaged (not merely busy), or None."""
    if not isinstance(exc, sqlite3.DatabaseError) or "locked" in str(exc) or "busy" in str(exc):
        return None
    return str(exc)


def runs(con: sqlite3.Connection, suite: str | None = None) -> list[sqlite3.Row]:
    q = "SELECT * FROM runs" + (" WHERE suite = ?" if suite else "") + " ORDER BY started_at, run_id"
    return list(con.execute(q, (suite,) if suite else ()))


def results(con: sqlite3.Connection, run_ids: list[str]) -> list[sqlite3.Row]:
    if not run_ids:
        return []
    marks = ",".join("?" * len(run_ids))
    return list(con.execute(f"SELECT * FROM results WHERE run_id IN ({marks})", run_ids))


def history_table(store, suite: str | None, db_path: str | Path | None = None, *, rebuild: bool = False) -> str:
    """``bench history SUITE``: one line per stored run (Markdown)."""
    info = sync(store, db_path, rebuild=rebuild)
    con = connect(db_path or default_db_path(store))
    try:
        rows = runs(con, suite)
        lines = [f"History of {'suite ' + repr(suite) if suite else 'all suites'} in "
                 f"{db_path or default_db_path(store)} ({len(rows)} run(s); {info['imported']} imported from "
                 f"runs/ just now)", "",
                 "| run | suite | started (UTC) | status | code | trials | ok | failed | mean ACC by method |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            means = con.execute("SELECT method, variant, dataset, AVG(acc) AS a, COUNT(*) AS n FROM results "
                                "WHERE run_id = ? AND status = 'ok' GROUP BY method, variant, dataset "
                                "ORDER BY method, variant, dataset", (r["run_id"],)).fetchall()
            acc = "; ".join(f"{m['method']}{'' if m['variant'] == 'default' else '[' + m['variant'] + ']'}/"
                            f"{m['dataset']} {100 * m['a']:.1f} (n={m['n']})" for m in means if m["a"] is not None)
            lines.append(f"| {r['run_id']} | {r['suite']} | {r['started_at']} | {r['status']} | {r['code_version']} | "
                         f"{r['n_trials']} | {r['n_ok']} | {r['n_failed']} | {acc or '–'} |")
    finally:
        con.close()
    if not rows:
        which = f"suite {suite!r}" if suite else "any suite"
        raise BenchError(f"no finished run of {which} in {store.root}; run `bench run SUITE.yaml` first")
    return "\n".join(lines)


def append_run_safely(store, manifest: dict[str, Any]) -> None:
    """What the driver calls after writing a run manifest. A failure here (disk full, locked for longer
    than the timeout) is logged, never raised: the JSON manifest is already written and the next
    :func:`sync` (``bench history``, ``bench regress``) imports the run."""
    import logging

    try:
        append_run(store, manifest)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("bench.history").warning("could not append run %s to the history database (%s: %s); "
                                                   "`bench history --rebuild` imports it later",
                                                   manifest.get("run_id"), type(exc).__name__, exc)

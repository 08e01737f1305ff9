"""History database: append from manifests, rebuild, concurrency, crash safety."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from bench import history
from bench.store import ResultStore

FIXTURE = Path(__file__).parent / "fixtures" / "nightly_clean"


def _copy(tmp_path) -> ResultStore:
    shutil.copytree(FIXTURE, tmp_path / "store", ignore=shutil.ignore_patterns("history.db*"))
    return ResultStore(tmp_path / "store")


def test_sync_imports_every_run_and_is_idempotent(tmp_path):
    store = _copy(tmp_path)
    assert history.sync(store)["imported"] == 8
    assert history.sync(store)["imported"] == 0
    con = history.connect(history.default_db_path(store))
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 8
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 80
    row = con.execute("SELECT * FROM results WHERE method='dec' LIMIT 1").fetchone()
    assert row["hostname"] == "synthetic-fixture" and row["code_version"].startswith("fixture-night")
    assert row["data_md5"] and row["config_json"] and '"key"' in row["record_json"] and row["source"] == "record"
    # the DB agrees with the manifests' metrics
    man = store.runs("nightly-fixture")[0]
    t = man["trials"][0]
    got = con.execute("SELECT acc FROM results WHERE run_id=? AND key=?", (man["run_id"], t["key"])).fetchone()[0]
    assert got == t["metrics"]["acc"]
    con.close()
    text = history.history_table(store, "nightly-fixture", rebuild=True)
    assert text.count("| nightly-fixture-") == 8


def test_overwritten_record_falls_back_to_the_manifest(tmp_path):
    store = _copy(tmp_path)
    man = store.runs("nightly-fixture")[0]
    rec = store.get(man["trials"][0]["key"])
    store.put(rec.model_copy(update={"run_id": "a-later-run", "metrics": {"acc": 0.0, "nmi": 0.0, "ari": 0.0}}))
    history.append_run(store, man)
    con = history.connect(history.default_db_path(store))
    row = con.execute("SELECT acc, source FROM results WHERE run_id=? AND key=?",
                      (man["run_id"], rec.key)).fetchone()
    assert row["source"] == "manifest" and row["acc"] == man["trials"][0]["metrics"]["acc"]


def _append_many(root: str, db: str, suffix: str) -> None:
    store = ResultStore(root)
    for man in store.runs("nightly-fixture"):
        history.append_run(store, {**man, "run_id": f"{man['run_id']}-{suffix}"}, db)


def test_concurrent_appends_lose_nothing(tmp_path):
    store = _copy(tmp_path)
    db = str(tmp_path / "h.db")
    ctx = mp.get_context("fork")  # no DB connection is open in the parent
    procs = [ctx.Process(target=_append_many, args=(str(store.root), db, f"p{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 32
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 320
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


CRASH = r"""
import os, sys
sys.path.insert(0, {root!r})
from bench import history
from bench.store import ResultStore
store = ResultStore({store!r})
man = store.runs("nightly-fixture")[-1]
con = history.connect({db!r})
con.execute("BEGIN IMMEDIATE")
con.execute("INSERT INTO runs (run_id, suite) VALUES ('half-written', 'nightly-fixture')")
con.execute("INSERT INTO results (run_id, key, method) VALUES ('half-written', 'k', 'dec')")
os._exit(9)  # killed mid-transaction, no commit, no rollback
"""


def test_crash_mid_transaction_leaves_db_consistent(tmp_path):
    store = _copy(tmp_path)
    db = tmp_path / "h.db"
    history.sync(store, db)
    root = str(Path(__file__).resolve().parent.parent)
    rc = subprocess.run([sys.executable, "-c", CRASH.format(root=root, store=str(store.root), db=str(db))],
                        env={**os.environ, "PYTHONPATH": root}).returncode
    assert rc == 9
    con = history.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM runs WHERE run_id='half-written'").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 8
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 80
    con.close()
    assert history.sync(store, db)["imported"] == 0  # and appending still works afterwards


def test_bench_run_appends_to_history_and_regress_needs_history(tmp_path, capsys):
    """The driver appends each finished run (bench.runner._finish_manifest -> append_run)."""
    from bench.cli import main

    suite = tmp_path / "tiny.yaml"
    suite.write_text("name: tiny\nseeds: [0, 1]\ndatasets: [digits]\nmethods:\n  - name: kmeans\n"
                     "    config: {n_init: 2}\ndevice: cpu\n")
    store = tmp_path / "store"
    for _ in range(2):
        assert main(["run", str(suite), "--inline", "--force", "--no-report", "--store", str(store)]) == 0
    con = history.connect(store / "history.db")
    assert con.execute("SELECT COUNT(*) FROM runs WHERE suite='tiny'").fetchone()[0] == 2
    rows = con.execute("SELECT * FROM results WHERE status='ok'").fetchall()
    assert len(rows) == 4 and all(r["acc"] is not None and r["wall_s"] is not None for r in rows)
    assert all(r["hostname"] and r["code_version"] and r["data_md5"] for r in rows)
    con.close()
    # --force overwrote records/<key>.json; the database still has the first run's rows, and a rebuild from
    # the manifests keeps both runs
    assert len(list(store.glob("records/*.json"))) == 2
    capsys.readouterr()
    assert main(["history", "tiny", "--rebuild", "--store", str(store)]) == 0
    assert capsys.readouterr().out.count("| tiny-") == 2
    code = main(["regress", "tiny", "--store", str(store), "--out", str(tmp_path / "reg")])
    assert code == 0  # identical seeds on the same code: no drop

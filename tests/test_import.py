"""`bench import`: merging a store written elsewhere (another machine, another GPU session) into this one keeps the
store's promise: a finished record is never replaced by a worse or older one, a record whose bytes changed is not
brought in, the artifacts come with their records, and bad input is one error line with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.cli import main
from bench.store import ResultStore

SUITE = "name: split\nseeds: 2\ndatasets: [digits]\nmethods: [kmeans]\n"


def _run(tmp_path, store: str, *args: str) -> ResultStore:
    s = tmp_path / "s.yaml"
    s.write_text(SUITE)
    assert main(["run", str(s), "--inline", "--no-report", "--store", str(tmp_path / store), *args]) == 0
    return ResultStore(tmp_path / store)


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and "locks" not in p.parts}


def _import_killed(src: ResultStore, dst: ResultStore, kill_after_replace: str, patch: str = ""):
    """``bench import src --store dst`` in a real process that SIGKILLs itself right after an ``os.replace`` in
    bench.store for which the Python expression ``kill_after_replace`` (over ``src``, ``dst``) is true; ``patch``:
    more lines run before the import (they may use ``kill()``)."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "import bench.store as st\n"
        "real = os.replace\n"
        "def kill():\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "def replace(src, dst):\n"
        "    real(src, dst)\n"
        f"    if {kill_after_replace}:\n"
        "        kill()\n"
        "st.os.replace = replace\n"
        f"{patch}"
        "from bench.cli import main\n"
        "sys.exit(main(['import', sys.argv[1], '--store', sys.argv[2]]))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(src.root), str(dst.root)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def test_seeds_run_apart_merge_into_one_report_and_a_second_import_changes_nothing(tmp_path, capsys):
    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "1")
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0
    out = capsys.readouterr().out
    assert "1 new record(s), 0 replacing" in out and "1 run manifest(s) added" in out
    assert sorted(r.seed for r in a.records()) == [0, 1]
    (rec1,) = [r for r in a.records() if r.seed == 1]
    pred = "pred.npy"
    assert np.array_equal(np.load(a.artifact_dir(rec1.key) / pred), np.load(b.artifact_dir(rec1.key) / pred))
    assert main(["report", str(tmp_path / "s.yaml"), "--store", str(a.root), "--out", str(tmp_path / "rep")]) == 0
    assert "| k-means | " in capsys.readouterr().out and "| 2 |" in (tmp_path / "rep/split/table.md").read_text()
    before = _files(a.root)
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0
    assert "0 new record(s), 0 replacing a worse or older one, 0 kept as they were (this store's is better, or as " \
           "good and newer), 1 identical" in capsys.readouterr().out
    assert _files(a.root) == before


def test_an_ok_record_is_never_replaced_by_a_failed_or_an_older_one(tmp_path, capsys):
    a = _run(tmp_path, "a")
    b = ResultStore(tmp_path / "b")
    good = {r.key: r for r in a.records()}
    k0, k1 = sorted(good)
    # the source store holds a failed record at one key and an older ok record at the other
    b.put(good[k0].model_copy(update={"status": "failed", "metrics": {}, "error": "boom", "run_id": "other"}))
    b.put(good[k1].model_copy(update={"timings": {**good[k1].timings, "finished_at": "2000-01-01T00:00:00"},
                                      "metrics": {**good[k1].metrics, "acc": 0.01}, "run_id": "old"}))
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0
    assert "2 kept as they were" in capsys.readouterr().out
    assert a.get(k0).ok and a.get(k0).metrics == good[k0].metrics
    assert a.get(k1).metrics == good[k1].metrics
    # the other way round, the better and newer records do come in
    assert main(["import", str(a.root), "--store", str(b.root)]) == 0
    assert "2 replacing a worse or older one" in capsys.readouterr().out
    assert b.get(k0).ok and b.get(k1).metrics == good[k1].metrics
    assert all((b.artifact_dir(k) / "pred.npy").read_bytes() == (a.artifact_dir(k) / "pred.npy").read_bytes()
               for k in (k0, k1))  # the artifacts came with the records that replaced the worse ones


def test_a_record_whose_bytes_changed_is_not_imported(tmp_path, capsys):
    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "1")
    (path,) = list(b.records_dir.glob("*.json"))
    body = json.loads(path.read_text())
    body["metrics"]["acc"] = 0.99  # a digit changed by hand or by a disk
    path.write_text(json.dumps(body, indent=1))
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 1
    captured = capsys.readouterr()
    assert "0 new record(s)" in captured.out and "1 damaged skipped" in captured.out
    assert f"skipped {path}" in captured.err
    assert sorted(r.seed for r in a.records()) == [0]


def test_bad_sources_are_one_error_line_and_nothing_is_written(tmp_path, capsys):
    a = _run(tmp_path, "a")
    before = _files(a.root)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for src, says in ((tmp_path / "missing", "is not a results store"), (tmp_path / "empty", "is not a results store"),
                      (tmp_path / "file", "is a file, not a folder"), (a.root, "is the store itself")):
        capsys.readouterr()
        assert main(["import", str(src), "--store", str(a.root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert _files(a.root) == before


def test_a_key_that_a_run_is_computing_now_is_left_alone(tmp_path, capsys):
    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "1")
    (key,) = [r.key for r in b.records()]
    capsys.readouterr()
    with a.key_lock(key):  # what a trial of that key in a run on store a holds while it computes
        assert main(["import", str(b.root), "--store", str(a.root)]) == 1
    assert "0 new record(s)" in (out := capsys.readouterr().out) and "1 skipped because a run is computing" in out
    assert a.get(key) is None and not a.artifact_dir(key).exists()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0  # once it is free, the record comes in
    assert a.get(key).ok and (a.artifact_dir(key) / "pred.npy").exists()


def test_a_source_manifest_whose_run_id_climbs_out_of_runs_is_not_written_outside_the_store(tmp_path, capsys):
    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "1")
    (b.runs_dir / "evil.json").write_text(json.dumps({"run_id": "../../escaped", "suite": "split", "trials": []}))
    (b.runs_dir / "abs.json").write_text(json.dumps({"run_id": str(tmp_path / "abs-escaped"), "trials": []}))
    capsys.readouterr()
    main(["import", str(b.root), "--store", str(a.root)])
    assert not (tmp_path / "escaped.json").exists() and not (tmp_path / "abs-escaped.json").exists()
    assert all(p.parent == a.runs_dir for p in a.root.rglob("*.json") if "runs" in p.parts)


def test_a_source_artifact_folder_that_links_outside_is_not_copied_in(tmp_path, capsys):
    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "1")
    (key,) = [r.key for r in b.records()]
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE")
    art = b.artifact_dir(key)
    (art / "link.npy").symlink_to(secret / "id_rsa")  # a link inside the folder, pointing outside the source
    capsys.readouterr()
    main(["import", str(b.root), "--store", str(a.root)])
    assert not any(p.is_symlink() for p in a.root.rglob("*"))
    import shutil

    shutil.rmtree(art)
    art.symlink_to(secret)  # the folder itself a link to outside
    shutil.rmtree(a.artifact_dir(key))
    a.record_path(key).unlink()
    main(["import", str(b.root), "--store", str(a.root)])
    assert not any("PRIVATE" in p.read_text(errors="ignore") for p in a.root.rglob("*") if p.is_file())
    assert not any(p.is_symlink() for p in a.root.rglob("*"))


def test_a_record_a_run_finishes_while_the_import_waits_is_not_overwritten(tmp_path, capsys, monkeypatch):
    a = ResultStore(tmp_path / "a")
    b = _run(tmp_path, "b", "--seeds", "1")
    (rec,) = list(b.records())
    ok_pred = (b.artifact_dir(rec.key) / "pred.npy").read_bytes()
    # the source holds a failed record of the key, with its own artifacts
    failed = rec.model_copy(update={"status": "failed", "metrics": {}, "error": "boom", "run_id": "other"})
    src = ResultStore(tmp_path / "src")
    src.put(failed)
    src.artifact_dir(rec.key).mkdir(parents=True)
    (src.artifact_dir(rec.key) / "pred.npy").write_bytes(b"junk")
    real = ResultStore.key_lock

    def run_finishes_first(self, key):  # a run on store a finishes the key right after the import read a's record
        if self.root == a.root and self.get(key) is None:
            self.artifact_dir(key).mkdir(parents=True, exist_ok=True)
            (self.artifact_dir(key) / "pred.npy").write_bytes(ok_pred)
            self.put(rec)
        return real(self, key)

    monkeypatch.setattr(ResultStore, "key_lock", run_finishes_first)
    main(["import", str(src.root), "--store", str(a.root)])
    assert a.get(rec.key).ok
    assert (a.artifact_dir(rec.key) / "pred.npy").read_bytes() == ok_pred


def test_a_manifest_imported_while_its_run_was_still_running_is_updated_by_a_later_import(tmp_path, capsys):
    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "1")
    (man,) = b.runs()
    # what an import taken while b's run was running brought in: the manifest as of then, from another host
    a.write_run({**man, "status": "running", "finished_at": None, "driver": {"host": "elsewhere", "pid": 1},
                 "trials": [{**t, "status": "pending", "metrics": {}} for t in man["trials"]]})
    capsys.readouterr()
    main(["import", str(b.root), "--store", str(a.root)])
    (now,) = [m for m in a.runs() if m["run_id"] == man["run_id"]]
    assert now["status"] == "finished" and now["trials"] == man["trials"]


def test_a_store_whose_locks_folder_cannot_be_written_is_one_error_line(tmp_path, capsys):
    a = ResultStore(tmp_path / "a")
    b = _run(tmp_path, "b", "--seeds", "1")
    a.records_dir.mkdir(parents=True)
    (a.root / "locks").write_text("")  # (chattr +i locks/ or a read-only mount do the same; root ignores chmod)
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "locks/" in err and err.count("\n") == 1, err
    assert list(a.records()) == []


def test_what_an_import_killed_midway_left_in_artifacts_is_removed_by_the_next_import_of_that_key(tmp_path, capsys):
    a = ResultStore(tmp_path / "a")
    b = _run(tmp_path, "b", "--seeds", "1")
    (key,) = [r.key for r in b.records()]
    for left in (f".import-{key}-0a0b0c", f".replaced-{key}-0d0e0f"):  # a SIGKILL mid-copy / mid-swap leaves these
        (a.root / "artifacts" / left).mkdir(parents=True)
        (a.root / "artifacts" / left / "big.bin").write_bytes(b"x" * 1000)
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0
    assert sorted(p.name for p in (a.root / "artifacts").iterdir()) == [key]


def test_an_import_killed_between_the_artifact_swaps_renames_loses_no_artifacts(tmp_path, capsys):
    """A real SIGKILL right after the swap's first rename (the record's own artifacts moved aside, the new ones not
    yet in): the record in place keeps its artifacts, put back by the next `bench run` or import."""

    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "0")  # the same key, finished later: an import takes it
    (key,) = [r.key for r in a.records()]
    mine, pred = a.get(key), (a.artifact_dir(key) / "pred.npy").read_bytes()
    (b.artifact_dir(key) / "from_b.txt").write_text("b")
    _import_killed(b, a, "os.path.basename(str(dst)).startswith('.replaced-')")
    assert not a.artifact_dir(key).exists() and list((a.root / "artifacts").glob(f".replaced-{key}-*"))
    assert a.get(key).run_id == mine.run_id  # the record is written after the swap: still this store's own
    _run(tmp_path, "a", "--seeds", "0")  # a later run (it reuses the record) puts the artifacts back first
    assert (a.artifact_dir(key) / "pred.npy").read_bytes() == pred
    assert sorted(p.name for p in (a.root / "artifacts").iterdir()) == [key]
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0  # and the import, done again, completes
    assert "0 new record(s), 1 replacing" in capsys.readouterr().out
    assert a.get(key).run_id == b.get(key).run_id and (a.artifact_dir(key) / "from_b.txt").read_text() == "b"
    assert sorted(p.name for p in (a.root / "artifacts").iterdir()) == [key]


def test_a_huge_file_among_the_source_records_is_skipped_unread(tmp_path, capsys, monkeypatch):
    import bench.store as st

    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "1")
    (path,) = list(b.records_dir.glob("*.json"))
    key = path.stem
    with open(path, "r+b") as f:  # sparse: 5 GB on paper, no disk used; read whole it would take 5 GB of memory
        f.truncate(5 * 2**30)
    read = []
    real = st.Path.read_bytes
    monkeypatch.setattr(st.Path, "read_bytes", lambda p: read.append(p.name) or real(p))
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 1
    captured = capsys.readouterr()
    assert "1 damaged skipped" in captured.out and path.name in captured.out + captured.err
    assert path.name not in read and a.get(key) is None


@pytest.mark.parametrize("at", ["swapped-in", "record-write"])
def test_an_import_killed_after_the_swap_before_its_record_is_written_keeps_the_records_own_artifacts(tmp_path, at):
    """A real SIGKILL after the new artifacts were swapped in but before the record that goes with them was written:
    the record in place (this store's) was left with the source's artifacts, and its own were deleted (by the import
    itself, or by the next run that took them for a leftover). The next run puts the record's own back."""

    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "0")
    (key,) = [r.key for r in a.records()]
    mine = a.get(key)
    (a.artifact_dir(key) / "from_a.txt").write_text("a")
    (b.artifact_dir(key) / "from_b.txt").write_text("b")
    if at == "swapped-in":
        _import_killed(b, a, "os.path.basename(str(src)).startswith('.import-')")
    else:  # at the record's write
        _import_killed(b, a, "False", "st.ResultStore.put = lambda self, rec: kill()\n")
    assert a.get(key).run_id == mine.run_id
    _run(tmp_path, "a", "--seeds", "0")
    assert (a.artifact_dir(key) / "from_a.txt").read_text() == "a"
    assert not (a.artifact_dir(key) / "from_b.txt").exists()
    assert sorted(p.name for p in (a.root / "artifacts").iterdir()) == [key]
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0  # done again, the import completes
    assert a.get(key).run_id == b.get(key).run_id and (a.artifact_dir(key) / "from_b.txt").read_text() == "b"
    assert sorted(p.name for p in (a.root / "artifacts").iterdir()) == [key]


def test_a_store_that_stops_taking_writes_at_the_imports_record_is_one_line(tmp_path, capsys, monkeypatch):
    """put raising StoreUnwritable (read-only, disk full) after the swap: putting the record's own artifacts back
    fails too; that must not turn the one line into a traceback (the next import or run puts them back)."""
    import bench.store as st

    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "0")
    (key,) = [r.key for r in a.records()]
    (b.artifact_dir(key) / "from_b.txt").write_text("b")
    real = st.os.replace

    def put(self, rec):
        def read_only(src, dst):
            raise PermissionError(30, "Read-only file system", str(src))
        monkeypatch.setattr(st.os, "replace", read_only)
        raise st.StoreUnwritable.at(self.record_path(rec.key), OSError(30, "Read-only file system"))

    monkeypatch.setattr(st.ResultStore, "put", put)
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 1
    assert capsys.readouterr().err.startswith("error: cannot write")
    monkeypatch.setattr(st.os, "replace", real)
    monkeypatch.undo()
    _run(tmp_path, "a", "--seeds", "0")  # writable again: the next run puts the record's own artifacts back
    assert a.get(key).run_id != b.get(key).run_id and not (a.artifact_dir(key) / "from_b.txt").exists()
    assert sorted(p.name for p in (a.root / "artifacts").iterdir()) == [key]


def test_a_fifo_in_the_sources_artifacts_is_left_out_not_a_traceback(tmp_path, capsys):
    """copytree raised shutil.Error on a named pipe (or a socket, a device) in the source's artifact folder: a
    traceback that stopped the import midway, a copy left behind. Like a link, it is not an artifact this harness
    writes: left out."""
    import os

    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "0")
    (key,) = [r.key for r in b.records()]
    os.mkfifo(b.artifact_dir(key) / "pipe")
    (b.artifact_dir(key) / "from_b.txt").write_text("b")
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0
    assert a.get(key).run_id == b.get(key).run_id and (a.artifact_dir(key) / "from_b.txt").read_text() == "b"
    assert not (a.artifact_dir(key) / "pipe").exists() and not (a.artifact_dir(key) / "pipe").is_symlink()
    assert sorted(p.name for p in (a.root / "artifacts").iterdir()) == [key]


def test_a_file_gone_from_the_source_while_it_is_copied_leaves_the_record_out_not_a_traceback(tmp_path, capsys,
                                                                                               monkeypatch):
    """A run or import writing the source store while it is imported: a file of a record's artifacts listed, then
    gone before it was copied, raised FileNotFoundError from the middle of the import (a traceback). Now that
    record stays out (one warning, exit 1), this store's record and artifacts are as they were, no copy is left."""
    import os

    a = _run(tmp_path, "a", "--seeds", "0")
    b = _run(tmp_path, "b", "--seeds", "0", "--force")
    (key,) = [r.key for r in b.records()]
    victim = b.artifact_dir(key) / "from_b.txt"
    victim.write_text("b")
    before = {k: v for k, v in _files(a.root).items() if k.startswith(("records", "artifacts"))}
    real_scandir = os.scandir

    class ListedThenGone:  # the real listing, then the file goes: the window between copytree's listing and copy
        def __init__(self, path):
            with real_scandir(path) as it:
                self.entries = list(it)
            victim.unlink()

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(os, "scandir", lambda path=".": ListedThenGone(path) if os.fspath(path) == str(
        b.artifact_dir(key)) and victim.exists() else real_scandir(path))
    capsys.readouterr()
    assert main(["import", str(b.root), "--store", str(a.root)]) == 1
    err = capsys.readouterr().err
    assert "changed while it was copied" in err and "its record was not imported" in err and "Traceback" not in err
    assert {k: v for k, v in _files(a.root).items() if k.startswith(("records", "artifacts"))} == before
    assert sorted(p.name for p in (a.root / "artifacts").iterdir()) == [key]


def test_a_key_a_run_is_recomputing_in_the_source_is_not_imported_with_that_runs_artifacts(tmp_path, capsys):
    """A `bench run --force` on the source writes its new computation's files into the key's artifact folder while
    the old record is still in place; an import then copied that folder with the old record: a record whose
    artifacts belong to another computation (real run, real files). The source's key lock is held by that run: the
    import now leaves the key alone (busy) until the run has finished, then brings record and artifacts together."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    suite = tmp_path / "m.yaml"
    suite.write_text("name: marks\nseeds: [0]\ndatasets: [digits]\nmethods:\n  - {name: test_marks_artifacts, "
                     "config: {seconds: 2}}\n")
    b = ResultStore(tmp_path / "b")
    args = ["run", str(suite), "--inline", "--no-report", "--store", str(b.root)]
    assert main(args) == 0
    (old,) = list(b.records())
    marker = b.artifact_dir(old.key) / "attempt.txt"
    assert marker.read_text() == old.info["nonce"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.Popen([sys.executable, "-m", "bench", *args, "--force"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while marker.read_text() == old.info["nonce"]:  # the new computation has begun writing its files
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        a = ResultStore(tmp_path / "a")
        capsys.readouterr()
        assert main(["import", str(b.root), "--store", str(a.root)]) == 1
        assert "1 skipped because a run is computing them now" in capsys.readouterr().out
        assert a.get(old.key) is None and not a.artifact_dir(old.key).exists()
    finally:
        assert run.wait(timeout=60) == 0
    assert main(["import", str(b.root), "--store", str(a.root)]) == 0
    rec = a.get(old.key)
    assert rec.info["nonce"] != old.info["nonce"]  # the new computation's record, with its own files
    assert (a.artifact_dir(rec.key) / "attempt.txt").read_text() == rec.info["nonce"]

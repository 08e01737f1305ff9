"""A hostile user of the store: damaged records and stages, and `bench stages --prune` racing a run.

Each test is what a real attack (tiny digits suites, real `bench run` / `bench stages --prune` processes, real bytes;
see the helper H report of session 6) showed broken, reduced to a fast in-process check."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.context import TrialContext
from bench.method import ClusteringData
from bench.stages import Stage, StageConfig, StageRequest, StageStore, register_stage
from bench.suite import parse_suite


@register_stage
class HostileProbe(Stage):
    """A tensor that depends on the seed; one line per build in ``log``."""

    name = "hostile_probe"
    version = 1

    class Config(StageConfig):
        log: str = ""

    def build(self, data, inputs, ctx):
        with open(self.config.log, "a") as fh:
            fh.write(f"seed={ctx.seed}\n")
        return {"w": torch.randn(4, generator=ctx.rng("probe"))}


def _ctx(root: Path, seed: int, req: StageRequest) -> TrialContext:
    x = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
    ctx = TrialContext(seed=seed, device="cpu", artifact_dir=root / "art" / str(seed), stage_dir=root / "stages",
                       data_md5="md5-h", code_version="c")
    return ctx.bind(ClusteringData("synthetic", x, x, 2, "all", "all", "md5-h"), {"p": req})


def _builds(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("how", ["copied", "linked"])
def test_a_stage_folder_copied_or_linked_over_another_keys_folder_is_not_read(tmp_path, how):
    """Both hashes of a stage folder copied (or symlinked) over another key's folder are right: it passed every
    check, and seed 0's trials trained on seed 1's autoencoder without a word (a real `bench run --force`)."""
    log = tmp_path / "log"
    req = StageRequest("hostile_probe", HostileProbe.Config(log=str(log)))
    w0 = _ctx(tmp_path, 0, req).stage("p")["w"]
    w1 = _ctx(tmp_path, 1, req).stage("p")["w"]
    root = tmp_path / "stages" / "hostile_probe"
    k0, k1 = req.key("md5-h", "all", 0), req.key("md5-h", "all", 1)
    shutil.rmtree(root / k0)
    if how == "copied":
        shutil.copytree(root / k1, root / k0)
    else:
        (root / k0).symlink_to(root / k1)
    got = _ctx(tmp_path, 0, req).stage("p")["w"]
    assert torch.equal(got, w0) and not torch.equal(got, w1)  # seed 0's own stage, rebuilt
    assert _builds(log) == 3 and (root / k0).is_dir() and not (root / k0).is_symlink()
    assert torch.equal(_ctx(tmp_path, 1, req).stage("p")["w"], w1) and _builds(log) == 3  # seed 1's is untouched


@pytest.mark.parametrize("meanwhile", ["removed", "replaced"])
def test_a_stage_changed_between_its_check_and_its_load_is_never_read_unchecked(tmp_path, monkeypatch, meanwhile):
    """The artifact was hashed, then opened again by torch.load: `bench stages --prune` (or a copy) acting in between
    made the trial die of FileNotFoundError, or load bytes nobody checked."""

    log = tmp_path / "log"
    req = StageRequest("hostile_probe", HostileProbe.Config(log=str(log)))
    w0 = _ctx(tmp_path, 0, req).stage("p")["w"]
    _ctx(tmp_path, 1, req).stage("p")
    root = tmp_path / "stages" / "hostile_probe"
    folder, other = root / req.key("md5-h", "all", 0), root / req.key("md5-h", "all", 1)
    real_load = torch.load

    def load(f, *a, **kw):  # what another process does right before the bytes are deserialised
        if meanwhile == "removed":
            shutil.rmtree(folder, ignore_errors=True)
        else:
            shutil.copyfile(other / "artifact.pt", folder / "artifact.pt")
        return real_load(f, *a, **kw)

    monkeypatch.setattr(torch, "load", load)
    got = _ctx(tmp_path, 0, req).stage("p")["w"]
    assert torch.equal(got, w0)  # the bytes that were checked, never another seed's, never a crash


def _digits_suite(tmp_path: Path):
    return parse_suite({"name": "hs", "seeds": [0, 1], "datasets": ["digits"],
                        "methods": [{"name": "kmeans", "config": {"n_init": 1}}]})


def _run(tmp_path: Path):
    from bench.runner import run_suite
    from bench.store import ResultStore

    store = ResultStore(tmp_path / "store")
    man = run_suite(_digits_suite(tmp_path), store=store, data_root=tmp_path, inline=True)
    return store, man


@pytest.mark.parametrize("edit", ["acc-digit", "seed", "copied-over-another"])
def test_a_record_whose_bytes_changed_is_a_clear_skip_never_a_wrong_table(tmp_path, capsys, edit):
    """A digit of ACC flipped in a record file went straight into `bench report`'s table and `bench run` reused it;
    a flipped seed made it another trial's result. Records now carry their sha256: a changed one is skipped, said
    so by every command, and re-run (the damaged file kept aside)."""
    store, man = _run(tmp_path)
    recs = {r.seed: r for r in store.run_records(man)}
    path = store.record_path(recs[0].key)
    text = path.read_text()
    if edit == "acc-digit":
        i = text.index('"acc": 0.') + len('"acc": 0.')
        text = text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:]
    elif edit == "seed":
        text = text.replace('"seed": 0,', '"seed": 1,')
    else:
        text = store.record_path(recs[1].key).read_text()
    path.write_text(text)
    capsys.readouterr()
    assert main(["report", "hs", "--store", str(store.root), "--out", str(tmp_path / "rep")]) == 0
    out, err = capsys.readouterr()
    assert "damaged or unreadable" in err and path.name in err and "1 trial(s) of the grid have no record" in out
    table = (tmp_path / "rep" / "hs" / "table.md").read_text()
    assert f"{100 * recs[1].metrics['acc']:.1f} |" in table  # seed 1 alone: n = 1, its own ACC
    assert main(["stages", "--store", str(store.root)]) == 0 and "damaged" in capsys.readouterr().err
    # `bench run` re-runs the trial instead of reusing the damaged record, and keeps the damaged file aside
    from bench.runner import run_suite

    again = run_suite(_digits_suite(tmp_path), store=store, data_root=tmp_path, inline=True)
    assert [t["status"] for t in again["trials"]] == ["ok", "reused"]
    assert store.get(recs[0].key).metrics == recs[0].metrics  # same numbers as the original (deterministic k-means)
    assert len(list(store.records_dir.glob(".damaged-*"))) == 1
    capsys.readouterr()
    assert main(["report", "hs", "--store", str(store.root), "--out", str(tmp_path / "rep")]) == 0
    assert "damaged" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["folder", "dangling-link"])
def test_a_record_path_that_is_not_a_file_is_set_aside_not_a_traceback(tmp_path, kind):
    """A record path made a folder: the re-run's write raised IsADirectoryError out of `bench run` (a traceback,
    and the run's manifest never finished)."""
    from bench.runner import run_suite

    store, man = _run(tmp_path)
    path = store.record_path(man["trials"][0]["key"])
    path.unlink()
    if kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "nowhere.json")
    again = run_suite(_digits_suite(tmp_path), store=store, data_root=tmp_path, inline=True)
    assert again["status"] == "finished" and [t["status"] for t in again["trials"]] == ["ok", "reused"]
    assert path.is_file() and store.get(path.stem).ok
    assert len(list(store.records_dir.glob(".damaged-*"))) == 1


def test_prune_keeps_a_stage_a_run_built_while_prune_read_the_records(tmp_path, monkeypatch, capsys):
    """`bench stages --prune` read the runs, then the records (seconds, on a store of thousands), then listed the
    stages: a run that started in between and built a stage had it pruned before its trials read it."""
    import bench.cli
    from bench.store import ResultStore, driver_identity

    store = ResultStore(tmp_path / "store")
    store.root.mkdir()
    stages = StageStore(store.stage_dir)
    real = bench.cli._stages_of_unfinished_runs

    def live(st):  # prune has read the runs (none yet); now a run starts and builds its stage
        out = real(st)
        store.write_run({"run_id": "r1", "suite": "s", "started_at": "2026", "status": "running",
                         "driver": driver_identity(), "trials": [], "stages": []})
        stages.save("hostile_probe", "k" * 20, {"w": torch.zeros(1)}, {"seed": 0})
        return out

    monkeypatch.setattr(bench.cli, "_stages_of_unfinished_runs", live)
    assert main(["stages", "--store", str(store.root), "--prune"]) == 0
    assert stages.exists("hostile_probe", "k" * 20), capsys.readouterr().out


@pytest.mark.parametrize("where", ["records", "artifacts"])
def test_a_store_made_read_only_mid_run_is_one_line_and_an_interrupted_manifest(tmp_path, monkeypatch, capsys, where):
    """`chattr +i <store>/records` (read-only even for root) after the first record of a real `bench run`: a
    traceback (PermissionError, then another from recording the unfinished trials), exit 1, and the manifest left
    "running". Simulated here by the write failing as chattr makes it fail (EPERM)."""
    import errno

    import numpy as np

    import bench.store
    from bench.store import ResultStore

    suite = tmp_path / "hs.yaml"
    suite.write_text(json.dumps({"name": "hs", "seeds": [0, 1], "datasets": ["digits"],
                                 "methods": [{"name": "kmeans", "config": {"n_init": 1}}]}))
    store = ResultStore(tmp_path / "store")
    writes = {"n": 0}
    real_write, real_save = bench.store.atomic_write_bytes, np.save

    def deny(path):
        writes["n"] += 1
        if writes["n"] > 1:  # the first record (or prediction) goes through; then the folder is read-only
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    def write(path, data):
        if Path(path).parent == store.records_dir:
            deny(path)
        return real_write(path, data)

    def save(path, arr, *a, **kw):
        deny(path)
        return real_save(path, arr, *a, **kw)

    if where == "records":
        monkeypatch.setattr(bench.store, "atomic_write_bytes", write)
    else:
        monkeypatch.setattr(np, "save", save)
    capsys.readouterr()
    code = main(["run", str(suite), "--inline", "--store", str(store.root), "--no-report"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Operation not permitted" in lines[0] and "--resume" in lines[0]
    (man,) = store.runs("hs")
    assert man["status"] == "interrupted" and [t["status"] for t in man["trials"]] == ["ok", "interrupted"]
    assert store.get(man["trials"][0]["key"]).ok  # the record written before is kept
    monkeypatch.undo()
    assert main(["run", str(suite), "--inline", "--store", str(store.root), "--no-report", "--resume"]) == 0
    assert all(r.ok for r in store.records())


def test_report_and_audit_of_a_run_still_running_show_its_pending_trials_as_unfinished(tmp_path, capsys):
    """`bench report --run RUN_ID` while that run was going: its manifest's "pending" trials became records of status
    "pending", a pydantic ValidationError traceback (seen polling a real `bench run`)."""
    store, man = _run(tmp_path)
    store.record_path(man["trials"][1]["key"]).unlink()  # as if not written yet
    running = {**man, "status": "running", "finished_at": None,
               "trials": [man["trials"][0], {**man["trials"][1], "status": "pending", "metrics": {}}]}
    store.write_run(running)
    capsys.readouterr()
    assert main(["report", "--run", man["run_id"], "--store", str(store.root), "--out", str(tmp_path / "r")]) == 0
    assert main(["audit", "--run", man["run_id"], "--store", str(store.root), "--out", str(tmp_path / "a")]) in (0, 2)
    assert "Traceback" not in capsys.readouterr().err
    csv = (tmp_path / "r" / "hs" / "results.csv").read_text()
    assert "not finished: the run was running" in csv


def test_a_store_read_only_when_a_lost_workers_trials_are_recorded_leaves_a_resumable_run(tmp_path, monkeypatch):
    """With Ray the failing write happens in the worker (the trial is 'lost'); the driver then cannot record the
    trial as interrupted either. The run must end resumable (as the error line says), not 'finished'."""
    import errno

    import bench.runner
    import bench.store
    from bench.runner import run_suite
    from bench.store import ResultStore, StoreUnwritable

    store = ResultStore(tmp_path / "store")
    real_write = bench.store.atomic_write_bytes

    def write(path, data):
        if Path(path).parent == store.records_dir:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_write(path, data)

    monkeypatch.setattr(bench.runner, "execute_unit", lambda unit: [])  # the worker died before writing
    monkeypatch.setattr(bench.store, "atomic_write_bytes", write)
    with pytest.raises(StoreUnwritable, match="Operation not permitted"):
        run_suite(_digits_suite(tmp_path), store=store, data_root=tmp_path, inline=True)
    (man,) = store.runs("hs")
    assert man["status"] == "interrupted" and {t["status"] for t in man["trials"]} == {"interrupted"}


def test_a_checkpoint_whose_bytes_changed_is_not_resumed_from(tmp_path, caplog):
    """A bit flipped in a checkpoint's weights still unpickles: a resumed stage build (its .partial-<key>/ under
    <store>/stages/) or trial went on from changed weights, silently. Now it is ignored, said, and started over."""
    import struct

    from bench.context import Checkpointer

    ck = Checkpointer(tmp_path / "stages" / "sdae" / ".partial-k" / "sdae-x.ckpt.pt", every_s=0)
    ck.path.parent.mkdir(parents=True)
    ck.save({"w": torch.arange(1000, dtype=torch.float32), "epoch": 3})
    assert ck.load()["epoch"] == 3
    blob = bytearray(ck.path.read_bytes())
    blob[blob.find(struct.pack("<f", 500.0))] ^= 0x40  # 500.0 -> 500.002: loads fine, wrong weights
    ck.path.write_bytes(bytes(blob))
    assert torch.load(ck.path, weights_only=False)["w"][500] != 500.0  # (torch itself does not notice)
    assert ck.load() is None and "ignoring unreadable checkpoint" in caplog.text


def test_a_kill_between_a_checkpoints_two_writes_leaves_the_previous_one_resumable(tmp_path, monkeypatch):
    import bench.context
    from bench.context import Checkpointer

    ck = Checkpointer(tmp_path / "a.ckpt.pt", every_s=0)
    ck.save({"epoch": 1})
    real = bench.context.atomic_write_bytes
    calls = {"n": 0}

    def killed_before_the_blob(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the sidecar is written, the checkpoint's own rename never happens
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(bench.context, "atomic_write_bytes", killed_before_the_blob)
    with pytest.raises(KeyboardInterrupt):
        ck.save({"epoch": 2})
    monkeypatch.undo()
    assert ck.load()["epoch"] == 1
    ck.save({"epoch": 3})
    assert ck.load()["epoch"] == 3
    ck.remove()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "folder"])
def test_a_damaged_history_database_is_one_line_and_rebuild_restores_it(tmp_path, capsys, damage):
    """<store>/history.db with flipped bytes, truncated or a folder: `bench history` and `bench regress` were sqlite3
    tracebacks, and `bench history --rebuild` (what `bench run` advises then) was one too."""
    store, man = _run(tmp_path)
    db = store.root / "history.db"
    assert db.is_file()
    if damage == "garbage":
        db.write_bytes(bytes(range(256)) * 32)
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[:5000])
    else:
        db.unlink()
        db.mkdir()
    capsys.readouterr()
    for cmd in (["history", "hs"], ["regress", "hs", "--out", str(tmp_path / "reg")]):
        assert main([*cmd, "--store", str(store.root)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: history database") and "--rebuild" in err[0]
    assert main(["history", "hs", "--store", str(store.root), "--rebuild"]) == 0
    assert man["run_id"] in capsys.readouterr().out and list(store.root.glob("history.db.damaged-*"))
    assert main(["history", "hs", "--store", str(store.root)]) == 0


def test_a_malformed_run_manifest_is_left_out_of_the_history_not_a_traceback(tmp_path, capsys, caplog):
    store, man = _run(tmp_path)
    (store.root / "history.db").unlink()
    bad = {**man, "run_id": "hs-broken", "trials": [{k: v for k, v in t.items() if k != "key"} for t in man["trials"]]}
    store.write_run(bad)
    assert main(["history", "hs", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert man["run_id"] in out and "hs-broken" not in out
    assert "hs-broken: its manifest in runs/ is malformed" in caplog.text


def _publish(out: str, tag: str, start_after: float, pause: float) -> None:
    """A report whose files move in one by one, ``pause`` seconds apart, starting ``start_after`` seconds late."""
    import bench.report as report

    real = os.replace

    def slow_replace(a, b):
        real(a, b)
        time.sleep(pause)

    report.os.replace = slow_replace  # this child process only

    def write(stage: Path) -> dict[str, Path]:
        for name in report.REPORT_FILES:
            (stage / name).write_text(tag)
        time.sleep(start_after)
        return {"markdown": stage / "table.md"}

    report.publish(Path(out), write)


def test_two_reports_published_into_one_folder_at_once_do_not_mix(tmp_path):
    """A slow report (0.2 s per file) and a fast one that starts while the slow one moves its files in: without
    the folder's lock the fast one's files land between the slow one's and the folder mixes the two reports."""
    import multiprocessing as mp

    from bench.report import OWNED_LIST, REPORT_FILES

    out = tmp_path / "reports" / "suite"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_publish, args=(str(out), "slow", 0.0, 0.2)),
             ctx.Process(target=_publish, args=(str(out), "fast", 0.3, 0.0))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    tags = [(out / name).read_text() for name in REPORT_FILES]
    assert len(set(tags)) == 1, f"the folder mixes two reports: {dict(zip(REPORT_FILES, tags))}"
    assert sorted(json.loads((out / OWNED_LIST).read_text())) == sorted(REPORT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_FILES, OWNED_LIST])


@pytest.mark.parametrize("what", ["record-fifo", "record-link-to-dev-zero", "manifest-fifo", "manifest-5gb"])
def test_a_record_or_manifest_that_is_a_fifo_or_an_endless_device_is_skipped_never_read(tmp_path, what):
    """records/<key>.json a FIFO: `bench import` (and run, report) waited forever for a writer; a link to /dev/zero has
    size 0, so the 64 MiB cap let it through and reading it ate all memory. runs/ had the same hang, and no cap (a
    sparse 5 GB manifest was read whole). A real process, its memory capped, under a time limit."""
    import subprocess
    import sys

    store, _ = _run(tmp_path)
    path = sorted(store.records_dir.glob("*.json"))[0] if what.startswith("record") else store.runs_dir / "x.json"
    path.unlink(missing_ok=True)
    if what == "record-link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif what == "manifest-5gb":
        with open(path, "wb") as f:  # sparse: no disk used
            f.truncate(5 * 2**30)
    else:
        os.mkfifo(path)
    script = ("import resource, sys\n"
              "import psutil, bench.store\n"
              "cap = psutil.Process().memory_info().vms + 2 * 2**30\n"
              "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
              "from bench.cli import main\n"
              "sys.exit(main(['import', sys.argv[1], '--store', sys.argv[2]]))\n")
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(store.root), str(tmp_path / "dst")],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bench import hung on a {what}")
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if what.startswith("manifest"):
        assert proc.returncode == 0 and "2 new record(s)" in proc.stdout
    else:
        assert proc.returncode == 1 and "1 new record(s)" in proc.stdout and "1 damaged skipped" in proc.stdout


@pytest.mark.parametrize("where", ["record", "manifest", "stage"])
def test_json_nested_thousands_deep_in_the_store_is_skipped_not_a_traceback(tmp_path, capsys, where):
    """200,000 `[` in a record file (or a runs/ manifest): json raised RecursionError, which no reader caught, so
    `bench report`, `audit`, `import`, `history`, `trials`, `stages` and even `bench run` ended in a traceback. The file
    is skipped like any unreadable one (a record: named as damaged, and re-run; a stage's stage.json: no stage), and
    the other records stay."""
    from bench.runner import run_suite
    from bench.store import ResultStore

    store, man = _run(tmp_path)
    keys = [t["key"] for t in man["trials"]]
    stages = StageStore(store.stage_dir)
    stages.save("hostile_probe", "d" * 20, {"w": torch.zeros(1)}, {"seed": 0})
    path = {"record": store.record_path(keys[0]), "manifest": store.runs_dir / "deep.json",
            "stage": stages.path("hostile_probe", "d" * 20) / stages.META}[where]
    path.write_text('{"run_id": ' + "[" * 200_000 + "]" * 200_000 + "}")
    capsys.readouterr()
    for argv in (["report", "hs"], ["audit", "--out", str(tmp_path / "aud")], ["import", str(store.root)],
                 ["history"], ["trials"], ["stages"]):
        dst = ["--store", str(tmp_path / "dst")] if argv[0] == "import" else ["--store", str(store.root)]
        out = ["--out", str(tmp_path / "rep")] if argv[0] == "report" else []
        code = main([*argv, *dst, *out])  # audit: 2, no claim about k-means on digits; import: 1, a damaged record
        err = capsys.readouterr().err
        assert code in (0, 1, 2) and "Traceback" not in err, (argv, err)
        if where == "record" and argv[0] in ("report", "stages"):
            assert "damaged or unreadable" in err and path.name in err
    assert ResultStore(tmp_path / "dst").get(keys[1]).ok  # the other record came in
    again = run_suite(_digits_suite(tmp_path), store=store, data_root=tmp_path, inline=True)
    assert [t["status"] for t in again["trials"]] == (["ok", "reused"] if where == "record" else ["reused", "reused"])
    assert all(store.get(k).ok for k in keys)
    assert stages.exists("hostile_probe", "d" * 20) == (where != "stage")


@pytest.mark.parametrize("edit", [{"trials": None}, {"trials": ["a"]}, "trial-without-key", {"stages": "x"},
                                  {"driver": "x", "status": "running"}, {"driver": {"pid": "x"}, "status": "running"}],
                         ids=["trials-null", "trial-a-string", "trial-without-key", "stages-a-string",
                              "driver-a-string", "driver-pid-a-string"])
def test_a_run_manifest_with_fields_of_the_wrong_shape_is_left_out_not_a_traceback(tmp_path, capsys, caplog, edit):
    """A hand-edited runs/ manifest as the latest run (its trials null, a trial without its key, a driver that is a
    string): `bench report --run`, `audit --run`, `stages`, `stages --prune` and `run --resume` ended in a KeyError /
    TypeError / AttributeError traceback. It is left out like any foreign file (`bench history` names it), the
    records stay."""
    from bench.runner import run_suite

    store, man = _run(tmp_path)
    bad = {**man, "run_id": "hs-edited", "started_at": "2099-01-01", "status": "interrupted"}
    if edit == "trial-without-key":
        bad["trials"] = [{k: v for k, v in t.items() if k != "key"} for t in man["trials"]]
    else:
        bad.update(edit)
    (store.runs_dir / "hs-edited.json").write_text(json.dumps(bad))
    (store.root / "history.db").unlink()
    capsys.readouterr()
    rep, aud = ["--out", str(tmp_path / "rep")], ["--out", str(tmp_path / "aud")]
    for argv, code in ((["report", "--run", "hs-edited", *rep], 2), (["audit", "--run", "hs-edited", *aud], 2),
                       (["stages"], 0), (["stages", "--prune"], 0), (["report", "hs", *rep], 0),
                       (["trials"], 0), (["history", "hs"], 0)):
        assert main([*argv, "--store", str(store.root)]) == code, argv
        err = capsys.readouterr().err
        if code == 2:  # no such run: the edited one is not a run this harness can read
            assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "hs-edited: its manifest in runs/ is malformed" in caplog.text
    again = run_suite(_digits_suite(tmp_path), store=store, data_root=tmp_path, inline=True)
    assert [t["status"] for t in again["trials"]] == ["reused", "reused"]
    assert all(store.get(t["key"]).ok for t in man["trials"])

"""No finished result is ever lost (issue 11): the store's rule, per-key locks, signals, per-seed
isolation in seed batches, checkpoints and --resume, a killed driver's Ray processes.

Hostile-user tests: they send real signals to real `bench run` processes (subprocess + os.kill),
poison a real seed's weights with NaN, and SIGKILL real drivers. CPU, bundled digits, tiny configs.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from bench.perf.fault_drill import BenchProcess, left_after, suite_file
from bench.records import ResultRecord
from bench.runner import note_unfinished, run_suite
from bench.store import ResultStore
from bench.suite import parse_suite

ROOT = Path(__file__).resolve().parent.parent
# DEC small enough for a few seconds per run on one busy CPU core, long enough to be cut and resumed
TINY_DEC = {"hidden_dims": [32, 32, 64, 10], "pretrain_iters_per_layer": 40, "finetune_iters": 80,
            "pretrain_lr_step": 1000, "pretrain_batch_size": 64, "batch_size": 64, "update_interval": 10,
            "max_iters": 120, "n_init": 2, "tol": 0.0}


def _rec(key: str, status: str, run_id: str, acc: float = 0.5) -> ResultRecord:
    return ResultRecord(key=key, run_id=run_id, method="m", dataset="digits", seed=0, config={}, protocol={},
                        data_md5="x", status=status, metrics={"acc": acc} if status == "ok" else {},
                        error=None if status == "ok" else "boom")


# -- the store's rule ------------------------------------------------------------------------------
def test_a_record_is_only_replaced_by_a_newer_finished_result(store):
    assert store.put(_rec("k", "interrupted", "r1"))
    assert store.put(_rec("k", "failed", "r2"))  # failed replaces interrupted
    assert not store.put(_rec("k", "interrupted", "r3"))  # ...but interrupted never replaces failed
    assert store.put(_rec("k", "ok", "r4", acc=0.4))
    assert not store.put(_rec("k", "failed", "r5")) and not store.put(_rec("k", "interrupted", "r6"))
    assert store.get("k").run_id == "r4" and store.get("k").ok
    assert store.attempt("k", "r5").status == "failed" and store.attempt("k", "r6").status == "interrupted"
    assert store.put(_rec("k", "ok", "r7", acc=0.6))  # a newer finished result does replace it
    assert store.get("k").metrics["acc"] == 0.6


# -- per-seed isolation in a seed batch ------------------------------------------------------------
def _dec_batch(store, seeds=(0, 1, 2)):
    s = parse_suite({"name": "iso", "seeds": list(seeds), "datasets": ["digits"], "device": "cpu",
                     "methods": [{"name": "dec", "config": TINY_DEC, "seed_batch": len(seeds)}]})
    man = run_suite(s, store=store, data_root=store.root, inline=True)
    return {t["seed"]: store.get(t["key"]) for t in man["trials"]}, man


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["1@finetune:30", "1@cluster:25"])
def test_a_diverging_seed_fails_alone_and_the_others_are_unchanged(tmp_path, monkeypatch, fault):
    clean, _ = _dec_batch(ResultStore(tmp_path / "clean"))
    monkeypatch.setenv("BENCH_FAULT_NAN", fault)
    faulty, man = _dec_batch(ResultStore(tmp_path / "faulty"))
    stage, it = fault.split("@")[1].split(":")
    bad = faulty[1]
    assert bad.status == "failed" and "NonFiniteLossError" in bad.error and "seed 1" in bad.error
    assert bad.info["failed_at"]["stage"] == stage and bad.info["failed_at"]["iteration"] >= int(it)
    assert "epoch" in bad.info["failed_at"] and f"iteration {bad.info['failed_at']['iteration']}" in bad.error
    for seed in (0, 2):  # the batch-mates: ok, and bit for bit what they are without the fault
        assert faulty[seed].ok and clean[seed].ok
        assert faulty[seed].metrics == clean[seed].metrics
        assert faulty[seed].info == clean[seed].info
        a = np.load(ResultStore(tmp_path / "faulty").artifact_dir(faulty[seed].key) / "pred.npy")
        b = np.load(ResultStore(tmp_path / "clean").artifact_dir(clean[seed].key) / "pred.npy")
        assert (a == b).all()
        assert [r.get("loss") for r in faulty[seed].curve] == [r.get("loss") for r in clean[seed].curve]
    # a seed that failed while pretraining leaves no stage artifact behind for others to reuse
    if stage == "finetune":
        assert len(list((tmp_path / "faulty" / "stages" / "sdae").glob("*/artifact.pt"))) == 2
    assert man["status"] == "finished" and [t["status"] for t in man["trials"]] == ["ok", "failed", "ok"]


# -- real signals to real `bench run` processes ----------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def _suite_file(tmp_path: Path, name: str, methods: list, seeds: int | list = 4, **extra) -> Path:
    return suite_file(tmp_path, name, methods, seeds, **extra)


def Bench(*args: str, env: dict[str, str] | None = None) -> BenchProcess:  # noqa: N802 - reads like the command
    return BenchProcess(*args, env=env or _env())


def _facts(rec: ResultRecord) -> dict:
    """A record's method facts, less whether its pretrained stage was built or reused (a resumed run reuses
    the stage its killed predecessor finished)."""
    return {k: v for k, v in rec.info.items() if k != "stages"}


def _logs(store: ResultStore) -> str:
    """What the runs' trials logged: the terminal shows progress only, worker output goes to <store>/logs/."""
    return "\n".join(p.read_text(errors="replace") for p in sorted((store.root / "logs").rglob("*.log")))


def _statuses(store: ResultStore) -> dict[str, str]:
    return {r.key: r.status for r in store.records()}


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_forced_rerun_loses_no_ok_record(tmp_path, sig, code):
    suite = _suite_file(tmp_path, "sig", [{"name": "test_sleep", "config": {"seconds": 0.7}}])
    store = ResultStore(tmp_path / "st")
    args = [str(suite), "--inline", "--store", str(store.root), "--out", str(tmp_path / "rep")]
    from bench.suite import load_suite

    run_suite(load_suite(suite), store=store, data_root=store.root, inline=True)  # the stored ok records
    before = {r.key: r for r in store.records()}
    assert len(before) == 4 and all(r.ok for r in before.values())
    run = Bench(*args, "--force")
    assert run.wait_for(lambda: any(r.run_id != before[r.key].run_id for r in store.records()))  # one re-run done
    time.sleep(random.uniform(0, 0.7))
    run.proc.send_signal(sig)
    assert run.finish() == code, run.out
    man = store.latest_run("sig")
    assert man["status"] == "interrupted" and man["force"]
    statuses = [t["status"] for t in man["trials"]]
    assert statuses[0] == "ok" and "interrupted" in statuses
    for t in man["trials"]:
        if t["status"] == "interrupted":
            assert f"run interrupted ({sig.name})" in t["error"]
            assert store.get(t["key"]).run_id == before[t["key"]].run_id  # the old ok record, untouched
    assert all(r.ok for r in store.records()) and len(_statuses(store)) == 4  # 0 ok records lost
    assert "| test_sleep |" in run.out and (tmp_path / "rep" / "sig" / "table.md").exists()  # report of what finished
    assert f"bench run --resume {man['run_id']}" in run.out


@pytest.mark.slow
@pytest.mark.parametrize("n_runs", [2])
def test_concurrent_runs_of_one_suite_compute_each_key_once(tmp_path, n_runs):
    suite = _suite_file(tmp_path, "conc", [{"name": "test_sleep", "config": {"seconds": 0.7}}])
    store = ResultStore(tmp_path / "st")
    runs = [Bench(str(suite), "--inline", "--store", str(store.root), "--no-report") for _ in range(n_runs)]
    assert [r.finish() for r in runs] == [0] * n_runs, [r.out for r in runs]
    computed = (store.root / "computed.log").read_text().split()[::2]
    assert sorted(computed) == sorted(set(computed)) and len(computed) == 4  # each key computed exactly once
    assert all(r.ok for r in store.records()) and len(_statuses(store)) == 4
    mans = store.runs("conc")
    assert sum(t["status"] == "ok" for m in mans for t in m["trials"]) == 4
    assert all(t["status"] in ("ok", "reused") for m in mans for t in m["trials"])
    assert "reusing the ok record of run" in "\n".join(r.out for r in runs) + _logs(store)


# -- driver SIGKILL, checkpoints and --resume --------------------------------------------------------
# long enough (several seconds of work even on an idle CPU) that cuts 1-3 s into each attempt land mid-run
RESUME_DEC = {**TINY_DEC, "pretrain_iters_per_layer": 600, "finetune_iters": 1200, "max_iters": 600}


@pytest.mark.slow
def test_a_run_killed_again_and_again_and_resumed_equals_an_uncut_run(tmp_path, capsys):
    methods = [{"name": "dec", "config": RESUME_DEC, "seed_batch": 2}]
    suite = _suite_file(tmp_path, "cut", methods, seeds=[0, 1], device="cpu", deterministic=True)
    uncut, cut = ResultStore(tmp_path / "uncut"), ResultStore(tmp_path / "cut")
    env = _env(BENCH_CHECKPOINT_S="0.3")
    assert Bench(str(suite), "--inline", "--store", str(uncut.root), "--no-report", env=env).finish() == 0
    rng = random.Random(11)
    kills, outputs, args = 0, [], [str(suite), "--inline", "--store", str(cut.root), "--no-report"]
    for attempt in range(60):
        run = Bench(*args, *(["--resume"] if attempt else []), env=env)
        assert run.wait_for("trial(s) to run"), run.out
        # cut a second or two into the work (the run prints "N ok, ..." once its manifest is finished)
        # the window grows with each attempt so that a slow (loaded) machine still ends; every cut still lands
        # in the stage build or the clustering loop, which is what resuming must survive
        done = run.wait_for(" ok, ", timeout=rng.uniform(0.5, 2.0) + 0.3 * attempt)
        if run.proc.poll() is None and not done:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.finish()
            if cut.runs("cut")[-1]["status"] == "finished":  # the kill landed after the run had finished
                outputs.append(run.out)
                break
            kills += 1
            if kills == 1:  # a plain `bench run` now would say that this run is unfinished and how to resume it
                note_unfinished(cut, "cut")
                assert "lost its driver" in capsys.readouterr().err
            outputs.append(run.out)
            continue
        assert run.finish() == 0, run.out
        outputs.append(run.out)
        break
    else:
        pytest.fail("never finished")
    assert kills >= 2, f"the run was cut only {kills} time(s)"
    text = "\n".join(outputs)
    assert "resuming from checkpoint" in text + _logs(cut)
    assert sum("resuming run" in o for o in outputs) == kills
    mans = cut.runs("cut")
    assert len(mans) == 1 and mans[0]["status"] == "finished" and len(mans[0]["resumed"]) == kills
    a = {r.seed: r for r in uncut.records()}
    b = {r.seed: r for r in cut.records()}
    for seed in (0, 1):
        assert b[seed].ok and b[seed].metrics == a[seed].metrics
        assert _facts(b[seed]) == _facts(a[seed])
        assert (np.load(uncut.artifact_dir(a[seed].key) / "pred.npy") ==
                np.load(cut.artifact_dir(b[seed].key) / "pred.npy")).all()
        assert [r.get("loss") for r in b[seed].curve] == [r.get("loss") for r in a[seed].curve]
    assert not list(cut.root.rglob("*.ckpt.pt"))  # finished: no checkpoint left to resume from


@pytest.mark.slow
@pytest.mark.ray
def test_ray_driver_sigkill_leaves_no_ray_processes_and_resume_reruns_nothing_finished(tmp_path):
    suite = _suite_file(tmp_path, "kill", [{"name": "test_sleep", "config": {"seconds": 2.0}}])
    store = ResultStore(tmp_path / "st")
    run = Bench(str(suite), "--store", str(store.root), "--no-report")
    assert run.wait_for(lambda: any(r.ok for r in store.records())), run.out  # one trial finished
    ray_procs = run.descendants()
    assert any("raylet" in " ".join(p.cmdline()) for p in ray_procs)
    os.kill(run.proc.pid, signal.SIGKILL)  # the driver only: Ray's own processes are left to fend for themselves
    run.finish()
    assert left_after(ray_procs, 20) == []  # the watchdog reaped every Ray process of the dead driver
    finished = {r.key for r in store.records() if r.ok}
    again = Bench(str(suite), "--inline", "--store", str(store.root), "--no-report", "--resume")
    assert again.finish() == 0, again.out
    assert "resuming run" in again.out and f"{len(finished)} trial(s) already finished" in again.out
    computed = (store.root / "computed.log").read_text().split()[::2]
    assert sorted(computed) == sorted(set(computed))  # nothing computed twice: finished trials were not rerun
    man = store.latest_run("kill")
    assert man["status"] == "finished" and [t["status"] for t in man["trials"]] == ["ok"] * 4


@pytest.mark.slow
@pytest.mark.ray
def test_ray_sigterm_exits_143_with_the_report_and_stops_ray(tmp_path):
    suite = _suite_file(tmp_path, "term", [{"name": "test_sleep", "config": {"seconds": 3.0}}], seeds=8)
    store = ResultStore(tmp_path / "st")
    run = Bench(str(suite), "--store", str(store.root), "--out", str(tmp_path / "rep"))
    assert run.wait_for(lambda: any(r.ok for r in store.records())), run.out
    ray_procs = run.descendants()
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.out
    man = store.latest_run("term")
    assert man["status"] == "interrupted" and man["driver"]["pid"] == run.proc.pid
    by = [t["status"] for t in man["trials"]]
    assert "ok" in by and "interrupted" in by and set(by) <= {"ok", "interrupted"}
    assert all("run interrupted (SIGTERM)" in t["error"] for t in man["trials"] if t["status"] == "interrupted")
    assert (tmp_path / "rep" / "term" / "table.md").exists() and "| test_sleep |" in run.out
    assert left_after(ray_procs, 20) == []


# -- a 3-node Ray cluster on one machine ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ray
def test_three_node_cluster_completes_and_a_killed_node_loses_nothing(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        suite = _suite_file(tmp_path, "nodes", [{"name": "test_sleep", "config": {"seconds": 3.0}}], seeds=6)
        store = ResultStore(tmp_path / "st")
        run = Bench(str(suite), "--address", cluster.address, "--store", str(store.root), "--no-report")
        assert run.wait_for(lambda: any(r.ok for r in store.records())), run.out
        cluster.remove_node(workers[0], allow_graceful=False)  # a node dies mid-run, its trial with it
        assert run.finish() == 0, run.out
        man = store.latest_run("nodes")
        assert man["mode"] == "ray" and man["ray_address"] == cluster.address
        assert [t["status"] for t in man["trials"]] == ["ok"] * 6  # retried elsewhere: 0 lost
        assert all(r.ok for r in store.records()) and len(list(store.records())) == 6
    finally:
        cluster.shutdown()


def test_resume_refuses_what_it_cannot_continue_in_one_line(tmp_path, capsys):
    from bench.cli import main

    suite = _suite_file(tmp_path, "res", ["test_first_pixel"], seeds=2)
    args = ["--inline", "--store", str(tmp_path / "st"), "--no-report"]
    assert main(["run", str(suite), "--resume", *args]) == 2
    assert "no unfinished run of suite 'res'" in capsys.readouterr().err
    assert main(["run", str(suite), *args]) == 0
    run_id = ResultStore(tmp_path / "st").latest_run("res")["run_id"]
    assert main(["run", str(suite), "--resume", run_id, *args]) == 2
    assert "that run finished; nothing to resume" in capsys.readouterr().err
    assert main(["run", "--resume", "nosuch", *args]) == 2 and "no such run" in capsys.readouterr().err
    assert main(["run", str(suite), "--resume", "--force", *args]) == 2
    # an interrupted run of other code: its keys would not match this code's
    store = ResultStore(tmp_path / "st")
    man = store.latest_run("res")
    store.write_run({**man, "run_id": "res-old", "status": "interrupted", "started_at": "9999",
                     "code": {"code_version": "other-code"}})
    assert main(["run", str(suite), *args]) == 0
    assert "run res-old of suite 'res' was interrupted" in capsys.readouterr().err  # the new run says so
    assert main(["run", str(suite), "--resume", *args]) == 2
    assert "used code other-code" in capsys.readouterr().err

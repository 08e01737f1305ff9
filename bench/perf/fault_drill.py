"""Fault drill: interrupts, concurrent runs and killed drivers against one results store.

    python -m bench.perf.fault_drill [--moments 20] [--concurrency 2 4] [--workdir DIR] [--seed 0]

Every part drives real ``bench run`` processes (``python -m bench run``) and really signals or kills
them, on the bundled digits on the CPU, then checks the store's promises:

1. **Signals**: a store holding ok records of a suite (k-means and a tiny DEC), then ``--force``
   re-runs of it, each cut by SIGINT or SIGTERM (alternating) at a random moment: the exit code is
   130 / 143, 0 ok records are lost, every trial the run did not finish says which signal cut it.
2. **Concurrency**: N runs of one suite started together on one empty store: every record ok, each
   key computed once (``test_sleep`` logs each computation; the manifests' "ok" counts add up to the
   number of keys), the others reused what the first computed.
3. **SIGKILL + --resume**: a deterministic tiny DEC run, its driver SIGKILLed (first under Ray, then
   inline) every few seconds and resumed with ``--resume`` until done: 0 finished trials rerun, final
   records identical to an uncut run, no Ray process of the killed driver left.

Test-only methods come from tests/plugins/fake_methods.py (``BENCH_PLUGINS``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "tests" / "plugins" / "fake_methods.py"
#: a DEC small enough for seconds on one CPU core, long enough to be cut and resumed several times
TINY_DEC = {"hidden_dims": [32, 32, 64, 10], "pretrain_iters_per_layer": 150, "finetune_iters": 300,
            "pretrain_lr_step": 1000, "pretrain_batch_size": 64, "batch_size": 64, "update_interval": 10,
            "max_iters": 300, "n_init": 2, "tol": 0.0}


def bench_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "BENCH_PLUGINS": str(PLUGINS),
            "BENCH_CODE_VERSION": os.environ.get("BENCH_CODE_VERSION", "fault-drill"), **extra}


class BenchProcess:
    """A ``bench run`` subprocess; a thread collects its output, so it can be signalled at a known moment."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench", "run", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env or bench_env(),
                                     start_new_session=True)
        self.out = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.out += line

    def wait_for(self, what: str | Callable[[], bool], timeout: float = 300) -> bool:
        """Until ``what`` (a text in the output, or a predicate) holds; False if the process ended first."""
        def holds() -> bool:
            return (what in self.out) if isinstance(what, str) else bool(what())

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if holds():
                return True
            if self.proc.poll() is not None:
                self._reader.join(5)
                return holds()
            time.sleep(0.05)
        return False

    def finish(self, timeout: float = 600) -> int:
        self.proc.wait(timeout=timeout)
        self._reader.join(10)
        return self.proc.returncode

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def left_after(procs: list[psutil.Process], seconds: float) -> list[str]:
    """The command lines of ``procs`` still alive after up to ``seconds``."""
    t0 = time.monotonic()
    while alive(procs) and time.monotonic() - t0 < seconds:
        time.sleep(0.25)
    out = []
    for p in alive(procs):
        try:
            out.append(" ".join(p.cmdline())[:80])
        except psutil.Error:
            pass
    return out


def suite_file(folder: Path, name: str, methods: list, seeds: int | list = 4, **extra: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "seeds": seeds, "datasets": ["digits"], "methods": methods,
                                "resources": {"cpus_per_trial": 1}, "device": "cpu", **extra}))
    return path


def _store(path: Path):
    from bench.store import ResultStore

    return ResultStore(path)


# -- 1. signals at random moments of --force runs ------------------------------------------------------
def drill_signals(work: Path, moments: int, rng: random.Random) -> bool:
    suite = suite_file(work, "drill_sig", ["kmeans", {"name": "dec", "config": TINY_DEC, "seed_batch": 3}], seeds=3)
    store = _store(work / "sig")
    args = [str(suite), "--inline", "--store", str(store.root), "--out", str(work / "rep")]
    t0 = time.monotonic()
    first = BenchProcess(*args)
    first.wait_for("trial(s) to run")
    t_work = time.monotonic()
    first.wait_for(" ok, ")  # the run's summary line: every trial is done (the report follows)
    span = time.monotonic() - t_work  # signals land in [0, span): while trials run, or just after
    assert first.finish() == 0, first.out
    ok_keys = {r.key for r in store.records() if r.ok}
    print(f"signals: {len(ok_keys)} ok records stored by an uncut run ({time.monotonic() - t0:.0f} s, "
          f"{span:.1f} s of work); now {moments} --force runs cut at random moments", flush=True)
    good = True
    for i in range(moments):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        run = BenchProcess(*args, "--force")
        run.wait_for("trial(s) to run")
        at = rng.uniform(0, span)
        time.sleep(at)
        delivered = run.proc.poll() is None
        run.proc.send_signal(sig)
        code = run.finish()
        man = store.latest_run("drill_sig")
        lost = sorted(k for k in ok_keys if not store.has_ok(k))
        cut = [t for t in man["trials"] if t["status"] == "interrupted"]
        reasons_right = all(f"({sig.name})" in (t.get("error") or "") for t in cut)
        expected = 128 + int(sig) if delivered else 0  # also when it came after the trials, while reporting
        n_ok = sum(t["status"] == "ok" for t in man["trials"])
        ok = code == expected and not lost and reasons_right and (man["status"] == "interrupted") == bool(cut)
        good &= ok
        print(f"  moment {i + 1:2d}: {sig.name:7s} at {at:5.2f} s -> exit {code}, run {man['status']}, "
              f"{n_ok} ok + {len(cut)} interrupted in the manifest, ok records lost: {len(lost)}, "
              f"reasons right: {reasons_right}{'' if ok else '   <-- FAIL'}", flush=True)
    print(f"signals: {'PASS' if good else 'FAIL'}; ok records in the store: "
          f"{sum(1 for r in store.records() if r.ok)}/{len(ok_keys)}", flush=True)
    return good


# -- 2. concurrent runs of one suite on one store ---------------------------------------------------
def drill_concurrency(work: Path, n_runs: int) -> bool:
    suite = suite_file(work, f"drill_conc{n_runs}", [{"name": "test_sleep", "config": {"seconds": 0.5}},
                                                      {"name": "kmeans", "config": {"n_init": 2}}], seeds=6)
    store = _store(work / f"conc{n_runs}")
    t0 = time.monotonic()
    runs = [BenchProcess(str(suite), "--inline", "--store", str(store.root), "--no-report") for _ in range(n_runs)]
    codes = [r.finish() for r in runs]
    keys = {r.key for r in store.records()}
    computed = (store.root / "computed.log").read_text().split()[::2]
    mans = store.runs(f"drill_conc{n_runs}")
    n_ok = sum(t["status"] == "ok" for m in mans for t in m["trials"])
    n_reused = sum(t["status"] == "reused" for m in mans for t in m["trials"])
    all_ok = all(r.ok for r in store.records()) and len(keys) == 12
    once = sorted(computed) == sorted(set(computed)) and len(computed) == 6 and n_ok == len(keys)
    good = codes == [0] * n_runs and all_ok and once
    print(f"concurrency x{n_runs}: exit codes {codes}; {len(keys)} records, all ok: {all_ok}; test_sleep keys "
          f"computed {len(computed)} times for 6 keys; manifests: {n_ok} ok + {n_reused} reused over {n_runs} runs "
          f"(each key computed once: {once}); {time.monotonic() - t0:.0f} s -> {'PASS' if good else 'FAIL'}",
          flush=True)
    return good


# -- 3. driver SIGKILL, then --resume until done -------------------------------------------------------
def drill_kill_resume(work: Path, rng: random.Random) -> bool:
    suite = suite_file(work, "drill_kill", [{"name": "dec", "config": TINY_DEC, "seed_batch": 2}], seeds=[0, 1, 2, 3],
                       deterministic=True)
    env = bench_env(BENCH_CHECKPOINT_S="0.5")
    uncut, cut = _store(work / "uncut"), _store(work / "cut")
    assert BenchProcess(str(suite), "--inline", "--store", str(uncut.root), "--no-report", env=env).finish() == 0
    kills, leftovers, reruns, resumed_ckpt = 0, [], 0, 0
    for attempt in range(40):
        latest = cut.latest_run("drill_kill")
        if latest and latest["status"] == "finished":  # killed after it had recorded everything: done
            break
        ray = attempt == 0  # the first driver runs its trials under a local Ray instance
        args = [str(suite), "--store", str(cut.root), "--no-report", *([] if ray else ["--inline"]),
                *(["--resume"] if attempt else [])]
        finished_before = sum(1 for r in cut.records() if r.ok)
        run = BenchProcess(*args, env=env)
        run.wait_for("trial(s) to run")
        said = re.search(r"(\d+) trial\(s\) already finished", run.out)
        reruns += max(0, finished_before - (int(said.group(1)) if said else 0))  # finished, yet planned again
        done = run.wait_for("ACC" if not ray else "RUNNING", timeout=rng.uniform(2.0, 5.0))
        if ray:
            run.wait_for(lambda: any(r.ok for r in cut.records()), timeout=300)
        if run.proc.poll() is None and not (done and not ray):
            procs = run.descendants()
            os.kill(run.proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer or `kill -9` would
            run.finish()
            kills += 1
            leftovers += left_after(procs, 20)
            resumed_ckpt += run.out.count("resuming from checkpoint")
            continue
        assert run.finish() == 0, run.out
        resumed_ckpt += run.out.count("resuming from checkpoint")
        break
    a = {r.seed: r for r in uncut.records()}
    b = {r.seed: r for r in cut.records()}
    import numpy as np

    def facts(rec) -> dict:  # less whether the pretrained stage was built or reused by a resumed run
        return {k: v for k, v in rec.info.items() if k != "stages"}

    same = all(b[s].ok and b[s].metrics == a[s].metrics and facts(b[s]) == facts(a[s]) and
               (np.load(uncut.artifact_dir(a[s].key) / "pred.npy") == np.load(cut.artifact_dir(b[s].key) /
                                                                                 "pred.npy")).all() for s in a)
    mans = cut.runs("drill_kill")
    good = same and not leftovers and not reruns and len(mans) == 1 and mans[0]["status"] == "finished"
    print(f"SIGKILL + --resume: driver killed {kills} times (the first under Ray), resumed from a checkpoint "
          f"{resumed_ckpt} times; finished trials rerun: {reruns}; one run id, final status {mans[0]['status']}; "
          f"final records identical to the "
          f"uncut run (metrics, info, labels): {same}; Ray processes left after the kill: {len(leftovers)} "
          f"{leftovers or ''}-> {'PASS' if good else 'FAIL'}", flush=True)
    return good


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--moments", type=int, default=20, help="signals sent to --force runs (default 20)")
    p.add_argument("--concurrency", type=int, nargs="*", default=[2, 4], help="concurrent runs (default: 2 4)")
    p.add_argument("--skip", nargs="*", default=[], choices=["signals", "concurrency", "kill"])
    p.add_argument("--workdir", default=None, help="where the drill's stores go (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fault_drill_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"fault drill in {work} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)", flush=True)
    results = []
    if "signals" not in args.skip:
        results.append(drill_signals(work, args.moments, rng))
    if "concurrency" not in args.skip:
        results += [drill_concurrency(work, n) for n in args.concurrency]
    if "kill" not in args.skip:
        results.append(drill_kill_resume(work, rng))
    print("fault drill:", "ALL PASS" if all(results) else "SOME FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

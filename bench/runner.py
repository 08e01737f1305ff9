"""Plan (bench.plan) -> stage units, then trial units -> records, inline or through Ray Tune.

The plan's stage units are built first (upstream before downstream), then its trial units run:

* inline, one after another in this process (debugging, tests), or
* as a Ray Tune grid: local Ray by default, ``address=`` joins an existing cluster. Each trial asks
  for ``cpus_per_trial`` CPUs and a (fractional) GPU share; Ray packs fractional trials onto GPUs.

A run manifest (bench.store) records the plan and its driver (host, pid) at the start and each trial's
outcome at the end, including trials whose worker died before writing a record (status "interrupted").
SIGINT/SIGTERM stop the run cleanly (Ray shut down, outcomes recorded, exit 130/143); a run that did
not finish is continued by ``resume`` (``bench run --resume``) under its own id. The store's rules
(no finished record replaced by a worse one, one live computation per key) are in bench.store and
bench.trial.execute_unit.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.history import append_run_safely
from bench.plan import Plan, plan_suite
from bench.progress import RunProgress, output_to_file, trial_log_path, trial_name
from bench.records import ResultRecord
from bench.store import ResultStore, StoreUnwritable, driver_alive, driver_identity
from bench.suite import SuiteSpec, check_gpus
from bench.trial import StageUnit, execute_stage_unit, execute_unit, stage_log_path, utcnow

log = logging.getLogger("bench.runner")
#: environment the workers need to see as the driver does (plugins, code version, data and cache paths)
PASSED_ENV = ("BENCH_PLUGINS", "BENCH_CODE_VERSION", "BENCH_DATA", "BENCH_CACHE", "BENCH_CHECKPOINT_S",
              "BENCH_CUDA_GRAPHS", "BENCH_FAULT_NAN")
#: how many times Ray Tune retries a trial whose worker died
MAX_FAILURES = 1


def _ray_cpu_count() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0))


def _gpu_count(address: str | None) -> float:
    if address is None:
        import torch

        return float(torch.cuda.device_count())
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def resumed_scope(previous: dict[str, Any]) -> tuple[bool, set[str] | None, set[str] | None, set[int] | None]:
    """(force, only, datasets, seeds) of a run being resumed: it resumes what that run was asked to run."""
    def narrowed(field: str) -> set | None:
        return set(previous[field]) if previous.get(field) else None

    return bool(previous.get("force")), narrowed("only"), narrowed("only_datasets"), narrowed("only_seeds")


def run_suite(suite: SuiteSpec, *, store: ResultStore, data_root: Path, inline: bool = False,
              address: str | None = None, force: bool = False, suite_path: str | None = None,
              code: dict[str, Any] | None = None, resume: str | bool = False, only: set[str] | None = None,
              datasets: set[str] | None = None, seeds: set[int] | None = None,
              kind: str = "suite") -> dict[str, Any]:
    """Plan, run and record a suite. Returns the finished run manifest; ``manifest["signal"]`` names the
    signal (SIGINT, SIGTERM) that cut the run short, if one did.

    ``resume``: True (the latest unfinished run of the suite) or a run id: continue that run under its
    own id, force flag and code version; trials it finished are not rerun, unfinished ones start from
    their last checkpoint. ``only``, ``datasets``, ``seeds``: run just these methods / datasets / seeds (the
    manifest keeps the whole suite's spec, so the report shows the whole grid).
    ``kind`` is "trial" for `bench trial`."""
    from bench.provenance import code_version

    if address and inline:
        raise BenchError("--inline runs in this process; it cannot be combined with --address")
    code = code or code_version()
    previous = resumable_run(store, suite.name, None if resume is True else resume, code) if resume else None
    if previous is None:
        note_unfinished(store, suite.name)
    else:
        force, only, datasets, seeds = resumed_scope(previous)
    if not inline:
        _ray_init(address)  # before our signal handlers: ray.init installs its own SIGTERM handler
        if address:
            check_store_reachable(store)
    gpus = _gpu_count(None if inline else address)
    # a share no GPU or CPU can serve would leave trials PENDING forever
    check_gpus(suite, gpus, None if inline else _ray_cpu_count())
    started = previous["started_at"] if previous else utcnow()
    plan = plan_suite(suite, store, data_root, force=force, gpus_available=gpus, code=code,
                      run_id=previous["run_id"] if previous else None, only=only, datasets=datasets, seeds=seeds)
    manifest: dict[str, Any] = {
        "run_id": plan.run_id, "suite": suite.name, "suite_path": suite_path, "spec": suite.model_dump(mode="json"),
        "only": sorted(only) if only else None, "only_datasets": sorted(datasets) if datasets else None,
        "only_seeds": sorted(seeds) if seeds else None,
        "kind": kind,
        "started_at": started, "finished_at": None, "status": "running", "mode": "inline" if inline else "ray",
        "ray_address": address, "code": plan.units[0].code if plan.units else code, "force": force,
        "driver": driver_identity(),
        "trials": [{**e, "status": "reused" if e["key"] in plan.skipped else
                    "done" if e["key"] in plan.done else "pending"} for e in plan.entries],
        "stages": [{"name": u.name, "key": k, "dataset": u.dataset, "seed": s, "for": o, "status": "planned"}
                   for u in plan.stage_units for k, s, o in zip(u.keys, u.seeds, u.owners)],
    }
    if previous:
        manifest["resumed"] = [*previous.get("resumed", []), {"at": utcnow(), "driver": manifest["driver"],
                                                              "previous_status": previous.get("status")}]
    store.write_run(manifest)
    store.settle_all_artifacts()  # an import killed mid-swap put a record's artifacts (checkpoints) aside: back first
    n_seeds = sum(len(u.seeds) for u in plan.units)
    log_dir = store.log_dir(plan.run_id)
    what = f"resuming run {plan.run_id}: {len(plan.done)} trial(s) already finished, " if previous else \
        f"run {plan.run_id}: "
    print(f"{what}{n_seeds} trial(s) to run, {len(plan.skipped)} reused from {store.root}"
          + (f"; logs in {log_dir}/" if plan.units else ""), flush=True)
    received: list[str] = []
    stopped: StoreUnwritable | None = None
    with trap_signals(received) as trap:
        try:
            if plan.units:
                with output_to_file(log_dir / "driver.log", loggers=("ray",)) as terminal:
                    progress = RunProgress(n_seeds, terminal)
                    try:
                        if plan.stage_units:
                            _build_stages(plan, manifest, progress, inline)
                        if inline:
                            _run_inline(plan, progress)
                        else:
                            _run_with_ray(plan, suite, store, address, progress)
                    finally:
                        progress.close()
        except KeyboardInterrupt:
            received[:] = received or ["SIGINT"]
            print(f"interrupted ({received[0]}): finished trials are kept; unfinished ones are recorded as "
                  f"interrupted; `bench run --resume {plan.run_id}` continues the run", file=sys.stderr, flush=True)
        except StoreUnwritable as exc:  # a store made read-only (or full) mid-run: a traceback used to end the run,
            stopped = exc               # its manifest left "running"; now it is recorded as interrupted, then said
        finally:
            trap.disarm()  # a signal from here on is noted, but the recording below always completes
            cut = list(received)
            if cut and not inline:
                _ray_shutdown()  # stop the workers before the manifest says what finished
            # Ray Tune may swallow the signal and return normally; `cut` still tells us what happened
            _finish_manifest(manifest, plan, store, bool(cut) or stopped is not None,
                             reason=", ".join(cut) or ("the store stopped taking writes" if stopped else ""))
    if stopped is not None:
        raise stopped
    if received:  # cut the run short, or arrived while its outcome was recorded: the exit code says so
        manifest["signal"] = received[0]
    return manifest


def _build_stages(plan: Plan, manifest: dict[str, Any], progress: RunProgress, inline: bool) -> None:
    """Build the plan's stage units before any trial: in order here (``inline``), or as Ray tasks, one depth
    level at a time (a level's units run in parallel, each with its CPU and GPU share). A unit that fails is
    reported; the trials that need it try once more themselves and record the reason."""
    status = {st["key"]: st for st in manifest.get("stages", [])}
    levels = sorted({u.depth for u in plan.stage_units})
    for depth in levels:
        units = [u for u in plan.stage_units if u.depth == depth]
        if inline:
            outcomes = []
            for u in units:
                with output_to_file(stage_log_path(u)):
                    outcomes.append(execute_stage_unit(u))
        else:
            outcomes = _build_stages_with_ray(units)
        for u, errs in zip(units, outcomes):
            for key, err in zip(u.keys, errs):
                status[key]["status"] = "built" if err is None else "failed"
                if err:
                    status[key]["error"] = err
            bad = [e for e in errs if e]
            seeds = ", ".join(map(str, u.seeds))
            progress.say(f"stage {u.name} on {u.dataset}, seed(s) {seeds}: " +
                         (f"FAILED: {bad[0]} (log: {stage_log_path(u)})" if bad else "built"))


def _build_stages_with_ray(units: list[StageUnit]) -> list[list[str | None]]:
    import ray

    @ray.remote(max_retries=MAX_FAILURES)
    def build(unit: dict[str, Any]) -> list[str | None]:
        with output_to_file(stage_log_path(unit)):
            return execute_stage_unit(unit)

    refs = [build.options(num_cpus=u.cpus, num_gpus=u.gpus).remote(u.model_dump(mode="json")) for u in units]
    out = []
    for u, ref in zip(units, refs):
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayError as exc:  # the worker died twice: the trials will try themselves
            out.append([f"stage build lost: {type(exc).__name__}"] * len(u.seeds))
    return out


def _run_inline(plan: Plan, progress: RunProgress) -> None:
    for unit in plan.units:
        progress.started(len(unit.seeds))
        with output_to_file(trial_log_path(unit)):
            records = execute_unit(unit)
        bad = [r for r in records if not r.ok]
        progress.finished(len(unit.seeds), len(bad))
        if bad:
            progress.trial_failed(unit.model_dump(), bad[0].error or bad[0].status)


class trap_signals:  # noqa: N801 - used as a context manager
    """SIGINT and SIGTERM (Ctrl-C, a job's time limit, `timeout`, a scheduler) become one
    KeyboardInterrupt, with the signal's name kept, so the run records its unfinished trials as
    interrupted by that signal rather than as lost workers. Later signals are noted but do not cut
    short the recording of what finished."""

    def __init__(self, received: list[str]):
        self.received = received
        self.armed = True
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if not self.armed:
            print(f"{name} received while recording what finished; finishing that first", file=sys.stderr,
                  flush=True)
            self.received.append(name)
            return
        first = not self.received
        self.received.append(name)
        if first:
            raise KeyboardInterrupt

    def disarm(self) -> None:
        self.armed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def exit_code_for(manifest: dict[str, Any]) -> int | None:
    """128 + the signal number for a run that got a signal (130 for SIGINT, 143 for SIGTERM)."""
    name = manifest.get("signal")
    return 128 + int(signal.Signals[name]) if name else None


def _finish_manifest(manifest: dict[str, Any], plan: Plan, store: ResultStore, interrupted: bool,
                     reason: str = "") -> None:
    """Fill each trial's outcome as of this run. A trial that this run did not finish is 'interrupted'
    in the manifest, never dropped, and never written over a stored record that is better (the
    store's rule, ``ResultStore.put``); an ok record another live run finished meanwhile is 'reused'."""
    run_id = plan.run_id
    unwritable: StoreUnwritable | None = None
    for entry in manifest["trials"]:
        rec = store.get(entry["key"])
        own = rec if rec is not None and rec.run_id == run_id else store.attempt(entry["key"], run_id)
        if own is not None and own.status != "interrupted":
            entry.update(status=own.status, metrics=own.metrics, error=own.error)
        elif rec is not None and rec.ok and (entry["status"] == "reused" or rec.run_id != entry.get("stored_run_id")):
            entry.update(status="reused", metrics=rec.metrics, reused_from=rec.run_id, error=None)
        else:
            why = "run interrupted" + (f" ({reason})" if reason else "") + " before this trial finished"
            why = why if interrupted else "worker lost before writing a record (killed, out of memory, or node failure)"
            if (rec is None or rec.status == "interrupted") and unwritable is None:
                try:
                    store.put(ResultRecord(key=entry["key"], suite=manifest["suite"], run_id=run_id,
                                           method=entry["method"], variant=entry["variant"], dataset=entry["dataset"],
                                           seed=entry["seed"], config=entry["config"], protocol=entry["protocol"],
                                           data_md5=entry["data_md5"], status="interrupted", error=why,
                                           env=dict(manifest.get("code") or {})))
                except StoreUnwritable as exc:  # records/ no longer takes writes: the manifest below still may
                    unwritable = exc
            entry.update(status="interrupted", metrics={}, error=why)
    # the store stopped taking writes (the unfinished trials' records could not be written): the run is resumable, as
    # the one-line error says, also when its trials failed in Ray workers rather than here
    interrupted = interrupted or unwritable is not None
    for st in manifest.get("stages", []):  # a build the run never reached (cut before it); a resume plans it again
        if st["status"] == "planned":
            st["status"] = "interrupted" if interrupted else "not built"
    manifest["finished_at"] = utcnow()
    manifest["status"] = "interrupted" if interrupted else "finished"
    store.write_run(manifest)
    append_run_safely(store, manifest)  # history database (bench.history); the JSON above stays canonical
    if unwritable is not None:
        raise unwritable


# -- unfinished runs and --resume ------------------------------------------------------------------
def unfinished_runs(store: ResultStore, suite: str) -> list[tuple[dict[str, Any], str]]:
    """Runs of ``suite`` since its latest finished run that did not finish, oldest first, each with why:
    interrupted by a signal, or 'running' with a driver that is gone. (A driver on another host cannot be
    checked: left out.)"""
    out = []
    for man in store.runs(suite):
        if man.get("status") == "finished":  # a later complete run supersedes the unfinished ones before it
            out = []
        elif man.get("status") == "interrupted":
            out.append((man, "was interrupted"))
        elif man.get("status") == "running" and driver_alive(man.get("driver")) is False:
            d = man.get("driver") or {}
            out.append((man, f"lost its driver (pid {d.get('pid')} on {d.get('host')} is gone)"))
    return out


def note_unfinished(store: ResultStore, suite: str) -> None:
    runs = unfinished_runs(store, suite)
    if runs:
        man, why = runs[-1]
        print(f"note: run {man['run_id']} of suite {suite!r} {why} before finishing; `bench run ... --resume` "
              f"continues it (its finished trials are not rerun); this new run starts from scratch",
              file=sys.stderr, flush=True)


def resumable_run(store: ResultStore, suite: str, run_id: str | None, code: dict[str, Any]) -> dict[str, Any]:
    if run_id:
        man = next((m for m in store.runs() if m["run_id"] == run_id), None)
        if man is None:
            raise BenchError(f"--resume {run_id}: no such run in {store.runs_dir}")
        if man.get("suite") != suite:
            raise BenchError(f"--resume {run_id}: that run is of suite {man.get('suite')!r}, not {suite!r}; "
                             "give its suite file")
        if man.get("status") == "finished":
            raise BenchError(f"--resume {run_id}: that run finished; nothing to resume (`bench run` re-runs what "
                             "failed)")
        if man.get("status") == "running" and driver_alive(man.get("driver")) is not False:
            d = man.get("driver") or {}
            raise BenchError(f"--resume {run_id}: its driver (pid {d.get('pid')} on {d.get('host')}) may still be "
                             "running; stop it first (Ctrl-C records what finished)")
    else:
        runs = unfinished_runs(store, suite)
        if not runs:
            raise BenchError(f"--resume: no unfinished run of suite {suite!r} in {store.runs_dir}; run without "
                             "--resume")
        man = runs[-1][0]
    theirs = (man.get("code") or {}).get("code_version")
    if theirs != code.get("code_version"):
        raise BenchError(f"--resume {man['run_id']}: that run used code {theirs}, this is "
                         f"{code.get('code_version')}; check out its code to resume it, or start a new run")
    return man


def check_store_reachable(store: ResultStore) -> None:
    """Before scheduling on a cluster: every alive node must see this store at the same path (trials
    write their records there). A probe file written here is looked for on each node."""
    import ray

    probe = store.root / f".probe-{secrets.token_hex(4)}"
    store.root.mkdir(parents=True, exist_ok=True)
    probe.write_text("clusterbench")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]

        @ray.remote(num_cpus=0)
        def sees(path: str) -> tuple[str, bool]:
            import socket

            return socket.gethostname(), Path(path).is_file()

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe)) for n in nodes]
        blind = [f"{n.get('NodeManagerAddress')} ({host})" for n, (host, ok) in zip(nodes, ray.get(refs, timeout=120))
                 if not ok]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise BenchError(f"store {store.root} is not reachable from Ray node(s) {', '.join(blind)}: every node must "
                         "mount the store at the same path (shared storage), or pass --store such a path")


def _ray_init(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # we pass absolute paths; keep cwd
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    passed = {k: v for k, v in os.environ.items() if k in PASSED_ENV}
    # log_to_driver off: each trial writes its output to its own log file (bench.progress), and the
    # workers' other output stays in Ray's session logs instead of flooding the terminal
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": False, "configure_logging": False,
                              "runtime_env": {"env_vars": passed} if passed else None}
    # our SIGINT handler (bench.runner.trap_signals) records the reason and stops Ray itself
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if not address:  # a local instance of our own: reaped if this driver dies without shutting it down
        from bench import watchdog

        watchdog.start()
    try:
        ray.init(address=address, **kwargs) if address else ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise BenchError(f"could not start or join {where}: {exc}; check `ray status`, or use --inline") from None


def _ray_shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _ray_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    with output_to_file(trial_log_path(config["unit"])):  # the worker's output goes to the trial's log
        recs = execute_unit(config["unit"])
    ok = [r for r in recs if r.ok]
    out: dict[str, Any] = {"n_ok": len(ok), "n_failed": len(recs) - len(ok),
                           "error": next((r.error or r.status for r in recs if not r.ok), "")}
    if ok:
        for m in ("acc", "nmi", "ari"):
            out[m] = sum(r.metrics[m] for r in ok) / len(ok)
    tune.report(out)


def _progress_callback(progress: RunProgress):
    """A Ray Tune callback (driver side) that moves the progress view and reports failed trials."""
    from ray import tune

    class ProgressCallback(tune.Callback):
        def __init__(self, view: RunProgress):
            self.view = view

        def __getstate__(self):  # Tune pickles its callbacks with the experiment state; the view stays here
            return {"view": None}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.view.started(len(trial.config["unit"]["seeds"]))

        def on_trial_complete(self, iteration, trials, trial, **info):
            unit, result = trial.config["unit"], trial.last_result or {}
            self.view.finished(len(unit["seeds"]), int(result.get("n_failed", 0)))
            if result.get("n_failed"):
                self.view.trial_failed(unit, result.get("error") or "failed")

        def on_trial_error(self, iteration, trials, trial, **info):
            unit = trial.config["unit"]
            self.view.finished(len(unit["seeds"]), len(unit["seeds"]))
            err = str(getattr(trial, "error_msg", "") or "").strip().splitlines()
            self.view.trial_failed(unit, "worker lost before writing a record (killed, out of memory, or node "
                                         "failure)" + (f": {err[-1]}" if err else ""))

    return ProgressCallback(progress)


def _run_with_ray(plan: Plan, suite: SuiteSpec, store: ResultStore, address: str | None,
                  progress: RunProgress) -> None:
    from ray import tune

    _ray_init(address)
    units = [u.model_dump(mode="json") for u in plan.units]
    trainable = tune.with_resources(
        _ray_trainable, lambda cfg: {"cpu": cfg["unit"]["cpus"], "gpu": cfg["unit"]["gpus"]})

    def name(trial) -> str:
        return trial_name(trial.config["unit"])

    tuner = tune.Tuner(
        trainable,
        param_space={"unit": tune.grid_search(units)},
        tune_config=tune.TuneConfig(max_concurrent_trials=suite.resources.max_concurrent_trials,
                                    trial_name_creator=name, trial_dirname_creator=name),
        # a trial whose worker dies is retried (once): it reuses what its seeds recorded and resumes from
        # their checkpoints; dying again, it is recorded as interrupted
        run_config=tune.RunConfig(name=f"{plan.run_id}-{secrets.token_hex(2)}", storage_path=str(store.root / "ray"),
                                  failure_config=tune.FailureConfig(max_failures=MAX_FAILURES), verbose=0,
                                  callbacks=[_progress_callback(progress)]),
    )
    results = tuner.fit()
    for res in results:
        if res.error is not None:
            u = res.config["unit"] if res.config else {}
            log.error("trial %s/%s on %s seeds %s lost: %s", u.get("method"), u.get("variant"), u.get("dataset"),
                      u.get("seeds"), str(res.error).splitlines()[0] if str(res.error) else type(res.error).__name__)

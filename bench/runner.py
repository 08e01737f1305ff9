"""Suite -> trial units -> records, inline or through Ray Tune.

Planning happens on the driver and checks everything before anything runs: method, variant and
dataset names, every config key and type, the data files' md5s. Then each (method, variant,
dataset) gets one unit per seed (or per batch of seeds for methods that batch them), identical
trials already stored are skipped unless ``force``, and the units run:

* inline, one after another in this process (debugging, tests), or
* as a Ray Tune grid: local Ray by default, ``address=`` joins an existing cluster. Each trial asks
  for ``cpus_per_trial`` CPUs and a (fractional) GPU share; Ray packs fractional trials onto GPUs.

A run manifest (bench.store) records the plan at the start and each trial's outcome at the end,
including trials whose worker died before writing a record (status "interrupted").
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import dataset_identity, default_cache_dir, get_dataset_spec
from bench.errors import BenchError
from bench.history import append_run_safely
from bench.progress import RunProgress, output_to_file, trial_log_path, trial_name
from bench.records import ResultRecord, trial_key
from bench.registry import get_method, resolve_config
from bench.store import ResultStore
from bench.suite import SuiteSpec
from bench.trial import TrialUnit, execute_unit, utcnow

log = logging.getLogger("bench.runner")
#: environment the workers need to see as the driver does (plugins, code version, data and cache paths)
PASSED_ENV = ("BENCH_PLUGINS", "BENCH_CODE_VERSION", "BENCH_DATA", "BENCH_CACHE")


@dataclass
class Plan:
    run_id: str
    units: list[TrialUnit]
    skipped: list[str] = field(default_factory=list)  # keys reused from the store
    entries: list[dict[str, Any]] = field(default_factory=list)  # one per (trial, seed), for the manifest


def dataset_md5(name: str, data_root: Path) -> str:
    return dataset_identity(get_dataset_spec(name), data_root)[0]


def _gpu_count(address: str | None) -> float:
    if address is None:
        import torch

        return float(torch.cuda.device_count())
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


@dataclass
class GridCell:
    """One (method, variant, dataset) of a suite's grid with its resolved config and protocol; with a
    seed it is a trial. Planning and the store's view of a suite (bench.view) both read it from here."""

    entry: Any  # the suite's MethodEntry
    variant: str
    dataset: str
    config: dict[str, Any]
    protocol: dict[str, Any]

    @property
    def method(self) -> str:
        return self.entry.name


def suite_grid(suite: SuiteSpec, only: set[str] | None = None) -> list[GridCell]:
    """Every (method, variant, dataset) of the suite (only the methods in ``only`` when given), with
    config and protocol resolved and checked (BenchError on an unknown name, key or type)."""
    cells = []
    for entry in suite.methods:
        if only and entry.name not in only:
            continue
        cls = get_method(entry.name)
        datasets = entry.datasets or suite.datasets
        unknown = [d for d in datasets if d not in suite.datasets]
        if unknown:
            raise BenchError(f"method {entry.name!r} lists datasets {unknown} that are not in the suite's datasets "
                             f"{suite.datasets}")
        for variant in entry.variants:
            for ds in datasets:
                overrides = {**entry.config, **entry.config_by_dataset.get(ds, {})}
                config = resolve_config(entry.name, variant, ds, overrides).model_dump(mode="json")
                protocol = {
                    "train_split": suite.protocol.train_split or cls.train_split,
                    "eval_split": suite.protocol.eval_split or cls.eval_split,
                    "n_clusters": get_dataset_spec(ds).n_classes,
                    **cls.protocol_fields(cls.Config(**config)),
                }
                cells.append(GridCell(entry, variant, ds, config, protocol))
    return cells


def plan_suite(suite: SuiteSpec, store: ResultStore, data_root: Path, *, force: bool = False,
               gpus_available: float = 0.0, code: dict[str, Any] | None = None,
               cache_dir: Path | None = None, only: set[str] | None = None) -> Plan:
    from bench.provenance import code_version

    code = code or code_version()
    run_id = f"{suite.name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    md5s = {}
    for ds in suite.datasets:
        md5s[ds] = dataset_md5(ds, data_root)  # raises on unknown name, missing file, md5 mismatch
    plan = Plan(run_id=run_id, units=[])
    for cell in suite_grid(suite, only):
        entry, variant, ds, config, protocol = cell.entry, cell.variant, cell.dataset, cell.config, cell.protocol
        cls = get_method(entry.name)
        gpus = entry.gpus_per_trial if entry.gpus_per_trial is not None else suite.resources.gpus_per_trial
        if gpus is None:
            gpus = cls.gpu_share if gpus_available > 0 and suite.device != "cpu" else 0.0
        todo: list[tuple[int, str]] = []
        for seed in suite.seeds:
            key = trial_key(method=entry.name, variant=variant, dataset=ds, seed=seed, config=config,
                            protocol=protocol, data_md5=md5s[ds], code_version=str(code["code_version"]))
            plan.entries.append({"key": key, "method": entry.name, "variant": variant, "dataset": ds,
                                 "seed": seed, "config": config, "protocol": protocol,
                                 "data_md5": md5s[ds]})
            if not force and store.has_ok(key):
                plan.skipped.append(key)
            else:
                todo.append((seed, key))
        batch = max(1, entry.seed_batch or 1) if cls.supports_seed_batch else 1
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            plan.units.append(TrialUnit(
                method=entry.name, variant=variant, dataset=ds, seeds=[s for s, _ in chunk],
                keys=[k for _, k in chunk], config=config, protocol=protocol, data_md5=md5s[ds], code=code,
                store_root=str(store.root), data_root=str(data_root),
                cache_dir=str(cache_dir or default_cache_dir()), device=suite.device,
                deterministic=suite.deterministic, cpus=suite.resources.cpus_per_trial, gpus=float(gpus),
                suite=suite.name, run_id=run_id))
    return plan


def run_suite(suite: SuiteSpec, *, store: ResultStore, data_root: Path, inline: bool = False,
              address: str | None = None, force: bool = False, suite_path: str | None = None,
              code: dict[str, Any] | None = None, only: set[str] | None = None,
              kind: str = "suite") -> dict[str, Any]:
    """Plan, run and record a suite (only the methods in ``only`` when given; the manifest keeps the
    whole suite's spec, so the report shows the whole grid). ``kind`` is "trial" for `bench trial`.
    Returns the finished run manifest."""
    if address and inline:
        raise BenchError("--inline runs in this process; it cannot be combined with --address")
    if address:
        _ray_init(address)
    gpus = _gpu_count(None if inline else address)
    plan = plan_suite(suite, store, data_root, force=force, gpus_available=gpus, code=code, only=only)
    manifest: dict[str, Any] = {
        "run_id": plan.run_id, "suite": suite.name, "suite_path": suite_path, "spec": suite.model_dump(mode="json"),
        "only": sorted(only) if only else None, "kind": kind,
        "started_at": utcnow(), "finished_at": None, "status": "running", "mode": "inline" if inline else "ray",
        "ray_address": address, "code": plan.units[0].code if plan.units else code,
        "trials": [{**e, "status": "reused" if e["key"] in plan.skipped else "pending"} for e in plan.entries],
    }
    store.write_run(manifest)
    n_seeds = sum(len(u.seeds) for u in plan.units)
    log_dir = store.log_dir(plan.run_id)
    print(f"run {plan.run_id}: {n_seeds} trial(s) to run, {len(plan.skipped)} reused from {store.root}"
          + (f"; logs in {log_dir}/" if plan.units else ""), flush=True)
    interrupted = False
    received: list[str] = []
    restore = _trap_sigterm(received)
    try:
        if plan.units:
            if not inline:
                import ray  # noqa: F401 - importing Ray sets up its `ray` logger, which output_to_file redirects
            with output_to_file(log_dir / "driver.log", loggers=("ray",)) as terminal:
                progress = RunProgress(n_seeds, terminal)
                try:
                    if inline:
                        _run_inline(plan, progress)
                    else:
                        _run_with_ray(plan, suite, store, address, progress)
                finally:
                    progress.close()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: finished trials are kept; unfinished ones are recorded as interrupted", file=sys.stderr)
    finally:
        restore()
        # Ray Tune may swallow the signal and return normally; the flag still tells us what happened
        _finish_manifest(manifest, plan, store, interrupted or bool(received), reason=", ".join(received))
    return manifest


def _run_inline(plan: Plan, progress: RunProgress) -> None:
    for unit in plan.units:
        progress.started(len(unit.seeds))
        with output_to_file(trial_log_path(unit)):
            records = execute_unit(unit)
        bad = [r for r in records if not r.ok]
        progress.finished(len(unit.seeds), len(bad))
        if bad:
            progress.trial_failed(unit.model_dump(), bad[0].error or bad[0].status)


def _trap_sigterm(received: list[str]):
    """Turn SIGTERM (a job's time limit, `timeout`, a scheduler) into KeyboardInterrupt, so the run
    records its unfinished trials as interrupted by the signal rather than as lost workers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _finish_manifest(manifest: dict[str, Any], plan: Plan, store: ResultStore, interrupted: bool,
                     reason: str = "") -> None:
    """Fill each trial's outcome; a trial with no record from this run is 'interrupted', never dropped."""
    for entry in manifest["trials"]:
        rec = store.get(entry["key"])
        if entry["status"] == "reused" and rec is not None:
            entry["metrics"] = rec.metrics
            entry["reused_from"] = rec.run_id
            continue
        if rec is None or rec.run_id != plan.run_id:
            why = "run interrupted" + (f" ({reason})" if reason else "") + " before this trial finished"
            why = why if interrupted else "worker lost before writing a record (killed, out of memory, or node failure)"
            rec = ResultRecord(key=entry["key"], suite=manifest["suite"], run_id=plan.run_id,
                               method=entry["method"], variant=entry["variant"], dataset=entry["dataset"],
                               seed=entry["seed"], config=entry["config"], protocol=entry["protocol"],
                               data_md5=entry["data_md5"], status="interrupted", error=why,
                               env=dict(manifest.get("code") or {}))
            store.put(rec)
        entry["status"] = rec.status
        entry["metrics"] = rec.metrics
        entry["error"] = rec.error
    manifest["finished_at"] = utcnow()
    manifest["status"] = "interrupted" if interrupted else "finished"
    store.write_run(manifest)
    append_run_safely(store, manifest)  # history database (bench.history); the JSON above stays canonical


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
    try:
        ray.init(address=address, **kwargs) if address else ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise BenchError(f"could not start or join {where}: {exc}; check `ray status`, or use --inline") from None


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
        run_config=tune.RunConfig(name=plan.run_id, storage_path=str(store.root / "ray"),
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                  callbacks=[_progress_callback(progress)]),
    )
    results = tuner.fit()
    for res in results:
        if res.error is not None:
            u = res.config["unit"] if res.config else {}
            log.error("trial %s/%s on %s seeds %s lost: %s", u.get("method"), u.get("variant"), u.get("dataset"),
                      u.get("seeds"), str(res.error).splitlines()[0] if str(res.error) else type(res.error).__name__)

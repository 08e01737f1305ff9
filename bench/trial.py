"""One trial unit: load data once, run a method for one seed (or a batch of seeds), score, record.

A unit is plain JSON-able data (:class:`TrialUnit`) so Ray can ship it to any worker. The worker
writes each seed's :class:`~bench.records.ResultRecord` itself, atomically, the moment that seed
finishes; a crash later in the unit loses nothing already written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import random
import resource
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import Timeout
from pydantic import BaseModel

from bench.context import TrialContext
from bench.data import load_dataset
from bench.errors import BenchError
from bench.method import ClusteringData, ClusterOutput
from bench.metrics import cluster_profile, evaluate
from bench.provenance import environment
from bench.records import ResultRecord
from bench.registry import get_method
from bench.store import ResultStore

log = logging.getLogger("bench.trial")


class _Unit(BaseModel):
    """What every unit of work carries to a worker: which seeds of which data, where the store and data are, and
    the resources it asked for. Plain JSON-able data so Ray can ship it; resolved on the driver."""

    dataset: str
    seeds: list[int]
    keys: list[str]  # per seed: the record key (trial units) or the stage key (stage units)
    protocol: dict[str, Any]
    data_md5: str
    code: dict[str, Any]  # code_version, git_commit, git_dirty
    store_root: str
    data_root: str
    cache_dir: str | None = None
    device: str = "auto"
    deterministic: bool = False
    cpus: float = 1.0
    gpus: float = 0.0
    run_id: str | None = None


class TrialUnit(_Unit):
    """Everything a worker needs to run one method on some seeds."""

    method: str
    variant: str = "default"
    config: dict[str, Any]  # fully resolved
    suite: str | None = None
    #: per key, the run whose record the store held at planning (None: no record). When this unit gets the
    #: key's lock, an ok record of any other run (another live run computed it meanwhile) or of this very
    #: run (a retried worker) is reused instead of computed again.
    stored_run_ids: list[str | None] = []


class StageUnit(_Unit):
    """One planned build of a stage for one or more seeds (several when the stage is batchable), run before the
    trials that read it. ``owners``: per seed, the trial key the stage is built for (its record says
    ``reused: false``; every other trial that reads it says ``reused: true``)."""

    request: dict[str, Any]  # StageRequest.to_dict()
    owners: list[str]
    depth: int = 1

    @property
    def name(self) -> str:
        return self.request["stage"]


def stage_log_path(unit: StageUnit | dict[str, Any]) -> Path:
    u = unit if isinstance(unit, dict) else unit.model_dump()
    name = f"stage-{u['request']['stage']}-{u['dataset']}-s{'_'.join(map(str, u['seeds']))}.log"
    return Path(u["store_root"]) / "logs" / str(u["run_id"]) / name


@contextlib.contextmanager
def cpu_threads(cpus: float):
    """The unit's CPU share as torch's intra-op thread count, restored afterwards: an inline run must not leave
    its driver (or a test process) at one thread, since float results depend on the thread count."""
    old = torch.get_num_threads()
    if cpus >= 1:
        torch.set_num_threads(max(1, int(cpus)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def execute_stage_unit(unit: StageUnit | dict[str, Any]) -> list[str | None]:
    """Build (or find) the unit's stage for each seed; returns per seed None (stored) or the error line. Never
    raises for a build error: the trials that need the stage then try once more themselves and fail with it."""
    unit = unit if isinstance(unit, StageUnit) else StageUnit.model_validate(unit)
    with cpu_threads(unit.cpus):
        return _execute_stage_unit(unit)


def _execute_stage_unit(unit: StageUnit) -> list[str | None]:
    from bench.stages import StageRequest

    store = ResultStore(unit.store_root)
    try:
        device = pick_device(unit.device)
        request = StageRequest.from_dict(unit.request)
        data, _ = _load_data(unit.dataset, unit.protocol, unit.data_md5, unit.data_root, unit.cache_dir)
    except Exception as exc:  # noqa: BLE001
        return [_error_line(exc)] * len(unit.seeds)
    ctxs = [TrialContext(seed=s, device=device, artifact_dir=store.root / "artifacts" / f"stage-{k}",
                         stage_dir=store.stage_dir, data_md5=unit.data_md5, code_version=str(unit.code["code_version"]),
                         logger=log, key=owner, run_id=unit.run_id).bind(data, {"target": request})
            for s, k, owner in zip(unit.seeds, unit.keys, unit.owners)]
    seed_everything(unit.seeds[0], unit.deterministic)
    outs = TrialContext.batch_stage(ctxs, "target")
    return [_error_line(o) if isinstance(o, BaseException) else None for o in outs]


def _load_data(dataset: str, protocol: dict[str, Any], md5: str, data_root: str,
               cache_dir: str | None) -> tuple[ClusteringData, torch.Tensor]:
    """The trial's ClusteringData (no labels) and the eval labels, checked against the planned md5."""
    loaded = load_dataset(dataset, Path(data_root), Path(cache_dir) if cache_dir else None)
    if loaded.md5 != md5:
        raise BenchError(f"dataset {dataset!r} changed between planning and running (md5 {md5} -> {loaded.md5}); "
                         "re-run `bench run`")
    x_train, _ = loaded.split(protocol["train_split"])
    x_eval, y_eval = loaded.split(protocol["eval_split"])
    x_unlabeled = loaded.splits.x_unlabeled
    n = protocol.get("max_images")
    if n:  # smoke runs: the first n images of each split (the record's protocol says so)
        same = protocol["train_split"] == protocol["eval_split"]
        x_train, x_eval, y_eval = x_train[:n], x_eval[:n], y_eval[:n]
        x_eval = x_train if same else x_eval
        x_unlabeled = None if x_unlabeled is None else x_unlabeled[:n]
    data = ClusteringData(dataset=dataset, x_train=x_train, x_eval=x_eval, n_clusters=int(protocol["n_clusters"]),
                          train_split=protocol["train_split"], eval_split=protocol["eval_split"], md5=loaded.md5,
                          x_unlabeled=x_unlabeled, max_images=n)
    return data, y_eval


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")  # orders runs within a second


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def pick_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise BenchError("device 'cuda' was asked for but torch sees no GPU; set device: auto or cpu in the suite")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]


def execute_unit(unit: TrialUnit | dict[str, Any]) -> list[ResultRecord]:
    """Run every seed of the unit; always returns one record per seed (ok, failed or interrupted).

    The unit holds its keys' locks (``store.key_lock``, taken in sorted order, so two units never
    deadlock) while it computes. A second live run that reaches the same key waits, then finds the
    first run's ok record and reuses it (and says so) instead of computing the key twice."""
    unit = unit if isinstance(unit, TrialUnit) else TrialUnit.model_validate(unit)
    store = ResultStore(unit.store_root)
    with contextlib.ExitStack() as held:
        for key in sorted(set(unit.keys)):
            lock = store.key_lock(key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("%s/%s on %s: key %s is being computed by another run; waiting for it", unit.method,
                         unit.variant, unit.dataset, key)
                lock.acquire()
            held.callback(lock.release)
        stored = dict(zip(unit.keys, unit.stored_run_ids or [None] * len(unit.keys)))
        reused = {k: r for k in unit.keys if (r := _reusable(store, unit, k, stored[k])) is not None}
        for seed, key in zip(unit.seeds, unit.keys):
            if key in reused:
                log.info("%s/%s on %s seed %d: reusing the ok record of run %s (finished %s) instead of computing "
                         "it again", unit.method, unit.variant, unit.dataset, seed, reused[key].run_id,
                         reused[key].timings.get("finished_at", "?"))
        todo = [(s, k) for s, k in zip(unit.seeds, unit.keys) if k not in reused]
        if not todo:
            return [reused[k] for k in unit.keys]
        rest = unit.model_copy(update={"seeds": [s for s, _ in todo], "keys": [k for _, k in todo],
                                       "stored_run_ids": [stored[k] for _, k in todo]})
        done = {r.key: r for r in _execute_locked(rest, store)}
        return [reused.get(k) or done[k] for k in unit.keys]


def _reusable(store: ResultStore, unit: TrialUnit, key: str, stored_run_id: str | None) -> ResultRecord | None:
    rec = store.get(key)
    if rec is not None and rec.ok and (rec.run_id == unit.run_id or rec.run_id != stored_run_id):
        return rec
    return None


def _execute_locked(unit: TrialUnit, store: ResultStore) -> list[ResultRecord]:
    with cpu_threads(unit.cpus):
        return _execute_locked_threads(unit, store)


def _execute_locked_threads(unit: TrialUnit, store: ResultStore) -> list[ResultRecord]:
    device = pick_device(unit.device)
    cls = get_method(unit.method)
    t_load = time.perf_counter()
    base = dict(suite=unit.suite, run_id=unit.run_id, method=unit.method, variant=unit.variant,
                dataset=unit.dataset, config=unit.config, protocol=unit.protocol, data_md5=unit.data_md5,
                selection_rule=cls.selection_rule)
    try:
        data, y_eval = _load_data(unit.dataset, unit.protocol, unit.data_md5, unit.data_root, unit.cache_dir)
    except Exception as exc:  # a data error fails every seed of the unit, visibly
        recs = [_failed(base, seed, key, exc, unit) for seed, key in zip(unit.seeds, unit.keys)]
        for r in recs:
            store.put(r)
        return recs
    load_s = time.perf_counter() - t_load
    y_eval_np = y_eval.numpy()

    def scorer(pred: np.ndarray) -> dict[str, float]:
        return evaluate(y_eval_np, pred)

    config = cls.Config.model_validate(unit.config)  # resolved on the driver; checked again after the trip
    stage_requests = cls.stages(config)
    ctxs = [TrialContext(seed=s, device=device, artifact_dir=store.artifact_dir(k), stage_dir=store.stage_dir,
                         data_md5=data.md5, code_version=str(unit.code["code_version"]), scorer=scorer,
                         logger=log, key=k, run_id=unit.run_id).bind(data, stage_requests)
            for s, k in zip(unit.seeds, unit.keys)]
    env = {**unit.code, **environment(str(device))}
    batched = len(ctxs) > 1 and cls.supports_seed_batch
    groups = [ctxs] if batched else [[c] for c in ctxs]
    records: list[ResultRecord] = []
    for group in groups:
        started = utcnow()
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seed_everything(group[0].seed, unit.deterministic)
        method = cls(config.model_copy(deep=True))
        outputs: list[ClusterOutput | BaseException]
        try:
            outputs = list(method.run_seeds(data, group) if batched else [method.run(data, group[0])])
        except KeyboardInterrupt as exc:
            for ctx in group:
                rec = _failed(base, ctx.seed, _key(unit, ctx.seed), exc, unit, status="interrupted")
                store.put(rec)
            raise
        except Exception as exc:  # noqa: BLE001 - any method error becomes a failed record
            log.error("%s on %s seed(s) %s failed: %s", unit.method, unit.dataset, [c.seed for c in group],
                      _error_line(exc))
            log.debug("%s", traceback.format_exc())
            outputs = [exc] * len(group)
        fit_s = time.perf_counter() - t0
        peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        for ctx, out in zip(group, outputs):
            key = _key(unit, ctx.seed)
            if ctx.failure is not None:
                out = ctx.failure  # a seed masked out of its batch (ctx.fail) fails alone, with its own reason
            if isinstance(out, BaseException):
                rec = _failed(base, ctx.seed, key, out, unit, curve=ctx.curve)
                if ctx.failed_at:
                    rec.info["failed_at"] = dict(ctx.failed_at)
            else:
                rec = _scored(base, ctx, key, out, y_eval_np, unit)
            rec.stages = list(ctx.stages_used)
            rec.timings = {"started_at": started, "finished_at": utcnow(), "load_s": round(load_s, 3),
                           "fit_s": round(fit_s, 3), "wall_s": round(fit_s + load_s, 3),
                           "seeds_in_batch": len(group)}
            rec.resources = {"device": str(device), "peak_rss_mb": round(_peak_rss_mb(), 1),
                             "peak_gpu_mem_mb": None if peak_gpu is None else round(peak_gpu, 1),
                             "cpus": unit.cpus, "gpus": unit.gpus}
            rec.env = env
            if not store.put(rec):
                log.warning("%s/%s on %s seed %d: this attempt (%s) is not stored over the better record of run "
                            "%s; it is kept under %s", unit.method, unit.variant, unit.dataset, ctx.seed, rec.status,
                            (store.get(key) or rec).run_id, store.attempt_path(key, rec.run_id).parent)
            records.append(rec)
            if rec.ok:
                log.info("%s/%s on %s seed %d: ACC %.4f NMI %.4f ARI %.4f (%.1fs)", unit.method, unit.variant,
                         unit.dataset, ctx.seed, rec.metrics["acc"], rec.metrics["nmi"], rec.metrics["ari"], fit_s)
        for ctx in group:  # every seed's record is written: the group's progress checkpoints are done with
            ctx.remove_checkpoints()
    return records


def _key(unit: TrialUnit, seed: int) -> str:
    return unit.keys[unit.seeds.index(seed)]


def _scored(base: dict, ctx: TrialContext, key: str, out: ClusterOutput, y_eval: np.ndarray,
            unit: TrialUnit) -> ResultRecord:
    labels = out.labels_numpy()
    if labels.shape[0] != y_eval.shape[0]:
        exc = ValueError(f"method returned {labels.shape[0]} labels for {y_eval.shape[0]} eval images")
        return _failed(base, ctx.seed, key, exc, unit, curve=ctx.curve)
    try:
        ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
        np.save(ctx.artifact_dir / "pred.npy", labels.astype(np.int32))
    except OSError as exc:  # the store's artifacts/ made read-only (or full) mid-run: one line, not a traceback
        from bench.store import StoreUnwritable

        raise StoreUnwritable.at(ctx.artifact_dir / "pred.npy", exc) from None
    info = dict(out.info)
    info["n_clusters_found"] = int(np.unique(labels).size)
    profile = cluster_profile(labels, int(unit.protocol["n_clusters"]), y_eval)
    degenerate = bool(profile.pop("degenerate"))
    if degenerate:
        log.warning("%s on %s seed %d is degenerate: %d of %d clusters non-empty, the largest holds %.0f%%",
                    unit.method, unit.dataset, ctx.seed, profile["n_nonempty"], profile["n_clusters"],
                    100 * profile["largest_share"])
    return ResultRecord(key=key, seed=ctx.seed, status="ok", metrics=evaluate(y_eval, labels), curve=ctx.curve,
                        info=info, cluster_profile=profile, degenerate=degenerate, **base)


def _failed(base: dict, seed: int, key: str, exc: BaseException, unit: TrialUnit, status: str = "failed",
            curve: list | None = None) -> ResultRecord:
    return ResultRecord(key=key, seed=seed, status=status, error=_error_line(exc), curve=curve or [],
                        env=dict(unit.code), **base)

"""Suite -> plan: every (method, variant, dataset, seed) trial with its resolved config and key, the stage graph
the trials need, and what the store already holds.

Planning happens on the driver and checks everything before anything runs: method, variant and dataset
names, every config key and type, the data files' md5s. Each (method, variant, dataset) gets one unit per
seed (or per batch of seeds for methods that batch them); identical trials already stored are skipped unless
``force``; a resumed run's finished trials are never planned again. The stages the trials to run read
(``Method.stages``) are expanded into one graph, deduplicated across methods and variants (a stage key does
not depend on who asks), and the nodes the store lacks become stage units built before the trials.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import dataset_identity, default_cache_dir, get_dataset_spec
from bench.errors import BenchError
from bench.method import split_id
from bench.records import trial_key
from bench.registry import get_method, resolve_config
from bench.store import ResultStore
from bench.suite import SuiteSpec
from bench.trial import StageUnit, TrialUnit

#: most seeds of a batchable stage (the stacked autoencoder) trained together by one stage unit
STAGE_SEED_BATCH = 10

@dataclass
class Plan:
    run_id: str
    units: list[TrialUnit]
    skipped: list[str] = field(default_factory=list)  # keys reused from the store
    done: list[str] = field(default_factory=list)  # keys a resumed run had already finished
    entries: list[dict[str, Any]] = field(default_factory=list)  # one per (trial, seed), for the manifest
    #: stage builds the trials need that the store lacks, deduplicated across methods and variants; each is
    #: built before the trials that read it (in order of depth: upstream stages first)
    stage_units: list[StageUnit] = field(default_factory=list)


def dataset_md5(name: str, data_root: Path) -> str:
    return dataset_identity(get_dataset_spec(name), data_root)[0]


@dataclass
class GridCell:
    """One (method, variant, dataset) of a suite's grid with its resolved config and protocol; with a
    seed it is a trial. Planning and the store's view of a suite (bench.view) both read it from here."""

    entry: Any  # the suite's MethodEntry
    variant: str
    dataset: str
    config: dict[str, Any]  # ``typed`` as JSON: what records store and keys hash
    protocol: dict[str, Any]
    typed: Any = None  # the method's Config instance, resolved once here (paper <- dataset <- variant <- suite)

    @property
    def method(self) -> str:
        return self.entry.name


def suite_grid(suite: SuiteSpec, only: set[str] | None = None, datasets: set[str] | None = None) -> list[GridCell]:
    """Every (method, variant, dataset) of the suite (only the methods, or ``method:variant``, in ``only`` and the
    datasets in ``datasets`` when given), with config and protocol resolved and checked (BenchError on an unknown name,
    key or type)."""
    cells = []
    for entry in suite.methods:
        # `--only METHOD` takes every variant, `--only METHOD:VARIANT` that one
        variants = [v for v in entry.variants if not only or entry.name in only or f"{entry.name}:{v}" in only]
        if not variants:
            continue
        cls = get_method(entry.name)
        datasets_of_entry = entry.datasets or suite.datasets
        unknown = [d for d in datasets_of_entry if d not in suite.datasets]
        if unknown:
            raise BenchError(f"method {entry.name!r} lists datasets {unknown} that are not in the suite's datasets "
                             f"{suite.datasets}")
        for variant in variants:
            for ds in datasets_of_entry:
                if datasets and ds not in datasets:
                    continue
                overrides = {**entry.config, **entry.config_by_dataset.get(ds, {})}
                typed = resolve_config(entry.name, variant, ds, overrides)
                protocol = {
                    "train_split": suite.protocol.train_split or cls.train_split,
                    "eval_split": suite.protocol.eval_split or cls.eval_split,
                    "n_clusters": get_dataset_spec(ds).n_classes,
                    **cls.protocol_fields(typed),
                }
                if suite.protocol.max_images:
                    protocol["max_images"] = suite.protocol.max_images
                cells.append(GridCell(entry, variant, ds, typed.model_dump(mode="json"), protocol, typed))
    return cells


def plan_suite(suite: SuiteSpec, store: ResultStore, data_root: Path, *, force: bool = False,
               gpus_available: float = 0.0, code: dict[str, Any] | None = None,
               cache_dir: Path | None = None, run_id: str | None = None, only: set[str] | None = None,
               datasets: set[str] | None = None, seeds: set[int] | None = None) -> Plan:
    """``run_id``: a run being resumed (its finished trials are not planned again, even with ``force``);
    ``only``, ``datasets``, ``seeds``: plan just these methods / datasets / seeds of the suite."""
    from bench.provenance import code_version

    code = code or code_version()
    run_id = run_id or f"{suite.name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    grid = suite_grid(suite, only, datasets)
    # only the datasets a planned trial reads: `--datasets mnist` must not need USPS's files
    md5s = {ds: dataset_md5(ds, data_root)  # raises on unknown name, missing file, md5 mismatch
            for ds in dict.fromkeys(cell.dataset for cell in grid)}
    plan = Plan(run_id=run_id, units=[])
    stage_nodes: dict[str, dict[str, Any]] = {}  # stage key -> the first trial that needs it
    for cell in grid:
        entry, variant, ds, config, protocol = cell.entry, cell.variant, cell.dataset, cell.config, cell.protocol
        cls = get_method(entry.name)
        gpus = entry.gpus_per_trial if entry.gpus_per_trial is not None else suite.resources.gpus_per_trial
        if gpus is None:
            gpus = cls.gpu_share if gpus_available > 0 and suite.device != "cpu" else 0.0
        todo: list[tuple[int, str, str | None]] = []
        for seed in suite.seeds:
            if seeds is not None and seed not in seeds:
                continue
            key = trial_key(method=entry.name, variant=variant, dataset=ds, seed=seed, config=config,
                            protocol=protocol, data_md5=md5s[ds], code_version=str(code["code_version"]))
            stored = store.get(key)
            plan.entries.append({"key": key, "method": entry.name, "variant": variant, "dataset": ds,
                                 "seed": seed, "config": config, "protocol": protocol,
                                 "data_md5": md5s[ds], "stored_run_id": stored and stored.run_id})
            if finished_in_run(store, key, run_id):
                plan.done.append(key)
            elif not force and store.has_ok(key):
                plan.skipped.append(key)
            else:
                todo.append((seed, key, stored and stored.run_id))
        _add_stage_nodes(stage_nodes, cls, cell, md5s[ds], todo, store, suite, gpus_available)
        batch = max(1, entry.seed_batch or 1) if cls.supports_seed_batch else 1
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            plan.units.append(TrialUnit(
                method=entry.name, variant=variant, dataset=ds, seeds=[s for s, _, _ in chunk],
                keys=[k for _, k, _ in chunk], stored_run_ids=[r for _, _, r in chunk], config=config,
                protocol=protocol, data_md5=md5s[ds], code=code,
                store_root=str(store.root), data_root=str(data_root),
                cache_dir=str(cache_dir or default_cache_dir()), device=suite.device,
                deterministic=suite.deterministic, cpus=suite.resources.cpus_per_trial, gpus=float(gpus),
                suite=suite.name, run_id=run_id))
    plan.stage_units = _stage_units(stage_nodes, store, data_root, cache_dir, suite, code, run_id)
    return plan


def _add_stage_nodes(nodes: dict[str, dict[str, Any]], cls, cell: GridCell, md5: str, todo: list, store: ResultStore,
                     suite: SuiteSpec, gpus_available: float) -> None:
    """Every stage the cell's trials to run need and the store lacks, once per key; a stored stage's upstream
    stages are not needed (it is read as it is)."""
    from bench.stages import StageStore

    if not todo:
        return
    requests = list(cls.stages(cell.typed).values())
    stages = StageStore(store.stage_dir)
    split = split_id(cell.protocol["train_split"], cell.protocol.get("max_images"))

    def add(req, seed: int, owner: str) -> None:
        skey = req.key(md5, split, seed)
        if skey in nodes or stages.exists(req.stage, skey):
            return
        gpus = req.cls.gpu_share if gpus_available > 0 and suite.device != "cpu" else 0.0
        nodes[skey] = {"request": req, "dataset": cell.dataset, "protocol": cell.protocol, "seed": seed,
                       "owner": owner, "md5": md5, "gpus": gpus}
        for up in req.inputs().values():
            add(up, seed, owner)

    for seed, key, _ in todo:
        for req in requests:
            add(req, seed, key)


def _stage_units(nodes: dict[str, dict[str, Any]], store: ResultStore, data_root: Path, cache_dir: Path | None,
                 suite: SuiteSpec, code: dict[str, Any], run_id: str) -> list[StageUnit]:
    """Stage nodes grouped into build units: the seeds of one batchable stage (same request, data, split) train
    together, at most ``STAGE_SEED_BATCH`` at a time; other stages build one seed per unit. Upstream first."""
    groups: dict[tuple, list[tuple[str, dict[str, Any]]]] = {}
    for skey, node in nodes.items():
        gid = (node["request"].identity(), node["dataset"], split_id(node["protocol"]["train_split"],
                                                                   node["protocol"].get("max_images")))
        groups.setdefault(gid, []).append((skey, node))
    units = []
    for members in groups.values():
        req = members[0][1]["request"]
        size = STAGE_SEED_BATCH if req.cls.batchable else 1
        for i in range(0, len(members), size):
            chunk = members[i:i + size]
            first = chunk[0][1]
            units.append(StageUnit(
                request=req.to_dict(), dataset=first["dataset"], seeds=[n["seed"] for _, n in chunk],
                keys=[k for k, _ in chunk], owners=[n["owner"] for _, n in chunk], protocol=first["protocol"],
                data_md5=first["md5"], code=code, store_root=str(store.root), data_root=str(data_root),
                cache_dir=str(cache_dir or default_cache_dir()), device=suite.device,
                deterministic=suite.deterministic, cpus=suite.resources.cpus_per_trial, gpus=float(first["gpus"]),
                run_id=run_id, depth=req.depth()))
    return sorted(units, key=lambda u: u.depth)


def finished_in_run(store: ResultStore, key: str, run_id: str) -> bool:
    """Whether run ``run_id`` already finished ``key`` (ok or failed), as its record or a refused attempt."""
    rec = store.get(key)
    own = rec if rec is not None and rec.run_id == run_id else store.attempt(key, run_id)
    return own is not None and own.status in ("ok", "failed")

"""The store's view of a suite: for every trial of its grid, the newest finished record, whichever run
wrote it.

A trial of the grid is (method, variant, dataset, seed) with the config and protocol the suite resolves
to today. A stored record belongs to it when all six agree; the code version and the run that wrote
it do not matter (the report lists both), so ``bench run --only kmeans`` after a full run still shows
DEC from the earlier run. A config key the record predates counts as agreeing when today's value is
the key's default (new keys default to the old behaviour, bench.records), or the value the method's
``legacy_config`` names for records older than the key. Per trial the newest ``ok``
record wins; a trial with no ``ok`` record shows its newest failed or interrupted one (counted as
failed, never averaged in); a trial with no record at all is listed as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bench.context import stable_hash
from bench.records import ResultRecord


class MissingTrial(NamedTuple):
    """A trial of the grid that has no record yet."""

    method: str
    variant: str
    dataset: str
    seed: int

    def __str__(self) -> str:
        return f"{self.method}/{self.variant} on {self.dataset} seed {self.seed}"


@dataclass
class SuiteView:
    records: list[ResultRecord]
    missing: list[MissingTrial] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)  # the runs that wrote the records shown, oldest first


def _cell_key(method: str, variant: str, dataset: str, seed: int, protocol: dict[str, Any]) -> tuple:
    return method, variant, dataset, int(seed), stable_hash(protocol)


def _same_config(record: dict[str, Any], today: dict[str, Any], defaults: dict[str, Any]) -> bool:
    if any(k not in today or today[k] != v for k, v in record.items()):
        return False
    return all(k in record or (k in defaults and today[k] == defaults[k]) for k in today)


def config_defaults(method: str) -> dict[str, Any]:
    """What a record that lacks a config key ran with: the method's ``legacy_config`` value, else the default."""
    from bench.registry import get_method

    cls = get_method(method)
    return {**{k: f.default for k, f in cls.Config.model_fields.items()}, **cls.legacy_config}


def _newness(r: ResultRecord) -> tuple:
    return r.ok, r.finished_at, r.run_id or ""


def suite_view(store, suite, only: set[str] | None = None) -> SuiteView:
    """``suite``: a SuiteSpec; its grid is resolved as planning does (bench.plan.suite_grid)."""
    from bench.plan import suite_grid

    cells = suite_grid(suite, only)
    wanted = {_cell_key(c.method, c.variant, c.dataset, s, c.protocol): (c, s) for c in cells for s in suite.seeds}
    defaults = {c.method: config_defaults(c.method) for c in cells}
    best: dict[tuple, ResultRecord] = {}
    for r in store.records():
        k = _cell_key(r.method, r.variant, r.dataset, r.seed, r.protocol)
        if k not in wanted or not _same_config(r.config, wanted[k][0].config, defaults[r.method]):
            continue
        if k not in best or _newness(r) > _newness(best[k]):
            best[k] = r
    records, missing = [], []
    for k, (cell, seed) in wanted.items():  # grid order: methods, variants, datasets, seeds
        if k in best:
            records.append(best[k])
        else:
            missing.append(MissingTrial(cell.method, cell.variant, cell.dataset, int(seed)))
    runs = sorted({r.run_id for r in records if r.run_id},
                  key=lambda rid: min(r.finished_at for r in records
                                      if r.run_id == rid))
    return SuiteView(records, missing, runs)


def seed_ranges(seeds: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    seeds, parts, i = sorted(set(seeds)), [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ", ".join(parts)


def missing_summary(missing: list[MissingTrial]) -> str:
    """The missing trials grouped per method/variant and dataset, seeds as ranges: a 10-seed grid of three
    datasets lists 12 groups, not 120 trials (``"scan/default on cifar10 seeds 2-9; ..."``)."""
    groups: dict[str, list[int]] = {}
    for t in missing:
        groups.setdefault(f"{t.method}/{t.variant} on {t.dataset}", []).append(t.seed)
    return "; ".join(f"{cell} seed{'s' if len(s) > 1 else ''} {seed_ranges(s)}" for cell, s in groups.items())

"""The results store: a folder that only grows.

    <root>/records/<key>.json      one ResultRecord per trial and seed, written atomically by the worker
    <root>/runs/<run_id>.json      one manifest per `bench run`: suite, spec, start/end, and for each
                                   trial its key, status and metrics *as of that run* (history survives
                                   a later re-run that replaces a failed record)
    <root>/artifacts/<key>/        per-trial files: predicted labels, checkpoints, embeddings
    <root>/stages/<name>/<hash>.pt shared stage outputs (e.g. pretrained autoencoders)
    <root>/logs/<run_id>/          a run's logs: driver.log (Ray, the harness) and <trial>.log per trial

Writes are atomic (temporary file + rename), so a crash mid-write leaves the previous state, never a
truncated record. On a Ray cluster the root must be storage that every node mounts at the same path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench.context import atomic_write_bytes
from bench.records import ResultRecord

#: where results go unless --store or $BENCH_STORE says otherwise: the user's data directory, outside
#: any source tree (platformdirs: ~/.local/share/clusterbench/results on Linux,
#: ~/Library/Application Support/clusterbench/results on macOS, %LOCALAPPDATA%\clusterbench\results on Windows)
STORE_ENV = "BENCH_STORE"


def default_store_root() -> Path:
    import os

    from platformdirs import user_data_path

    return Path(os.environ.get(STORE_ENV) or user_data_path("clusterbench") / "results").expanduser()


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    # -- layout ------------------------------------------------------------------------------
    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def stage_dir(self) -> Path:
        return self.root / "stages"

    def log_dir(self, run_id: str) -> Path:
        return self.root / "logs" / run_id

    def artifact_dir(self, key: str) -> Path:
        return self.root / "artifacts" / key

    def record_path(self, key: str) -> Path:
        return self.records_dir / f"{key}.json"

    # -- records -----------------------------------------------------------------------------
    def put(self, record: ResultRecord) -> Path:
        path = self.record_path(record.key)
        atomic_write_bytes(path, record.to_json().encode())
        return path

    def get(self, key: str) -> ResultRecord | None:
        path = self.record_path(key)
        if not path.exists():
            return None
        return _read_record(path)

    def has_ok(self, key: str) -> bool:
        rec = self.get(key)
        return rec is not None and rec.ok

    def records(self) -> Iterator[ResultRecord]:
        if not self.records_dir.exists():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            rec = _read_record(path)
            if rec is not None:
                yield rec

    # -- runs --------------------------------------------------------------------------------
    def write_run(self, manifest: dict[str, Any]) -> Path:
        path = self.runs_dir / f"{manifest['run_id']}.json"
        atomic_write_bytes(path, json.dumps(manifest, indent=1, default=str).encode())
        return path

    def runs(self, suite: str | None = None) -> list[dict[str, Any]]:
        if not self.runs_dir.exists():
            return []
        out = []
        for path in self.runs_dir.glob("*.json"):
            try:
                man = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if suite is None or man.get("suite") == suite:
                out.append(man)
        return sorted(out, key=lambda m: (m.get("started_at", ""), m["run_id"]))

    def latest_run(self, suite: str | None = None) -> dict[str, Any] | None:
        runs = self.runs(suite)
        return runs[-1] if runs else None

    def run_records(self, manifest: dict[str, Any]) -> list[ResultRecord]:
        """The records a run produced or reused. A trial whose record is missing (worker killed before
        writing) comes back as the manifest's own failed/interrupted entry, never silently dropped."""
        out = []
        for entry in manifest.get("trials", []):
            out.append(self.get(entry["key"]) or _record_from_entry(entry, manifest))
        return out


def _read_record(path: Path) -> ResultRecord | None:
    try:
        return ResultRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None  # unreadable file: skipped, the run manifest still lists the trial


def _record_from_entry(entry: dict[str, Any], manifest: dict[str, Any]) -> ResultRecord:
    return ResultRecord(key=entry["key"], suite=manifest.get("suite"), run_id=manifest.get("run_id"),
                        method=entry["method"], variant=entry.get("variant", "default"), dataset=entry["dataset"],
                        seed=entry["seed"], config=entry.get("config", {}), protocol=entry.get("protocol", {}),
                        data_md5=entry.get("data_md5", ""), status=entry.get("status") or "interrupted",
                        error=entry.get("error") or "no record was written (worker lost)")

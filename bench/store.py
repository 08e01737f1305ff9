"""The results store: a folder that only grows.

    <root>/records/<key>.json      one ResultRecord per trial and seed, written atomically by the worker
    <root>/runs/<run_id>.json      one manifest per `bench run`: suite, spec, start/end, and for each
                                   trial its key, status and metrics *as of that run* (history survives
                                   a later re-run that replaces a failed record)
    <root>/artifacts/<key>/        per-trial files: predicted labels, progress checkpoints
    <root>/stages/<name>/<key>/    shared stage artifacts (bench.stages: pretrained networks, neighbours)
    <root>/attempts/<key>/<run_id>.json  an attempt the store refused to put over a better record
    <root>/locks/<key>.lock        held while a key is computed (one live computation per key)
    <root>/logs/<run_id>/          a run's logs: driver.log (Ray, the harness) and <trial>.log per trial

Writes are atomic (temporary file + rename), so a crash mid-write leaves the previous state, never a
truncated record. On a Ray cluster the root must be storage that every node mounts at the same path.

The store's promise (enforced by :meth:`ResultStore.put`): a record is only ever replaced by a newer
*finished* result of the same key. An ok record is replaced only by another ok record; a failed one
by ok or failed; an interrupted one by anything. A refused attempt is kept under ``attempts/`` (and
in its run's manifest and the history database), never over the record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import ValidationError

from bench.context import atomic_write_bytes
from bench.errors import BenchError
from bench.records import ResultRecord


class StoreUnwritable(BenchError):
    """The store stopped taking writes mid-run (made read-only, disk full): the run stops, keeps what it wrote, and
    says so in one line; `bench run --resume` continues it once the store is writable again."""

    exit_code = 1  # not the user's input: the run started and was cut short

    @classmethod
    def at(cls, path: Path, exc: OSError) -> StoreUnwritable:
        return cls(f"cannot write {path} ({exc.strerror or type(exc).__name__}): the store stopped taking writes; "
                   "records already written are kept; make it writable and `bench run SUITE --resume`")



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
        #: record files that :meth:`records` skipped (unreadable, or bytes changed since written): commands say so
        self.damaged: set[Path] = set()
        #: run manifests that :meth:`runs` left out because their fields are not what `bench run` writes: run id -> why
        self.malformed_runs: dict[str, str] = {}

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

    def lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    def attempt_path(self, key: str, run_id: str | None) -> Path:
        return self.root / "attempts" / key / f"{run_id or 'no-run'}.json"

    # -- records -----------------------------------------------------------------------------
    def key_lock(self, key: str) -> FileLock:
        """The lock held while ``key`` is computed. An OS lock (flock): a killed holder releases it."""
        path = self.lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def put(self, record: ResultRecord) -> bool:
        """Store ``record`` unless the stored record of its key is better (see the module docstring).
        Returns whether it became the record; a refused one is kept as an attempt of its run. A store that no
        longer takes writes raises StoreUnwritable (one line), never a bare OSError's traceback."""
        try:
            return self._put(record)
        except OSError as exc:
            raise StoreUnwritable.at(Path(exc.filename or self.record_path(record.key)), exc) from None

    def _put(self, record: ResultRecord) -> bool:
        self.lock_path(record.key).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.lock_path(record.key)) + ".put"):  # check-and-replace is atomic across processes
            current = self.get(record.key)
            if current is not None and RANK[record.status] < RANK[current.status]:
                atomic_write_bytes(self.attempt_path(record.key, record.run_id), _sealed(record))
                return False
            path = self.record_path(record.key)
            if current is None and (path.exists() or path.is_symlink()):
                # a record file that cannot be read (damaged bytes, a folder, a link): kept aside for a look, never
                # written over blindly (a folder there made os.replace raise, a traceback that ended the run)
                os.replace(path, path.with_name(f".damaged-{path.name}.{os.urandom(3).hex()}"))
            atomic_write_bytes(path, _sealed(record))
            return True

    def attempt(self, key: str, run_id: str | None) -> ResultRecord | None:
        """The attempt of run ``run_id`` at ``key`` that :meth:`put` refused, if any."""
        path = self.attempt_path(key, run_id)
        return _read_record(path) if path.exists() else None

    def get(self, key: str) -> ResultRecord | None:
        path = self.record_path(key)
        if not path.exists():
            return None
        rec = _read_own_record(path)
        if rec is None:
            self.damaged.add(path)
        return rec

    def damaged_now(self) -> list[Path]:
        """The skipped record files that are still damaged (a run may have re-run the trial and set it aside since)."""
        return sorted(p for p in self.damaged if (p.exists() or p.is_symlink()) and _read_own_record(p) is None)

    def has_ok(self, key: str) -> bool:
        rec = self.get(key)
        return rec is not None and rec.ok

    def records(self) -> Iterator[ResultRecord]:
        if not self.records_dir.exists():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            if path.name.startswith("."):  # temporaries, damaged ones kept aside
                continue
            rec = _read_own_record(path)
            if rec is not None:
                yield rec
            else:
                self.damaged.add(path)

    # -- merging another store ----------------------------------------------------------------
    def import_from(self, src: ResultStore) -> dict[str, Any]:
        """Bring ``src``'s records (with their artifacts) and run manifests into this store under the store's
        promise: a record comes in only where this store has none of its key, or a worse one (interrupted <
        failed < ok), or an equally good one that finished earlier; never over a better or newer one. A source
        record whose bytes changed since it was written is skipped (listed in ``damaged``). Manifests of runs
        this store lacks are added (bench history reads them). Returns the counts and the damaged paths."""
        from filelock import Timeout

        out: dict[str, Any] = {"new": 0, "replaced": 0, "kept": 0, "identical": 0, "busy": 0, "runs": 0,
                               "damaged": [], "refused": []}
        self.settle_all_artifacts()  # an earlier import killed mid-swap: its record's artifacts go back first
        for rec in src.records():
            verdict, _ = self._import_verdict(rec)
            if verdict != "take":
                out[verdict] += 1
                continue
            origin = src.artifact_dir(rec.key)
            if origin.is_symlink() or (origin.exists() and not origin.is_dir()):
                # a link (possibly to anywhere on the source's machine) or a file: not artifacts this harness wrote
                out["refused"].append(f"{origin}: not a folder of artifacts (a link or a file); its record was not "
                                      "imported")
                continue
            try:  # a run computing this key holds its lock: its checkpoints and record are left alone
                with self.key_lock(rec.key).acquire(timeout=0), _source_key_lock(src, rec.key):
                    # a run computing the key in the *source* writes its new artifacts beside the old record before
                    # it replaces it: copied then, the record came in with another computation's artifacts (its
                    # pred.npy, its checkpoints). Under the source's lock no run writes either; the record is read
                    # again, since the one listed above may have been replaced before the lock was taken
                    now = src.get(rec.key)
                    if now is None:
                        out["refused"].append(f"{src.record_path(rec.key)}: changed while it was imported (is a run "
                                              "writing the source store?); import again once nothing writes there")
                        continue
                    rec = now
                    # read again under the lock: a run may have finished the key since the check above
                    verdict, cur = self._import_verdict(rec)
                    if verdict != "take":
                        out[verdict] += 1
                        continue
                    try:
                        self._import_artifacts(src, rec.key, cur)  # before the record: never one without them
                    except SourceChanged as exc:
                        out["refused"].append(str(exc))
                        continue
                    try:
                        took = self.put(rec)
                    finally:  # only now the folder swapped out goes: put back if the record did not come in
                        with contextlib.suppress(OSError):  # (a store that stopped taking writes: the next run does)
                            self.settle_artifacts(rec.key)
                    out["replaced" if cur is not None else "new"] += 1 if took else 0
            except Timeout:
                out["busy"] += 1
        out["damaged"] = [str(p) for p in src.damaged_now()]
        have = {m["run_id"]: m for m in self.runs()}
        for man in src.runs():
            if not _RUN_ID.fullmatch(man["run_id"]):  # "../x", "/abs": written outside runs/ (anywhere) before
                out["refused"].append(f"run manifest with run_id {man['run_id']!r}: not a run id this harness "
                                      "writes; not imported")
                continue
            mine = have.get(man["run_id"])
            if mine is None or (mine.get("status") != "finished" and man.get("status") == "finished"
                                and driver_alive(mine.get("driver")) is not True):
                # absent, or brought in (or left) unfinished before its run ended elsewhere: the finished one wins
                self.write_run(man)
                out["runs"] += 1
        return out

    def _import_verdict(self, rec: ResultRecord) -> tuple[str, ResultRecord | None]:
        """("take" if ``rec`` should replace this store's record of its key, else "identical" or "kept"; that
        record)."""
        cur = self.get(rec.key)
        if cur is not None and _sealed(cur) == _sealed(rec):
            return "identical", cur
        if cur is not None and (RANK[rec.status], rec.finished_at) <= (RANK[cur.status], cur.finished_at):
            return "kept", cur  # this store's record is better, or as good and newer
        return "take", cur

    def _import_artifacts(self, src: ResultStore, key: str, cur: ResultRecord | None) -> None:
        """Copy ``src``'s artifact folder of ``key`` over this store's (copied aside first, then swapped in). The
        folder swapped out is named after ``cur``, the record it belongs to, and left for :meth:`settle_artifacts`."""
        import shutil

        origin, final = src.artifact_dir(key), self.artifact_dir(key)
        if not origin.is_dir():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        self.settle_artifacts(key)
        tmp = final.with_name(f".import-{key}-{os.urandom(3).hex()}")
        # links inside are left out: one pointing outside the source would put a foreign file (or a path on the
        # source's machine) into this store, read by reports or written through by a later resume; so are FIFOs,
        # sockets and devices (copytree raised on them: a traceback that stopped the import midway)
        try:
            shutil.copytree(origin, tmp, symlinks=True, ignore=_not_file_or_folder)
        except (shutil.Error, FileNotFoundError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            # a file listed but gone when copied (a run or import writing the source meanwhile): that copy is not the
            # record's artifacts, so neither comes in; any other failure (this store's disk) stays an error
            gone = [e[0] for e in exc.args[0]] if isinstance(exc, shutil.Error) else [exc.filename]
            if any(isinstance(g, str) and g.startswith(str(origin)) and not os.path.lexists(g) for g in gone):
                raise SourceChanged(f"{origin}: changed while it was copied (is a run or an import writing the "
                                    "source store?); its record was not imported; import again once nothing "
                                    "writes there") from exc
            raise
        # killed between this swap and the record's write, the record in place was left with the source's artifacts
        # and its own removed: the name says whose folder this is, so settle_artifacts puts it back
        old = final.with_name(f".replaced-{key}-{_owner(cur)}-{os.urandom(3).hex()}")
        if final.exists() or final.is_symlink():
            os.replace(final, old)
        os.replace(tmp, final)

    def settle_artifacts(self, key: str) -> None:
        """Undo what an import of ``key`` killed midway left in ``artifacts/`` (the caller holds the key's lock, so no
        live import is using it). Killed after the swap's first rename but before its record was written, it left
        the record's own folder aside as ``.replaced-<key>-<owner>-*`` (``_owner`` of the record in place) and maybe
        the source's as ``<key>/``: the record's own goes back (also what an import does when its record was not
        taken). Every other leftover (a copy never swapped in, a folder whose record was replaced) is removed, or every
        killed import would leak a copy of the artifacts."""
        import shutil

        final = self.artifact_dir(key)
        aside = sorted(final.parent.glob(f".replaced-{key}-*"), key=lambda p: p.lstat().st_mtime)
        real = [p for p in aside if p.is_dir() and not p.is_symlink()]  # a link put there is not what a swap left
        tags = {p: p.name.split("-") for p in real}  # [".replaced", key, owner, hex]; [".replaced", key, hex] before
        own = [p for p in real if len(tags[p]) == 4 and tags[p][2] == _owner(self.get(key))]
        if own and (final.exists() or final.is_symlink()):
            # the record in place is the one this folder was swapped out from: what was swapped in is not its own
            os.replace(final, final.with_name(f".import-{key}-{os.urandom(3).hex()}"))  # removed below
        if not own and not (final.exists() or final.is_symlink()):
            own = [p for p in real if len(tags[p]) == 3]  # named before the owner was: the newest
        if own:
            os.replace(own[-1], final)
            aside.remove(own[-1])
        for left in [*final.parent.glob(f".import-{key}-*"), *aside]:
            if left.is_symlink() or not left.is_dir():
                left.unlink(missing_ok=True)  # rmtree refuses links (and would follow none): the link itself goes
            else:
                shutil.rmtree(left, ignore_errors=True)

    def settle_all_artifacts(self) -> None:
        """:meth:`settle_artifacts` for every key an import was killed on, except keys a run or import holds now."""
        from filelock import Timeout

        names = {p.name for p in self.root.glob("artifacts/.*-*") if p.name.startswith((".import-", ".replaced-"))}
        for key in sorted({k for n in names if _KEY.fullmatch(k := n.split("-")[1])}):
            try:
                with self.key_lock(key).acquire(timeout=0):
                    self.settle_artifacts(key)
            except (Timeout, OSError):  # busy, or not ours to move: tidying must never stop a run or an import
                continue

    # -- runs --------------------------------------------------------------------------------
    def write_run(self, manifest: dict[str, Any]) -> Path:
        path = self.runs_dir / f"{manifest['run_id']}.json"
        try:
            atomic_write_bytes(path, json.dumps(manifest, indent=1, default=str).encode())
        except OSError as exc:
            raise StoreUnwritable.at(path, exc) from None
        return path

    def runs(self, suite: str | None = None) -> list[dict[str, Any]]:
        if not self.runs_dir.exists():
            return []
        out = []
        for path in self.runs_dir.glob("*.json"):
            try:
                man = json.loads(_read_capped(path))  # a FIFO or /dev/zero link here hung every command
            except (OSError, ValueError, RecursionError):  # (JSON nested thousands deep: a traceback of every command)
                continue
            if not isinstance(man, dict) or not isinstance(man.get("run_id"), str):
                continue  # not a manifest this harness wrote (hand-edited, foreign): ignored, never a crash
            if why := _manifest_problem(man):  # a trial without its key, "trials": null, a driver that is a string:
                self.malformed_runs[man["run_id"]] = why  # a KeyError/TypeError traceback of report --run, audit
                continue  # --run, stages, resume; left out (bench history says so), never a crash
            if suite is None or man.get("suite") == suite:
                out.append(man)
        return sorted(out, key=lambda m: (str(m.get("started_at", "")), m["run_id"]))

    def latest_run(self, suite: str | None = None) -> dict[str, Any] | None:
        runs = self.runs(suite)
        return runs[-1] if runs else None

    def run_records(self, manifest: dict[str, Any]) -> list[ResultRecord]:
        """The records a run produced or reused. A trial this run did not finish (worker killed before
        writing, run interrupted) comes back as its own attempt or the manifest's failed/interrupted entry,
        never silently dropped, and never as another run's record of the same key."""
        out = []
        for entry in manifest.get("trials", []):
            rec = self.get(entry["key"])
            mine = rec is not None and rec.run_id == manifest.get("run_id")
            if entry.get("status") in ("failed", "interrupted") and not mine:
                # this run did not finish the trial; the stored record (if any) is another run's
                rec = self.attempt(entry["key"], manifest.get("run_id")) or _record_from_entry(entry, manifest)
            out.append(rec or _record_from_entry(entry, manifest))
        return out


#: which status may replace which: a record is replaced only by one of equal or higher rank
RANK = {"interrupted": 0, "failed": 1, "ok": 2}


def driver_identity() -> dict[str, Any]:
    """Who is running a run: host, pid and the process's start time (so a reused pid is not mistaken
    for the driver)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _process_start(os.getpid())}


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:  # noqa: BLE001 - no such process, or psutil missing
        return None


def driver_alive(driver: dict[str, Any] | None) -> bool | None:
    """True/False when the run's driver is on this host (it can be checked), None for another host."""
    if not driver or driver.get("host") != socket.gethostname():
        return None
    started = _process_start(int(driver.get("pid", -1)))
    return started is not None and (driver.get("pid_started") is None or abs(started - driver["pid_started"]) < 1)


#: the field of a record file that holds the sha256 of the rest of it (bench.records); records written before it
#: existed lack it and are read as they are
SEAL = "record_sha256"

#: a key as bench.context.stable_hash makes them: hex digits, never a path
_KEY = re.compile(r"[0-9a-f]{8,64}")


def _not_file_or_folder(folder: str, names: list[str]) -> list[str]:
    """copytree's ``ignore``: the names in ``folder`` that are neither a plain file nor a folder (links, FIFOs,
    sockets, devices)."""
    modes = {n: os.lstat(os.path.join(folder, n)).st_mode for n in names}
    return [n for n, m in modes.items() if not stat.S_ISREG(m) and not stat.S_ISDIR(m)]


@contextlib.contextmanager
def _source_key_lock(src: ResultStore, key: str) -> Iterator[None]:
    """The source store's lock of ``key`` while an import copies it (filelock's Timeout if a run there holds it). A
    source whose locks/ cannot be written (a read-only copy) is taken as it is: no run writes there either."""
    from filelock import Timeout

    try:
        lock = src.key_lock(key)
        lock.acquire(timeout=0)
    except Timeout:  # (an OSError too: a run holds the key)
        raise
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


class SourceChanged(Exception):
    """An import's source changed under it while its artifacts were copied; the record is left out."""


def _owner(record: ResultRecord | None) -> str:
    """A short name for ``record`` (None: no readable record), in the name of the artifact folder an import set
    aside from it."""
    return hashlib.sha256(_sealed(record)).hexdigest()[:12] if record is not None else "none"


def _manifest_problem(man: dict[str, Any]) -> str | None:
    """What in a run manifest is not of the shape `bench run` writes (the fields its readers index), or None."""
    def strs(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v)

    trials, stages, driver = man.get("trials", []), man.get("stages", []), man.get("driver")
    if not isinstance(trials, list):
        return f"trials is a {type(trials).__name__}, not a list"
    for i, t in enumerate(trials):
        if not isinstance(t, dict):
            return f"trial {i} is a {type(t).__name__}, not an object"
        if not (isinstance(t.get("key"), str) and _KEY.fullmatch(t["key"])):
            return f"trial {i} has no key of hex digits ({str(t.get('key'))[:40]!r})"
        if not (isinstance(t.get("method"), str) and isinstance(t.get("dataset"), str)
                and isinstance(t.get("seed"), int) and not isinstance(t.get("seed"), bool)):
            return f"trial {i} lacks a method, dataset or whole-number seed"
        if not all(isinstance(t.get(f, {}) or {}, dict) for f in ("metrics", "config", "protocol")) or \
                not all(isinstance(t.get(f, ""), str | None) for f in ("variant", "status", "error", "data_md5")):
            return f"trial {i} has a field of the wrong type"
    if not (isinstance(stages, list) and all(isinstance(st, dict) and isinstance(st.get("key"), str) for st in stages)):
        return "stages is not a list of objects with a key"
    if driver is not None and not (isinstance(driver, dict) and isinstance(driver.get("pid", 0), int)
                                   and isinstance(driver.get("pid_started"), int | float | None)):
        return "driver is not an object with a whole-number pid"
    if not all(isinstance(man.get(f), str | None) for f in ("suite", "status", "started_at", "finished_at")) or \
            not all(isinstance(man.get(f), dict | None) for f in ("code", "spec")) or \
            not all(man.get(f) is None or strs(man[f]) for f in ("only", "only_datasets", "only_seeds")) or \
            not isinstance(man.get("resumed", []), list):
        return "a field of the run is of the wrong type"
    return None


#: a run id as `bench run` makes them (suite name, time, random tail): a plain file name, never a path
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def _seal_of(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in body.items() if k != SEAL}, sort_keys=True).encode()).hexdigest()


def _sealed(record: ResultRecord) -> bytes:
    """The record's JSON with its sha256: a byte flipped later (a digit of ACC, a seed) is detected when read,
    instead of reaching a table silently."""
    body = json.loads(record.to_json())
    body[SEAL] = _seal_of(body)
    return json.dumps(body, indent=1).encode()


#: no record this harness writes comes near this (a 500-epoch SCAN record with its curves is 135 KB): a larger file in
#: records/ is not one, and reading it whole (a stray multi-GB file, a source store's junk) could exhaust memory
MAX_RECORD_BYTES = 64 * 2**20


def _read_capped(path: Path) -> bytes:
    """The bytes of the regular file ``path``; OSError for anything else or anything over MAX_RECORD_BYTES. Opened
    without blocking (a FIFO there waited forever for a writer) and checked once open (a link to /dev/zero has size
    0 and never ends: reading it ate all memory); read at most the cap (a file growing meanwhile)."""
    with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RECORD_BYTES:
            raise OSError(f"{path}: not a regular file of at most {MAX_RECORD_BYTES} bytes")
        blob = fh.read(MAX_RECORD_BYTES + 1)
    if len(blob) > MAX_RECORD_BYTES:
        raise OSError(f"{path}: over {MAX_RECORD_BYTES} bytes")
    return blob


def _read_record(path: Path) -> ResultRecord | None:
    try:
        # skipped like an unreadable one (listed as damaged), never read into memory whole
        blob = _read_capped(path)
        body = json.loads(blob)
        if isinstance(body, dict) and SEAL in body:
            if body.pop(SEAL) != _seal_of(body):
                return None  # bytes changed since it was written: damaged, skipped like an unreadable one
            return ResultRecord.model_validate(body)  # (the seal is the file's, not the record's)
        return ResultRecord.model_validate_json(blob)
    # unreadable file: skipped, the run manifest still lists the trial (RecursionError: JSON nested thousands deep, once
    # a traceback of report, audit, import and run)
    except (OSError, ValidationError, ValueError, RecursionError):
        return None


def _read_own_record(path: Path) -> ResultRecord | None:
    """The record in ``records/<key>.json`` if it is readable, unchanged and that key's own; else None. A valid record
    copied over another key's file is not that key's result (it would be reused for it)."""
    rec = _read_record(path)
    return rec if rec is not None and rec.key == path.stem else None


def _record_from_entry(entry: dict[str, Any], manifest: dict[str, Any]) -> ResultRecord:
    status = entry.get("status") or "interrupted"
    if status not in RANK:  # "pending" (or "done") in the manifest of a run still running: `bench report --run`
        # during the run raised a ValidationError here; such a trial is not finished, never averaged in
        entry = {**entry, "error": entry.get("error") or f"not finished: the run was {manifest.get('status')} "
                 f"when this was read ({status})"}
        status = "interrupted"
    return ResultRecord(key=entry["key"], suite=manifest.get("suite"), run_id=manifest.get("run_id"),
                        method=entry["method"], variant=entry.get("variant", "default"), dataset=entry["dataset"],
                        seed=entry["seed"], config=entry.get("config", {}), protocol=entry.get("protocol", {}),
                        data_md5=entry.get("data_md5", ""), status=status,
                        error=entry.get("error") or "no record was written (worker lost)")

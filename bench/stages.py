"""Stages: named, versioned, cached units of work that methods share.

A stage (a pretrained stacked autoencoder, a SimCLR pretext network, mined nearest neighbours) is
declared once, in ``methods/stages/<name>.py``::

    @register_stage
    class StackedDenoisingAutoencoder(Stage):
        name = "sdae"
        version = 1                 # bumped when the code changes what the stage produces
        batchable = True            # build_seeds() trains several seeds in one model

        class Config(StageConfig):  # typed, frozen, paper defaults
            ...

        def build(self, data, inputs, ctx) -> dict: ...   # the artifacts: tensors, arrays, small values

and a method asks for the stages it needs from its own typed config::

    @classmethod
    def stages(cls, cfg) -> dict[str, StageRequest]:
        return {"autoencoder": StageRequest("sdae", StackedDenoisingAutoencoder.Config(...))}

The **key** of a stage node is a hash of (name, version, config, upstream keys, data md5, train
split, seed): not the repository commit, so a commit that does not bump a stage's version reuses
what that stage built. Artifacts live in ``<store>/stages/<name>/<key>/`` (``artifact.pt`` and
``stage.json`` with the sha256 of the artifact and of itself, both checked on every load), written into a
temporary folder and renamed into place, so a reader never sees half a stage. One file lock per key: concurrent
requests for a stage wait for the one build.

The planner (bench.runner) expands every trial's stages into one deduplicated graph and builds the
missing nodes before the trials that need them; a trial that finds a node missing (a stage unit
failed, or it runs alone) builds it itself under the same lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib
import io
import json
import os
import pkgutil
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from filelock import FileLock
from pydantic import BaseModel, ConfigDict

from bench.context import stable_hash
from bench.errors import BenchError
from bench.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from bench.context import TrialContext
    from bench.method import ClusteringData


class StageConfig(BaseModel):
    """Base of every stage's typed config: unknown keys are errors, values are checked, instances frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Stage:
    """Base class: declare ``name``, ``version``, ``Config``; implement ``build`` (or ``build_seeds``)."""

    name: ClassVar[str]
    #: bump when a code change alters what the stage produces; old artifacts are then not reused
    version: ClassVar[int] = 1
    Config: ClassVar[type[StageConfig]] = StageConfig
    #: True when ``build_seeds`` trains several seeds together (one batched model)
    batchable: ClassVar[bool] = False
    #: share of one GPU the planner asks for when it builds this stage as its own Ray task
    gpu_share: ClassVar[float] = 1.0

    def __init__(self, config: StageConfig):
        self.config = config

    @classmethod
    def upstream(cls, config: StageConfig) -> dict[str, StageRequest]:
        """Stages this one reads, by local name (their artifacts arrive as ``inputs[name]``)."""
        return {}

    def build(self, data: ClusteringData, inputs: dict[str, dict[str, Any]], ctx: TrialContext) -> dict[str, Any]:
        raise NotImplementedError

    def build_seeds(self, data: ClusteringData, inputs: list[dict[str, dict[str, Any]]],
                    ctxs: list[TrialContext]) -> list[dict[str, Any] | BaseException]:
        """Several seeds; a seed whose build fails gets its exception (or is marked by ``ctx.fail``)."""
        out: list[dict[str, Any] | BaseException] = []
        for inp, ctx in zip(inputs, ctxs):
            try:
                out.append(self.build(data, inp, ctx))
            except Exception as exc:  # noqa: BLE001 - one seed's failure is that seed's
                out.append(exc)
        return out


def _discover_stages() -> None:
    try:
        import methods.stages as pkg
    except ImportError:  # pragma: no cover - a checkout without built-in stages
        return
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"methods.stages.{mod.name}")


def _check_stage(cls: type[Stage]) -> None:
    if not isinstance(cls.version, int) or cls.version < 1:
        raise TypeError(f"stage {cls.name!r}: `version` must be a positive int")


STAGES: Registry[type[Stage]] = Registry("stage", _discover_stages, _check_stage)
register_stage = STAGES.register
get_stage = STAGES.get


@dataclasses.dataclass(frozen=True, eq=False)
class StageRequest:
    """A node of the stage graph before the seed and data are known: which stage, its config, and the
    requests it reads from (besides those its class declares in ``Stage.upstream``)."""

    stage: str
    config: StageConfig
    upstream: dict[str, StageRequest] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        cls = get_stage(self.stage)
        if not isinstance(self.config, cls.Config):
            raise TypeError(f"stage {self.stage!r} needs a {cls.Config.__qualname__}, got {type(self.config).__name__}")

    @property
    def cls(self) -> type[Stage]:
        return get_stage(self.stage)

    def inputs(self) -> dict[str, StageRequest]:
        return {**self.cls.upstream(self.config), **self.upstream}

    def key(self, data_md5: str, split: str, seed: int) -> str:
        ups = {k: r.key(data_md5, split, seed) for k, r in sorted(self.inputs().items())}
        return stable_hash({"stage": self.stage, "version": self.cls.version,
                            "config": self.config.model_dump(mode="json"), "upstream": ups,
                            "data_md5": data_md5, "split": split, "seed": int(seed)}, n=20)

    def identity(self) -> str:
        """Hash of the request without seed and data (groups the seeds of one stage for batching)."""
        return stable_hash(self.to_dict(), n=16)

    def depth(self) -> int:
        return 1 + max((r.depth() for r in self.inputs().values()), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "version": self.cls.version, "config": self.config.model_dump(mode="json"),
                "upstream": {k: r.to_dict() for k, r in sorted(self.upstream.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageRequest:
        stage_cls = get_stage(d["stage"])
        if int(d.get("version", stage_cls.version)) != stage_cls.version:
            raise BenchError(f"stage {d['stage']!r} was planned at version {d.get('version')} but this code has "
                             f"version {stage_cls.version}; plan again")
        return cls(d["stage"], stage_cls.Config(**d["config"]),
                   {k: cls.from_dict(v) for k, v in d.get("upstream", {}).items()})


def walk(requests: dict[str, StageRequest]) -> list[StageRequest]:
    """Every request reachable from ``requests``, upstream first, each once (by identity)."""
    seen: dict[str, StageRequest] = {}

    def visit(r: StageRequest) -> None:
        for up in r.inputs().values():
            visit(up)
        seen.setdefault(r.identity(), r)

    for r in requests.values():
        visit(r)
    return list(seen.values())


# -- the stage store -------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_sha256(meta: dict[str, Any]) -> str:
    """sha256 of a stage.json's content without its own ``meta_sha256`` field (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")  # orders runs within a second


class StageStore:
    """``<root>/stages/<name>/<key>/{artifact.pt, stage.json}``; partial builds under ``.partial-<key>/``."""

    ARTIFACT = "artifact.pt"
    META = "stage.json"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, name: str, key: str) -> Path:
        return self.root / name / key

    def partial_dir(self, name: str, key: str) -> Path:
        """Where a build keeps its progress checkpoints (resumed by the next build of the same key)."""
        return self.root / name / f".partial-{key}"

    def _failure_path(self, name: str, key: str) -> Path:
        return self.root / name / f".failed-{key}.json"

    def record_failure(self, name: str, key: str, run_id: str | None, exc: BaseException,
                       failed_at: dict[str, Any] | None) -> None:
        """Note that the build of ``key`` failed in run ``run_id``: the run's other trials that need it fail with
        the same reason instead of building it again (another run tries again)."""
        if run_id is None:
            return
        from bench.context import atomic_write_bytes

        line = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]
        atomic_write_bytes(self._failure_path(name, key), json.dumps(
            {"run_id": run_id, "error": line, "failed_at": failed_at, "at": _now()}, default=str).encode())

    def failure(self, name: str, key: str, run_id: str | None) -> dict[str, Any] | None:
        """The failure of ``key``'s build recorded by run ``run_id`` (None: none, or another run's)."""
        try:
            rec = json.loads(self._failure_path(name, key).read_text())
        except (OSError, ValueError, RecursionError):  # (JSON nested thousands deep is no stage either)
            return None
        return rec if isinstance(rec, dict) and run_id is not None and rec.get("run_id") == run_id else None

    def lock(self, key: str) -> FileLock:
        path = self.root / ".locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def meta(self, name: str, key: str) -> dict[str, Any] | None:
        """The stage's ``stage.json``; None when it is missing, unreadable or not a JSON object (a stage.json
        hand-edited into ``[]`` is no stage: rebuilt, never a crash of the trial or of ``bench stages``)."""
        try:
            meta = json.loads((self.path(name, key) / self.META).read_text())
        except (OSError, ValueError, RecursionError):  # (JSON nested thousands deep is no stage either)
            return None
        return meta if isinstance(meta, dict) else None

    def exists(self, name: str, key: str) -> bool:
        return self.meta(name, key) is not None and (self.path(name, key) / self.ARTIFACT).is_file()

    def load(self, name: str, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(artifacts, meta), or None when absent. A stage whose artifact or stage.json bytes no longer match the
        sha256s written at build time is moved aside (``.corrupt-*``) and reported (StageCorrupt): rebuilt, never
        read."""
        import torch

        meta = self.meta(name, key)
        folder = self.path(name, key)
        if meta is None or not (folder / self.ARTIFACT).is_file():
            return None
        # read once, then check and load these very bytes: hashing the file and loading it again left a window in
        # which another process (`bench stages --prune`, a copy) could change or remove it, so unverified bytes were
        # loaded or the trial died of a FileNotFoundError
        try:
            blob = (folder / self.ARTIFACT).read_bytes()
        except OSError:  # removed (pruned) since stage.json was read: absent, built again under the lock
            return None
        what = self._damage(folder, meta, blob)
        if what:
            bad = folder.with_name(f".corrupt-{key}-{secrets.token_hex(3)}")
            try:
                os.replace(folder, bad)
            except FileNotFoundError:  # removed meanwhile: nothing to keep aside
                return None
            raise StageCorrupt(f"stage {name} {key}: {what}; moved aside to {bad.name} and rebuilt")
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False), meta

    def _damage(self, folder: Path, meta: dict[str, Any], blob: bytes) -> str | None:
        """Why a stored stage must not be read (its artifact's or its stage.json's bytes changed), or None.
        stage.json is checked too: its curve and owner reach every record that reuses the stage."""
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            return "artifact.pt does not match the sha256 recorded when it was built"
        if "meta_sha256" not in meta:
            return "stage.json has no meta_sha256 (written before stage.json was checked, or edited)"
        if _meta_sha256(meta) != meta["meta_sha256"]:
            return "stage.json was changed after the build (its meta_sha256 does not match)"
        # the hashes only say the folder is *a* stage: one copied or linked over another key's folder (another
        # seed's autoencoder, say) passes them, and a trial would silently train on the wrong stage
        if meta.get("key") != folder.name or meta.get("name") != folder.parent.name:
            return f"it holds stage {meta.get('name')} {meta.get('key')}, not this one (copied or linked here)"
        return None

    def save(self, name: str, key: str, artifacts: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """Write the stage atomically (temporary folder, fsync, rename). Returns the meta as written."""
        import torch

        final = self.path(name, key)
        tmp = final.with_name(f".tmp-{key}-{secrets.token_hex(3)}")
        tmp.mkdir(parents=True)
        try:
            with open(tmp / self.ARTIFACT, "wb") as fh:
                torch.save(artifacts, fh)
                fh.flush()
                os.fsync(fh.fileno())
            meta = json.loads(json.dumps({
                **meta, "name": name, "key": key, "created_at": _now(),
                "size_bytes": (tmp / self.ARTIFACT).stat().st_size, "sha256": _sha256(tmp / self.ARTIFACT)},
                default=str))  # as a reader will see it, so the hash below matches what load() recomputes
            meta["meta_sha256"] = _meta_sha256(meta)
            (tmp / self.META).write_text(json.dumps(meta, indent=1))
            if final.is_symlink() or (final.exists() and not final.is_dir()):  # not a stage folder (a file, a
                os.replace(final, final.with_name(f".corrupt-{key}-{secrets.token_hex(3)}"))  # link): keep it aside
            elif final.exists():  # only a stage the lock holder found unreadable: never a good one
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.partial_dir(name, key), ignore_errors=True)
        self._failure_path(name, key).unlink(missing_ok=True)
        return meta

    def entries(self) -> list[dict[str, Any]]:
        """Every stored stage's meta (with ``path``), oldest first."""
        out = []
        if not self.root.is_dir():
            return out
        for name_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for folder in sorted(p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                meta = self.meta(name_dir.name, folder.name)
                if meta is not None:
                    out.append({**meta, "path": str(folder)})
        return sorted(out, key=lambda m: m.get("created_at", ""))

    def leftovers(self) -> list[Path]:
        """Files and folders that are not stages: partial builds, temporaries, corrupt ones moved aside, and the
        single-file stages of earlier versions of this harness (``<name>/<hash>.pt``)."""
        out: list[Path] = []
        if not self.root.is_dir():
            return out
        for name_dir in (p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for p in name_dir.iterdir():
                if p.name.startswith((".tmp-", ".corrupt-", ".partial-")) or p.is_file():
                    out.append(p)
        return sorted(out)

    def prune(self, keep: set[str], entries: list[dict[str, Any]] | None = None) -> tuple[list[tuple[str, int]], int]:
        """Remove every stage whose key is not in ``keep`` and every leftover (partial builds of kept keys stay:
        a resumed run continues from them). A key whose lock is held (a build or a read in progress) is skipped.
        ``entries``: the stages that may go, listed *before* ``keep`` was computed (default: those stored now).
        Returns ``([(what was removed, bytes)], number of whole stages among them)``."""
        removed: list[tuple[str, int]] = []
        n_stages = 0
        for e in self.entries() if entries is None else entries:
            if e["key"] not in keep:
                freed = self._remove_unlocked(e["key"], Path(e["path"]))
                if freed is not None:
                    removed.append((f"stage {e['name']} {e['key']} ({e.get('dataset')}, seed {e.get('seed')})", freed))
                    n_stages += 1
        for path in self.leftovers():
            key = path.name.split("-", 2)[1] if path.name.startswith((".tmp-", ".partial-", ".corrupt-")) else ""
            if path.name.startswith(".partial-") and key in keep:
                continue
            freed = self._remove_unlocked(key or path.stem, path)
            if freed is not None:
                removed.append((str(path.relative_to(self.root)), freed))
        return removed, n_stages

    def _remove_unlocked(self, key: str, path: Path) -> int | None:
        """Delete ``path`` (file or folder) under the key's lock taken without waiting; its size, or None if the
        lock is held."""
        lock = self.lock(key)
        try:
            lock.acquire(timeout=0)
        except Exception:  # noqa: BLE001 - held by a build or a read: keep it
            return None
        try:
            if path.is_dir() and not path.is_symlink():
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path, ignore_errors=True)
            else:
                size = path.lstat().st_size
                path.unlink(missing_ok=True)
            return size
        finally:
            lock.release()


class StageFailed(BenchError):
    """The stage's build failed earlier in the same run; the reason is the first failure's."""


class StageCorrupt(BenchError):
    """A stored stage failed its sha256 check (it was moved aside and will be rebuilt)."""


# -- building and loading a request for the seeds of a trial ---------------------------------------
def materialize(ctxs: list[TrialContext], request: StageRequest) -> list[dict[str, Any] | BaseException]:
    """The artifacts of ``request`` for each context's seed (upstream stages first), loading what the store has and
    building what it lacks, under one lock per key (taken in sorted order: concurrent batches cannot deadlock).
    Each context notes ``{name, key, reused}`` in ``stages_used``; a stage is "reused" by every trial except the
    one it was built for in the run that built it (its ``owner``)."""
    import time

    import torch

    from bench.context import TrialContext, stream_seed

    n = len(ctxs)
    data = ctxs[0].data
    if data is None:
        raise RuntimeError("TrialContext.bind(data, stages) was not called before asking for a stage")
    store = StageStore(ctxs[0].stage_dir)
    name = request.stage
    keys = [request.key(data.md5, data.split_id, ctx.seed) for ctx in ctxs]
    inputs: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
    results: list[dict[str, Any] | BaseException | None] = [None] * n
    metas: list[dict[str, Any] | None] = [None] * n
    built_now: set[int] = set()
    # a stored stage is read as it is: its upstream stages are needed only to build it again
    _load_stored(store, name, keys, ctxs, range(n), results, metas)
    todo = [i for i in range(n) if results[i] is None]
    if todo:
        sub = [ctxs[i] for i in todo]
        for local, up in request.inputs().items():
            for i, out in zip(todo, materialize(sub, up)):
                if isinstance(out, BaseException):
                    results[i] = out
                    _note(ctxs[i], name, keys[i], reused=False, status="failed: upstream stage failed")
                else:
                    inputs[i][local] = out
    live = [i for i in todo if results[i] is None]
    locks = [store.lock(k) for k in sorted({keys[i] for i in live})]
    for lock in locks:
        lock.acquire()
    try:
        _load_stored(store, name, keys, ctxs, live, results, metas)  # built by someone else while we waited
        # a build that failed earlier in this very run fails the same way: not rebuilt by every trial that reads it
        for i in live:
            if results[i] is None and (failure := store.failure(name, keys[i], ctxs[i].run_id)) is not None:
                results[i] = exc = StageFailed(f"stage {name} {keys[i]} failed earlier in this run: {failure['error']}")
                ctxs[i].fail(exc, **(failure.get("failed_at") or {"stage": name}))
                _note(ctxs[i], name, keys[i], reused=True, status="failed")
        missing = [i for i in live if results[i] is None]
        if missing:
            # the builds' own contexts: checkpoints go to the stage's partial folder (keyed by the stage key, so a
            # killed build resumes), the curve is the stage's own (stored with it, shown in every user's record)
            bctxs = [TrialContext(seed=ctxs[i].seed, device=ctxs[i].device,
                                  artifact_dir=store.partial_dir(name, keys[i]),
                                  stage_dir=ctxs[i].stage_dir, data_md5=ctxs[i].data_md5,
                                  code_version=ctxs[i].code_version, scorer=ctxs[i]._scorer, logger=ctxs[i].logger,
                                  key=ctxs[i].key, run_id=ctxs[i].run_id).bind(data, {}) for i in missing]
            stage = request.cls(request.config)
            ctxs[0].logger.info("stage %s: building %s for seed(s) %s", name, request.stage,
                                [ctxs[i].seed for i in missing])
            t0 = time.perf_counter()
            # torch's global generators (dropout masks, layer init) on a stream of the stage's own, restored after:
            # a stage built by the planner, by a trial, alone or in a batch starts from the same state
            with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
                torch.manual_seed(stream_seed(ctxs[missing[0]].seed, f"stage/{name}"))
                if request.cls.batchable:
                    try:
                        built = stage.build_seeds(data, [inputs[i] for i in missing], bctxs)
                    except Exception as exc:  # noqa: BLE001 - every seed of the build failed (each keeps its
                        built = [exc] * len(missing)  # own reason when it marked one with ctx.fail)
                else:
                    built = [_build_one(stage, data, inputs[i], b) for i, b in zip(missing, bctxs)]
            build_s = time.perf_counter() - t0
            for i, b, out in zip(missing, bctxs, built):
                if b.failure is not None:
                    out = b.failure
                if isinstance(out, BaseException):
                    results[i] = out
                    ctxs[i].fail(out, **(b.failed_at or {"stage": name}))
                    ctxs[i].curve.extend(b.curve)
                    store.record_failure(name, keys[i], ctxs[i].run_id, out, b.failed_at)
                    _note(ctxs[i], name, keys[i], reused=False, status="failed")
                    continue
                metas[i] = store.save(name, keys[i], out, {
                    "version": request.cls.version, "config": request.config.model_dump(mode="json"),
                    "upstream": {k: r.key(data.md5, data.split_id, ctxs[i].seed)
                                 for k, r in sorted(request.inputs().items())},
                    "dataset": data.dataset, "data_md5": data.md5, "split": data.split_id, "seed": ctxs[i].seed,
                    "run_id": ctxs[i].run_id, "owner": ctxs[i].key, "build_s": round(build_s, 3),
                    "seeds_built_together": len(missing),
                    # a batchable stage's dropout draws from one generator for the whole batch: the bytes depend on
                    # which seeds trained together (statistically equivalent; see methods/nn/autoencoder.py)
                    "built_with_seeds": [ctxs[j].seed for j in missing], "code_version": ctxs[i].code_version,
                    "curve": b.curve})
                results[i] = out
                built_now.add(i)
            for b in bctxs:
                b.remove_checkpoints()
    finally:
        for lock in reversed(locks):
            lock.release()
    for i in range(n):
        meta = metas[i]
        if meta is None:
            continue
        ctx = ctxs[i]
        if i in built_now:
            reused = False
        else:  # built earlier: by this trial's own stage node in this run (planned for it), or for someone else
            reused = ctx.key is None or meta.get("owner") != ctx.key or meta.get("run_id") != ctx.run_id
        if _note(ctx, name, keys[i], reused=reused, build_s=meta.get("build_s")):
            ctx.curve.extend({**row, "stage": row.get("stage", name)} for row in meta.get("curve", []))
    return results  # type: ignore[return-value]


def _load_stored(store: StageStore, name: str, keys: list[str], ctxs: list[TrialContext], which,
                 results: list, metas: list) -> None:
    for i in which:
        if results[i] is not None:
            continue
        try:
            got = store.load(name, keys[i])
        except StageCorrupt as exc:
            ctxs[i].logger.warning("%s", exc)
            got = None
        if got is not None:
            results[i], metas[i] = got
            ctxs[i].logger.info("stage %s (seed %d): reusing %s built %s", name, ctxs[i].seed, keys[i],
                                got[1].get("created_at"))


def _note(ctx: TrialContext, name: str, key: str, *, reused: bool, status: str = "ok",
          build_s: float | None = None) -> bool:
    """Add the stage to the trial's ``stages_used`` (once); True when it was new. ``build_s``: how long the
    stage took to build (once, whoever it was built for), so a report can show what a row really cost."""
    if any(u["key"] == key for u in ctx.stages_used):
        return False
    ctx.stages_used.append({"name": name, "key": key, "reused": reused,
                            **({} if build_s is None else {"build_s": round(float(build_s), 3)}),
                            **({} if status == "ok" else {"status": status})})
    return True


def _build_one(stage: Stage, data: ClusteringData, inputs: dict[str, dict[str, Any]],
               ctx: TrialContext) -> dict[str, Any] | BaseException:
    try:
        out = stage.build(data, inputs, ctx)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the seed's stage failed: that seed's trial fails with this reason
        return exc
    if not isinstance(out, dict):
        return TypeError(f"stage {stage.name!r}: build() must return a dict of artifacts, got {type(out).__name__}")
    return out

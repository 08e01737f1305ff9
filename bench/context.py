"""What a running method may use from the harness: seed, device, logger, artifacts, curves, stages."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.env import FaultSpec, checkpoint_interval_s, fault_nan_specs
from bench.errors import NonFiniteLossError

if TYPE_CHECKING:  # pragma: no cover
    from bench.method import ClusteringData
    from bench.stages import StageRequest


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def stream_seed(seed: int, name: str) -> int:
    """The seed of random stream ``name`` of trial seed ``seed``: streams with different names are independent,
    and adding a stream never shifts another (no offsets to keep apart)."""
    return int(hashlib.sha256(f"{int(seed)}/{name}".encode()).hexdigest()[:15], 16)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class TrialContext:
    """Handed to ``ClusteringMethod.run``.

    * ``seed``, ``device``, ``logger``, ``artifact_dir`` (per trial, kept between resumptions).
    * ``log_epoch(epoch, loss=..., eval_pred=...)`` appends to the learning curve; when ``eval_pred``
      is given the harness scores it against labels the method never sees. The curve is for plots
      and audits only; it never picks the result.
    * ``check_finite(loss)`` raises on NaN/inf so the trial fails cleanly instead of clustering noise.
    * ``stage(name)`` returns the artifacts of a stage the method declared (bench.stages): built once per
      (stage, version, config, upstream, data, seed) and shared by every method and run that needs it.
    * ``rng(name)`` / ``init_rng(name)``: the seed's named random streams (data order, augmentation, init, ...).
    * ``fail(exc, stage=..., iteration=...)`` masks this seed out of a seed batch: it is recorded as
      failed with that reason and place, the batch's other seeds go on untouched.
    * ``checkpointer(name)`` / ``TrialContext.batch_checkpointer(ctxs, name)``: where a long loop
      saves its progress (see :class:`Checkpointer`); removed by the harness once the records are written.
    """

    def __init__(self, *, seed: int, device: torch.device | str, artifact_dir: Path, stage_dir: Path,
                 data_md5: str, code_version: str, scorer: Callable[[np.ndarray], dict[str, float]] | None = None,
                 logger: logging.Logger | None = None, log_every_s: float = 30.0, key: str | None = None,
                 run_id: str | None = None):
        self.seed = int(seed)
        self.device = torch.device(device)
        self.artifact_dir = Path(artifact_dir)
        self.stage_dir = Path(stage_dir)
        self.data_md5 = data_md5
        self.code_version = code_version
        self.logger = logger or logging.getLogger("bench.trial")
        self.curve: list[dict[str, Any]] = []
        self.key, self.run_id = key, run_id
        #: the stages this trial used, for its record: [{name, key, reused}] (see :meth:`stage`)
        self.stages_used: list[dict[str, Any]] = []
        self.stage_requests: dict[str, StageRequest] = {}
        self.data: ClusteringData | None = None
        self._scorer = scorer
        self._log_every_s = log_every_s
        self.failure: BaseException | None = None
        self.failed_at: dict[str, Any] | None = None
        self._checkpoints: set[Path] = set()
        self._last_log = 0.0
        self._t0 = time.monotonic()

    # -- randomness ------------------------------------------------------------------------
    def rng(self, name: str, device: torch.device | str | None = None) -> torch.Generator:
        """Random stream ``name`` ("data_order", "augment", "init", "kmeans", ...) of this seed: a torch.Generator
        seeded from (seed, name), on ``device`` (default: the trial's). Methods draw only from these."""
        gen = torch.Generator(device=device or self.device)
        gen.manual_seed(stream_seed(self.seed, name))
        return gen

    @contextlib.contextmanager
    def init_rng(self, name: str = "init") -> Iterator[None]:
        """Run a block (building a model: layers draw from torch's global CPU generator) on stream ``name``;
        the global generator is restored afterwards, so nothing outside the block sees the reseeding."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, name))
            yield

    # -- curves ----------------------------------------------------------------------------
    def log_epoch(self, epoch: int | float, *, eval_pred: Any = None, **scalars: Any) -> None:
        row: dict[str, Any] = {"epoch": epoch, "elapsed_s": round(time.monotonic() - self._t0, 3)}
        for key, val in scalars.items():
            if isinstance(val, torch.Tensor):
                val = val.detach().float().item()
            row[key] = float(val) if isinstance(val, (int, float, np.floating, np.integer)) else val
        if eval_pred is not None and self._scorer is not None:
            pred = eval_pred.detach().cpu().numpy() if isinstance(eval_pred, torch.Tensor) else np.asarray(eval_pred)
            row.update({f"eval_{k}": v for k, v in self._scorer(pred.astype(np.int64).ravel()).items()})
        self.curve.append(row)
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s:
            self._last_log = now
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            self.logger.info("seed %d: %s", self.seed, shown)

    def check_finite(self, value: Any, what: str = "loss") -> None:
        v = value.detach().float().item() if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            raise NonFiniteLossError(f"{what} became {v} (seed {self.seed}); lower the learning rate or "
                                     "check the input scaling")

    # -- per-seed failure inside a seed batch -----------------------------------------------
    def fail(self, exc: BaseException, **where: Any) -> None:
        """Mark this seed failed (first failure wins); ``where``: stage, iteration, epoch, ... for the record."""
        if self.failure is None:
            self.failure, self.failed_at = exc, where
            self.logger.error("seed %d failed at %s: %s", self.seed, where, exc)

    def fault_due(self, stage: str, iteration: int) -> bool:
        """Debug fault injection, never part of a recipe (``BENCH_FAULT_NAN``, bench.env.fault_nan_specs): should
        the loop of ``stage`` poison this seed's weights with NaN after ``iteration``?"""
        return FaultSpec(self.seed, stage, iteration) in fault_nan_specs()

    # -- checkpoints (resume after a killed command) ----------------------------------------
    def checkpointer(self, name: str) -> Checkpointer:
        """A checkpoint of this trial's loop ``name`` in its artifact folder (keyed by the trial key)."""
        return TrialContext.batch_checkpointer([self], name)

    @staticmethod
    def batch_checkpointer(ctxs: list[TrialContext], name: str) -> Checkpointer:
        """One checkpoint for a loop that trains the seeds of ``ctxs`` together; its name hashes all their
        trial keys, so only the same batch resumes from it."""
        tag = ctxs[0].artifact_dir.name if len(ctxs) == 1 else \
            "batch-" + stable_hash([c.artifact_dir.name for c in ctxs], 12)
        ckpt = Checkpointer(ctxs[0].artifact_dir / f"{name}-{tag}.ckpt.pt", ctxs[0].logger)
        for ctx in ctxs:
            ctx._checkpoints.add(ckpt.path)
        return ckpt

    def remove_checkpoints(self) -> None:
        for path in self._checkpoints:
            remove_checkpoint(path)
        self._checkpoints.clear()

    @property
    def checkpoint_path(self) -> Path:
        return self.artifact_dir / "checkpoint.pt"

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Atomically replace this trial's checkpoint. The artifact folder is keyed by the trial key,
        so re-running the same trial (same config, data, seed, code) finds it again."""
        write_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint of this exact trial, or None. Unreadable or changed checkpoints are ignored."""
        if not self.checkpoint_path.exists():
            return None
        try:
            return read_checkpoint(self.checkpoint_path)
        except Exception as exc:  # noqa: BLE001 - a torn or foreign file: start over, say so
            self.logger.warning("ignoring unreadable checkpoint %s: %s", self.checkpoint_path, exc)
            return None

    # -- shared stages (bench.stages) --------------------------------------------------------
    def bind(self, data: ClusteringData, stage_requests: dict[str, StageRequest]) -> TrialContext:
        """Give the context the trial's data and the stages its method declared (``Method.stages``)."""
        self.data, self.stage_requests = data, dict(stage_requests)
        return self

    def stage(self, name: str) -> dict[str, Any]:
        """The artifacts of the stage the method declared as ``name``, for this seed: loaded from the stage store
        (sha256 checked) or built now (upstream first) under the stage's lock. Noted for the record."""
        out = TrialContext.batch_stage([self], name)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    @staticmethod
    def batch_stage(ctxs: list[TrialContext], name: str) -> list[dict[str, Any] | BaseException]:
        """:meth:`stage` for the seeds of a batch; a batchable stage builds its missing seeds in one model. A seed
        whose stage fails gets the exception (and is marked failed, ``ctx.fail``); the others go on."""
        from bench.stages import materialize

        if name not in ctxs[0].stage_requests:
            raise KeyError(f"stage {name!r} is not among the method's declared stages "
                           f"{sorted(ctxs[0].stage_requests)}; declare it in the method's `stages()`")
        return materialize(ctxs, ctxs[0].stage_requests[name])


class Checkpointer:
    """Atomic save and load of a long loop's state at iteration boundaries, at most every
    :func:`checkpoint_interval_s` seconds.

    The loop decides what ``state`` holds; for a resumed run to end exactly where an uncut one would
    (CPU, deterministic mode) it must hold everything the rest of the loop reads: weights, optimizer
    state, every RNG stream (:func:`rng_state`), the position in the loop and the curve so far.
    """

    def __init__(self, path: Path, logger: logging.Logger | None = None, every_s: float | None = None):
        self.path = Path(path)
        self.every_s = checkpoint_interval_s() if every_s is None else every_s
        self.logger = logger or logging.getLogger("bench.trial")
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        write_checkpoint(self.path, state)
        self._last = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = read_checkpoint(self.path)
        except Exception as exc:  # noqa: BLE001 - a foreign or damaged file: start over, say so
            self.logger.warning("ignoring unreadable checkpoint %s: %s", self.path, exc)
            return None
        self.logger.info("resuming from checkpoint %s", self.path.name)
        return state

    def remove(self) -> None:
        remove_checkpoint(self.path)


# A flipped byte in a checkpoint's tensors still unpickles: a resumed trial or stage build trained on from changed
# weights without a word. Each checkpoint has a sidecar <name>.sha256 listing the sha256 of its newest bytes and of
# the ones before (written first: a kill between the two renames leaves the previous checkpoint, still listed); a
# checkpoint whose bytes are not listed (changed, or no sidecar) is ignored and the loop starts over.
def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digests(path: Path) -> list[str]:
    try:
        return _sidecar(path).read_text().split()
    except (OSError, ValueError):
        return []


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    blob = _torch_bytes(state)
    atomic_write_bytes(_sidecar(path), "\n".join([hashlib.sha256(blob).hexdigest(), *_digests(path)[:1]]).encode())
    atomic_write_bytes(path, blob)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state, from bytes whose sha256 its sidecar lists; ValueError otherwise."""
    blob = Path(path).read_bytes()
    if hashlib.sha256(blob).hexdigest() not in _digests(path):
        raise ValueError("its bytes do not match the sha256 saved with it (changed since, or no .sha256 beside it)")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


def remove_checkpoint(path: Path) -> None:
    Path(path).unlink(missing_ok=True)
    _sidecar(Path(path)).unlink(missing_ok=True)


def rng_state(generators: list[torch.Generator] = ()) -> dict[str, Any]:
    """Every RNG stream a training loop may draw from: torch's global CPU (and CUDA) generators and
    the given ``generators`` (e.g. per-seed minibatch streams)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": [g.get_state() for g in generators]}


def set_rng_state(state: dict[str, Any], generators: list[torch.Generator] = ()) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for g, st in zip(generators, state["generators"], strict=True):
        g.set_state(st)


def _torch_bytes(obj: Any) -> bytes:
    bio = io.BytesIO()
    torch.save(obj, bio)
    return bio.getvalue()

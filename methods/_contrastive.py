"""The epoch loop of SimCLR + k-means, until that file moves onto :mod:`methods.engine` (its owner ports it).

CC, PICA and IDFD run on :class:`methods.engine.Engine`; the GPU data path, the lr schedules and the harness
config (``LoopConfig`` = :class:`methods.engine.EngineConfig`) live there and are re-exported here for
``methods/simclr_kmeans.py``. :class:`EpochLoop` has the semantics of the engine's :class:`CheckpointHook`
(per-epoch checkpoints, resume, ``max_minutes``) around a hand-written epoch body; remove it once nothing
imports it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from bench.context import TrialContext
from methods.engine import (  # noqa: F401 - re-exported for simclr_kmeans' pretext stage and methods/pcl.py
    EngineConfig,
    TimeBudgetExceeded,
    autocast,
    conv_layout,
    cosine_lr,
    epoch_batches,
    eval_pass,
    multistep_lr,
    prepare_training,
    set_lr,
    unlabeled_images,
)

LoopConfig = EngineConfig


class EpochLoop:
    """Checkpoint/resume and time budget around a method's own epoch loop::

        loop = EpochLoop(ctx, cfg, modules={"model": model}, optimizer=opt,
                         generators={"batch": g_batch, "aug": g_aug}, extra={"memory": memory})
        for epoch in loop.epochs(cfg.epochs):     # starts after the last checkpointed epoch
            ...train one epoch...
            loop.end_epoch(epoch, loss=mean_loss, eval_pred=maybe_labels)

    ``extra`` tensors are restored in place (``copy_``), so references held by the method stay valid.
    """

    def __init__(self, ctx: TrialContext, cfg: LoopConfig, *, modules: dict[str, torch.nn.Module],
                 optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator],
                 extra: dict[str, torch.Tensor] | None = None):
        self.ctx, self.cfg = ctx, cfg
        self.modules, self.opt, self.gens = modules, optimizer, generators
        self.extra = extra or {}
        self.t_start = time.monotonic()
        self.start_epoch = 0
        self.resumed_from: int | None = None
        self.epoch_times: list[float] = []
        self._t_epoch = 0.0
        self._resume()

    # -- state -------------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        # Fields that change the result; harness knobs (budget, eval cadence) may differ between calls.
        return self.cfg.fingerprint()

    def _state(self, epoch: int) -> dict[str, Any]:
        state = {
            "epoch": epoch,
            "config": self._fingerprint(),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.opt.state_dict(),
            "generators": {k: g.get_state() for k, g in self.gens.items()},
            "torch_rng": torch.get_rng_state(),
            "extra": {k: v.detach().cpu() for k, v in self.extra.items()},
            "curve": list(self.ctx.curve),
            "epoch_times": list(self.epoch_times),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _resume(self) -> None:
        ck = self.ctx.load_checkpoint()
        if ck is None:
            return
        if ck.get("config") != self._fingerprint():
            self.ctx.logger.warning("checkpoint %s is from another config; starting over", self.ctx.checkpoint_path)
            return
        for k, m in self.modules.items():
            m.load_state_dict(ck["modules"][k])
        self.opt.load_state_dict(ck["optimizer"])
        for k, g in self.gens.items():
            g.set_state(ck["generators"][k])
        torch.set_rng_state(ck["torch_rng"])
        if "cuda_rng" in ck and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        for k, v in self.extra.items():
            v.copy_(ck["extra"][k].to(v.device))
        self.ctx.curve[:] = ck["curve"]
        self.epoch_times = list(ck.get("epoch_times", []))
        self.start_epoch = self.resumed_from = int(ck["epoch"])
        self.ctx.logger.info("resuming from the checkpoint after epoch %d", self.start_epoch)

    # -- loop --------------------------------------------------------------------------------
    def epochs(self, total: int) -> Iterator[int]:
        """Epoch numbers still to run, 1-based (epoch e has e epochs done when it ends)."""
        for e in range(self.start_epoch + 1, total + 1):
            self._sync()
            self._t_epoch = time.perf_counter()
            yield e

    def _sync(self) -> None:
        dev = next(iter(self.modules.values())).parameters().__next__().device
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def train_seconds(self) -> float:
        """Seconds spent training in the current epoch so far (call before any eval pass)."""
        self._sync()
        return time.perf_counter() - self._t_epoch

    def wants_eval(self, epoch: int, total: int) -> bool:
        every = self.cfg.eval_every
        return epoch == total or (every > 0 and epoch % every == 0)

    def end_epoch(self, epoch: int, total: int, *, train_s: float, eval_pred: Any = None, **scalars: Any) -> None:
        """Log the epoch, checkpoint when due, stop when the time budget is spent."""
        for key, val in scalars.items():
            if key.startswith("loss"):
                self.ctx.check_finite(val, f"{key} at epoch {epoch}")
        self.epoch_times.append(train_s)
        self.ctx.log_epoch(epoch, eval_pred=eval_pred, epoch_s=round(train_s, 3), **scalars)
        last = epoch == total
        if not last and epoch % self.cfg.checkpoint_every == 0:
            self.ctx.save_checkpoint(self._state(epoch))
        budget = self.cfg.max_minutes
        if not last and budget is not None and time.monotonic() - self.t_start >= 60.0 * budget:
            if epoch % self.cfg.checkpoint_every != 0:
                self.ctx.save_checkpoint(self._state(epoch))
            raise TimeBudgetExceeded(
                f"time budget max_minutes={budget} spent after epoch {epoch}/{total}; the checkpoint is saved "
                f"({self.ctx.checkpoint_path.name}): run the same command again to resume from epoch {epoch + 1}")

    def finish(self) -> None:
        """Drop the checkpoint once the trial has its result (a re-run should not resume a finished run)."""
        path = self.ctx.checkpoint_path
        if path.exists():
            path.unlink()

    def info(self) -> dict[str, Any]:
        times = self.epoch_times
        return {"epochs_run": len(times), "resumed_from_epoch": self.resumed_from,
                "mean_epoch_s": round(sum(times) / len(times), 3) if times else None,
                "epoch_s_first": round(times[0], 3) if times else None}

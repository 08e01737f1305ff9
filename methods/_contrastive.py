"""Epoch loop shared by the contrastive methods (SimCLR + k-means, CC, PICA, IDFD).

Not a method (the leading underscore keeps the registry from importing it as one). It holds what
the four training loops have in common and nothing method-specific:

* GPU-resident data: the uint8 images go to the device once; each epoch draws a seeded
  permutation there and slices batches from it (no DataLoader, no host round trip).
* Per-epoch checkpoints and resume (issue 6, requirement 5): model, optimizer, scheduler, epoch,
  every RNG stream the loop draws from, extra tensors (e.g. IDFD's memory bank) and the learning
  curve so far go into ``ctx.save_checkpoint`` every ``checkpoint_every`` epochs. A trial re-run
  with the same key (same config, data, seed and code) finds the checkpoint and continues from
  the next epoch; on a CPU the resumed run ends with exactly the labels of an uninterrupted one
  (tests/test_contrastive_methods.py checks this).
* A wall-clock budget (``max_minutes``): once spent, the loop checkpoints and raises
  :class:`TimeBudgetExceeded`, which the harness records as a failed trial whose error line says
  to run the same command again to resume. Killing the process (``timeout``) works too: the next
  identical run resumes from the last checkpoint, losing at most ``checkpoint_every`` epochs.
* Eval passes without augmentation (``resize_eval``), batched, under the same precision.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from pydantic import Field

from bench.context import TrialContext
from bench.errors import BenchError
from bench.method import MethodConfig


class TimeBudgetExceeded(BenchError):
    """The per-command wall-clock budget ran out; the checkpoint is saved and the trial resumes on re-run."""


class LoopConfig(MethodConfig):
    """Harness-side knobs every contrastive method shares. None of them changes the training
    arithmetic except ``precision`` (see the note there)."""

    eval_every: int = Field(10, ge=0, description="epochs between label-blind eval passes logged to the curve "
                                                  "(0: only at the end); the curve never picks the result")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (resume after a kill)")
    max_minutes: float | None = Field(None, ge=0, description="wall-clock budget for this command; when spent, "
                                                              "checkpoint and stop (re-run the same trial to resume)")
    # Deviation (numerics only): the official codes train in fp32. bf16 autocast on a GPU is ~2-3x faster;
    # "fp32" restores the original arithmetic. CPUs always run fp32.
    precision: Literal["fp32", "bf16"] = "bf16"
    eval_batch_size: int = Field(1024, ge=1)


def autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device,
                  drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Index batches of one epoch from a seeded permutation drawn on the generator's device.

    ``drop_last`` as the official loaders do; a dataset smaller than one batch gives one batch of all.
    """
    perm = torch.randperm(n, generator=gen, device=gen.device).to(device)
    bs = min(batch_size, n)
    n_batches = n // bs if drop_last else -(-n // bs)
    for i in range(n_batches):
        yield perm[i * bs:(i + 1) * bs]


def prepare_training(x: torch.Tensor, net: torch.nn.Module,
                     device: torch.device) -> tuple[torch.Tensor, torch.nn.Module]:
    """The whole split on the device, kept in its stored dtype (uint8: 184 MB for CIFAR's 60k), and
    the network there. On a GPU also cuDNN autotuning (every batch has the same shape) and
    channels-last weights, the layout the GPU augmentations emit (see :func:`conv_layout`)."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return x.to(device, non_blocking=True).contiguous(), net


def unlabeled_images(data, use: bool) -> torch.Tensor | None:
    """The dataset's training-only unlabeled images (STL-10's 100,000) when the recipe uses them, else None."""
    x = data.x_unlabeled
    return x if use and x is not None and x.shape[0] > 0 else None


def conv_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch in the network's layout from :func:`prepare_training` (channels-last on a GPU)."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@torch.no_grad()
def eval_pass(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, prep: Callable[[torch.Tensor], torch.Tensor],
              batch_size: int, device: torch.device, precision: str) -> Any:
    """``fn(prep(x[batch]))`` over ``x`` in order; tensors (or tuples of tensors/None) concatenated as float32."""
    outs: list[Any] = []
    for s in range(0, x.shape[0], batch_size):
        xb = prep(x[s:s + batch_size].to(device, non_blocking=True))
        with autocast(device, precision):
            out = fn(xb)
        outs.append(tuple(None if o is None else o.float() for o in out) if isinstance(out, tuple) else out.float())
    if isinstance(outs[0], tuple):
        return tuple(None if outs[0][i] is None else torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))
    return torch.cat(outs)


def cosine_lr(base_lr: float, epoch: int, epochs: int, final_factor: float) -> float:
    """SCAN's per-epoch cosine: eta_min + (base - eta_min) (1 + cos(pi epoch / epochs)) / 2, eta_min = base * f."""
    eta_min = base_lr * final_factor
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def multistep_lr(base_lr: float, epoch: int, milestones: list[int], gamma: float) -> float:
    return base_lr * gamma ** sum(epoch >= m for m in milestones)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


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
        skip = {"max_minutes", "eval_every", "checkpoint_every", "eval_batch_size"}
        return {k: v for k, v in self.cfg.model_dump(mode="json").items() if k not in skip}

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

"""Hooks: what differs between the gradient-trained methods' epoch loops, plugged into :class:`Engine`.

OpenMMLab's pattern: a hook overrides any of ``before_run``, ``before_epoch``, ``after_step``, ``after_epoch``,
``after_run`` (each gets the engine; ``after_step`` also the batch indices and the step's outputs) and runs in
``priority`` order (lower first; ties in the order the hooks were given). State a hook needs to resume exactly
(a best loss, targets, a memory bank) goes through ``state_dict`` / ``load_state_dict`` into the checkpoint.

Built in: :class:`LrScheduleHook` (per-epoch lr), :class:`TargetUpdateHook` (periodic re-clustering / target
updates, subclassed by a method), :class:`MomentumResetHook` (a fresh momentum history each epoch, DEC's solver),
:class:`StreamOrderHook` (a pass's order from a stateful index stream, the autoencoder family's),
:class:`MemoryBankHook` (IDFD's and ISL's memory bank), :class:`EMAHook`, :class:`EvalHook` (label-blind eval pass
logged to the curve), :class:`MetricHook` (a score logged each epoch), :class:`CurveLogHook` (the curve row of each
epoch), :class:`EarlyStopHook` (plateau or criterion; can restore the best epoch's weights),
:class:`FaultInjectionHook` (debug NaN injection into a seed batch), :class:`CheckpointHook` (checkpoint every N
epochs, resume, wall-clock budget). The engine adds the log and checkpoint hooks itself.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from bench.context import Checkpointer, remove_checkpoint
from bench.errors import BenchError
from methods.engine.steps import reset_momentum
from methods.losses import update_memory

if TYPE_CHECKING:
    from bench.context import TrialContext
    from methods.engine.engine import Engine


class Priority(enum.IntEnum):
    """OpenMMLab's priority names: lower runs first."""
    HIGHEST = 0
    VERY_HIGH = 10
    HIGH = 30
    ABOVE_NORMAL = 40
    NORMAL = 50
    BELOW_NORMAL = 60
    LOW = 70
    VERY_LOW = 90
    LOWEST = 100


class TimeBudgetExceeded(BenchError):
    """The per-command wall-clock budget ran out; the checkpoint is saved and the trial resumes on re-run."""


class Hook:
    priority: int = Priority.NORMAL

    def before_run(self, engine: Engine) -> None: ...

    def before_epoch(self, engine: Engine) -> None: ...

    def after_step(self, engine: Engine, idx: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None: ...

    def after_epoch(self, engine: Engine) -> None: ...

    def after_run(self, engine: Engine) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# -- learning rate ---------------------------------------------------------------------------------

def cosine_lr(base_lr: float, epoch: int, epochs: int, final_factor: float) -> float:
    """SCAN's per-epoch cosine: eta_min + (base - eta_min) (1 + cos(pi epoch / epochs)) / 2, eta_min = base * f."""
    eta_min = base_lr * final_factor
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def multistep_lr(base_lr: float, epoch: int, milestones: list[int], gamma: float) -> float:
    """torch's MultiStepLR stepped once per epoch: base x gamma ^ (milestones passed)."""
    return base_lr * gamma ** sum(epoch >= m for m in milestones)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Base learning rate; a group with ``lr_mult`` (Caffe's blobs_lr) gets lr x mult."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


class LrScheduleHook(Hook):
    """Sets the lr at the start of each epoch from ``schedule(epochs_done)`` (0-based, as SCAN and torch's
    per-epoch schedulers do) and logs it as ``lr``."""
    priority = Priority.VERY_HIGH

    def __init__(self, schedule: Callable[[int], float]):
        self.schedule = schedule

    @classmethod
    def cosine(cls, base_lr: float, epochs: int, final_factor: float) -> LrScheduleHook:
        return cls(lambda e: cosine_lr(base_lr, e, epochs, final_factor))

    @classmethod
    def multistep(cls, base_lr: float, milestones: list[int], gamma: float) -> LrScheduleHook:
        return cls(lambda e: multistep_lr(base_lr, e, list(milestones), gamma))

    def before_epoch(self, engine: Engine) -> None:
        lr = self.schedule(engine.epoch - 1)
        set_lr(engine.optimizer, lr)
        engine.log["lr"] = lr


# -- targets ---------------------------------------------------------------------------------------

class TargetUpdateHook(Hook):
    """Recomputes what the loss trains towards (pseudo-labels, cluster centres, a target distribution) every
    ``every`` epochs, before that epoch's steps (epochs 1, 1 + every, ...): DeepCluster's and PICA-style
    re-clustering. A method subclasses it with ``update(engine)``; targets that the step reads must be updated in
    place (``copy_``) and returned by ``state_dict`` so a resumed run has them.

    ``after=True``: the update comes at the end of every ``every``-th epoch and of the last one instead (and once
    before the first epoch, which needs targets; a run of no epochs still gets that one, at its end), so that
    what the update finds can stop the run before another epoch starts: DEC's target update, whose label change
    is its stopping rule. ``updates`` counts the updates made so far."""
    priority = Priority.NORMAL

    def __init__(self, every: int = 1, after: bool = False):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every, self.after = every, after
        self.updates = 0

    def due(self, engine: Engine) -> bool:
        return (engine.epoch - 1) % self.every == 0

    def _update(self, engine: Engine) -> None:
        self.update(engine)
        self.updates += 1

    def before_epoch(self, engine: Engine) -> None:
        first = self.after and self.updates == 0
        if first or (not self.after and self.due(engine)):
            self._update(engine)

    def after_epoch(self, engine: Engine) -> None:
        if self.after and (engine.epoch % self.every == 0 or engine.is_last_epoch):
            self._update(engine)

    def after_run(self, engine: Engine) -> None:
        if self.after and self.updates == 0:
            self._update(engine)

    def update(self, engine: Engine) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])


class MomentumResetHook(Hook):
    """Zeroes the optimizer's momentum buffers (in place: a captured graph keeps their addresses) before every epoch
    but the first: DEC's official code starts a fresh Caffe solver, with no momentum history, for each interval
    between target updates (one engine epoch)."""
    priority = Priority.HIGH

    def before_epoch(self, engine: Engine) -> None:
        if engine.epoch > 1:
            reset_momentum(engine.optimizer)


class StreamOrderHook(Hook):
    """A pass's sample order from a stateful index stream (:func:`methods.engine.steps.index_streams`: the
    autoencoder family's per-seed minibatch streams, which run on across epochs instead of restarting):
    ``order(n_batches)`` gives the next ``n_batches`` batches of every seed as one ``[S, n_batches x batch]``
    tensor, in the stream's order (the pass slices it back into those batches). The stream's position goes into
    the checkpoint (its generators are the engine's streams)."""

    def __init__(self, stream: Any):
        self.stream = stream

    def order(self, n_batches: int) -> torch.Tensor:
        return torch.cat([self.stream.next() for _ in range(n_batches)], -1)

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state(state["stream"])


class MemoryBankHook(Hook):
    """A non-parametric memory bank (IDFD, ISL): after each step that outputs ``features``, the batch's rows move
    towards them, v_i <- normalise(m v_i + (1 - m) f_i) (IDFD's official ``NonParametricClassifier``, ISL's
    ``LinearAverage``). Saved with the checkpoint."""

    def __init__(self, memory: torch.Tensor, momentum: float):
        self.memory, self.momentum = memory, momentum

    def after_step(self, engine: Engine, idx: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        if "features" in outputs:
            update_memory(self.memory, outputs["features"], idx, self.momentum)

    def state_dict(self) -> dict:
        return {"memory": self.memory.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.memory.copy_(state["memory"].to(self.memory.device))  # in place: the step holds this tensor


class EMAHook(Hook):
    """An exponential moving average of a module's weights, updated after every optimizer step:
    ``ema <- ema + (1 - decay) (model - ema)``; buffers (BatchNorm statistics) are copied (FixMatch's ``EMA``). The
    averaged module is one of the engine's modules, so checkpoints carry it."""

    def __init__(self, ema: torch.nn.Module, model: torch.nn.Module, decay: float):
        self.ema_params, self.params = list(ema.parameters()), list(model.parameters())
        self.ema_buffers, self.buffers = list(ema.buffers()), list(model.buffers())
        self.decay = decay

    def after_step(self, engine: Engine, idx: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1 - self.decay)
            for be, bt in zip(self.ema_buffers, self.buffers):
                be.copy_(bt)


# -- evaluation and the curve ----------------------------------------------------------------------

class EvalHook(Hook):
    """Label-blind eval every ``every`` epochs (0: only at the end) and always after the last epoch:
    ``evaluate(engine)`` gives cluster labels, which go onto that epoch's curve row as ``eval_pred`` (the
    harness scores them; they never pick the result). ``pred`` holds the labels after the last epoch run,
    the method's result. Eval passes must not draw from the training streams (use a fresh ``ctx.rng``),
    so evaluating more often never changes the training."""
    priority = Priority.BELOW_NORMAL

    def __init__(self, evaluate: Callable[[Engine], torch.Tensor], every: int):
        self.evaluate, self.every = evaluate, every
        self.pred: torch.Tensor | None = None
        self.pred_epoch: int | None = None

    def _eval(self, engine: Engine) -> torch.Tensor:
        with torch.no_grad():
            self.pred = self.evaluate(engine)
        self.pred_epoch = engine.epoch
        return self.pred

    def after_epoch(self, engine: Engine) -> None:
        if engine.epoch == engine.max_epochs or (self.every > 0 and engine.epoch % self.every == 0):
            engine.log["eval_pred"] = self._eval(engine)

    def after_run(self, engine: Engine) -> None:
        if self.pred_epoch != engine.epoch:  # stopped early: the result is the last epoch run's
            self._eval(engine)


class MetricHook(Hook):
    """After each epoch, ``engine.log[name] = fn(engine)``: a label-free score computed outside the steps (DEPICT's
    held-out NMI to the initial labels), which goes on the curve row and which an :class:`EarlyStopHook` may
    monitor."""
    priority = Priority.NORMAL

    def __init__(self, name: str, fn: Callable[[Engine], Any]):
        self.name, self.fn = name, fn

    def after_epoch(self, engine: Engine) -> None:
        engine.log[self.name] = self.fn(engine)


class CurveLogHook(Hook):
    """One curve row per epoch (``ctx.log_epoch``): the epoch's mean losses, what other hooks put into
    ``engine.log`` (lr, eval_pred) and the training seconds. A non-finite loss fails the trial here, once per
    epoch (the only host sync of the loop besides the timing).

    For a trial that trains in phases (SCAN's clustering step, then self-labelling): ``epoch_offset`` numbers a
    later phase's rows after the earlier phases' epochs, and ``tags`` (e.g. ``phase="selflabel"``) go on every row."""
    priority = Priority.LOW

    def __init__(self, epoch_offset: int = 0, **tags: Any):
        self.epoch_offset, self.tags = epoch_offset, tags

    def after_epoch(self, engine: Engine) -> None:
        row = {**self.tags, **engine.log}
        for key, val in row.items():
            if key.startswith("loss"):
                engine.ctx.check_finite(val, f"{key} at epoch {engine.epoch}")
        pred = row.pop("eval_pred", None)
        engine.ctx.log_epoch(self.epoch_offset + engine.epoch, eval_pred=pred,
                             epoch_s=round(engine.epoch_times[-1], 3), **row)


class EarlyStopHook(Hook):
    """Stops after the epoch where ``criterion(engine)`` is true, or, without a criterion, where the logged
    ``monitor`` value has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``baseline(engine)``: the value before the first epoch (the untrained model's), which the epochs must beat.
    ``restore_best``: keep a copy of the engine's modules at the best value (the baseline's, if no epoch beats it)
    and load it back when the run ends (DEPICT's head pre-fit keeps its best epoch); the copy is checkpointed."""
    priority = Priority.VERY_LOW

    def __init__(self, monitor: str = "loss", patience: int = 10, min_delta: float = 0.0, mode: str = "min",
                 criterion: Callable[[Engine], bool] | None = None,
                 baseline: Callable[[Engine], float] | None = None, restore_best: bool = False):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode, self.criterion = \
            monitor, patience, min_delta, mode, criterion
        self.baseline, self.restore_best = baseline, restore_best
        self.best: float | None = None
        self.best_state: dict[str, dict[str, torch.Tensor]] | None = None
        self.bad_epochs = 0
        self.stopped_at: int | None = None

    def _keep(self, engine: Engine, val: float) -> None:
        self.best, self.bad_epochs = val, 0
        if self.restore_best:
            self.best_state = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
                               for name, m in engine.modules.items()}

    def before_run(self, engine: Engine) -> None:
        if self.baseline is not None:  # (a resumed run's checkpoint then replaces it)
            self._keep(engine, float(self.baseline(engine)))

    def after_epoch(self, engine: Engine) -> None:
        if self.criterion is not None:
            stop = bool(self.criterion(engine))
        else:
            val = float(engine.log[self.monitor])
            sign = 1.0 if self.mode == "min" else -1.0
            if self.best is None or sign * (self.best - val) > self.min_delta:
                self._keep(engine, val)
            else:
                self.bad_epochs += 1
            stop = self.bad_epochs >= self.patience
        if stop:
            self.stopped_at = engine.epoch
            engine.stop = True

    def after_run(self, engine: Engine) -> None:
        if self.best_state is not None:
            for name, m in engine.modules.items():
                m.load_state_dict(self.best_state[name])

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
        self.best_state = state.get("best_state")


# -- seed batches ----------------------------------------------------------------------------------

def poison_due_seeds(ctxs: list[TrialContext], stage: str, iteration: int, params: list[torch.Tensor]) -> None:
    """Debug fault injection (``ctx.fault_due``): NaN into the weights of the seeds asked for."""
    for s, ctx in enumerate(ctxs):
        if ctx.fault_due(stage, iteration):
            ctx.logger.warning("fault injection: seed %d's weights set to NaN after %s iteration %d", ctx.seed,
                               stage, iteration)
            with torch.no_grad():
                for p in params:
                    p[s].fill_(float("nan"))


class FaultInjectionHook(Hook):
    """``BENCH_FAULT_NAN=SEED@STAGE:ITER``: after step ITER of a seed batch (counted over the run), NaN into that
    seed's slice of ``params`` (tests of per-seed failure isolation; never part of a recipe)."""

    def __init__(self, stage: str, params: list[torch.Tensor]):
        self.stage, self.params = stage, params

    def after_step(self, engine: Engine, idx: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        poison_due_seeds(engine.ctxs, self.stage, engine.global_step + 1, self.params)


# -- checkpoints -----------------------------------------------------------------------------------

class CheckpointHook(Hook):
    """Checkpoint every ``every`` epochs into the trial's artifact folder, resume from it, stop on a budget.

    ``checkpointer``: save into its file instead of the trial's ``checkpoint.pt``, and at most every
    ``BENCH_CHECKPOINT_S`` seconds (:class:`bench.context.Checkpointer`): a seed batch's one checkpoint
    (``TrialContext.batch_checkpointer``), or one file per engine run of a method that runs the engine twice
    (DEPICT's head pre-fit and joint training).

    * ``before_run``: a checkpoint of this trial (the artifact folder is keyed by the trial key) whose
      ``fingerprint`` (the config fields that change the arithmetic) matches is loaded: weights, optimizer,
      every RNG stream, hook states, the curve; the run continues after its epoch. On a CPU in deterministic
      mode the resumed run ends with exactly the labels of an uncut one.
    * ``after_epoch``: saves when ``epoch % every == 0`` (never after the last epoch: the run is ending).
      Once ``max_minutes`` of wall-clock time are spent it saves and raises :class:`TimeBudgetExceeded`,
      which the harness records as a failed trial whose error says to run the same command again. Killing the
      process (``timeout``) works too: the next run resumes, losing at most ``every`` epochs.
    * ``after_run``: removes the checkpoint (a re-run should not resume a finished run), unless ``keep``: a run
      that a later one of the same trial continues (DEPICT's head pre-fit before joint training) keeps it until
      the trial's records are written (``ctx.remove_checkpoints``), so a kill before the later run's first
      checkpoint resumes it instead of starting it over.
    """
    priority = Priority.LOWEST

    def __init__(self, every: int = 1, max_minutes: float | None = None, fingerprint: dict[str, Any] | None = None,
                 checkpointer: Checkpointer | None = None, keep: bool = False):
        self.every, self.max_minutes, self.fingerprint = every, max_minutes, fingerprint or {}
        self.checkpointer = checkpointer
        self.keep = keep
        self.t_start = time.monotonic()
        self.saved_epochs: list[int] = []

    def _path(self, engine: Engine):
        return engine.ctx.checkpoint_path if self.checkpointer is None else self.checkpointer.path

    def _save(self, engine: Engine) -> None:
        state = {"config": self.fingerprint, "engine": engine.state_dict()}
        if self.checkpointer is None:
            engine.ctx.save_checkpoint(state)
        else:
            self.checkpointer.save(state)
        self.saved_epochs.append(engine.epoch)

    def before_run(self, engine: Engine) -> None:
        self.t_start = time.monotonic()
        ctx = engine.ctx
        ck = ctx.load_checkpoint() if self.checkpointer is None else self.checkpointer.load()
        if ck is None:
            return
        if ck.get("config") != self.fingerprint or "engine" not in ck:
            ctx.logger.warning("checkpoint %s is from another config; starting over", self._path(engine))
            return
        engine.load_state_dict(ck["engine"])
        engine.resumed_from = engine.epoch
        ctx.logger.info("resuming from the checkpoint after epoch %d", engine.epoch)

    def after_epoch(self, engine: Engine) -> None:
        if engine.is_last_epoch:
            return
        saved = engine.epoch % self.every == 0 and (self.checkpointer is None or self.checkpointer.due())
        if saved:
            self._save(engine)
        if self.max_minutes is not None and time.monotonic() - self.t_start >= 60.0 * self.max_minutes:
            if not saved:
                self._save(engine)
            raise TimeBudgetExceeded(
                f"time budget max_minutes={self.max_minutes} spent after epoch {engine.epoch}/{engine.max_epochs}; "
                f"the checkpoint is saved ({self._path(engine).name}): run the same command again to "
                f"resume from epoch {engine.epoch + 1}")

    def after_run(self, engine: Engine) -> None:
        if not self.keep:
            remove_checkpoint(self._path(engine))  # (with its .sha256)

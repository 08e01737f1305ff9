"""One epoch engine for the gradient-trained methods: epochs of steps, with hooks for what differs.

A method gives the engine its modules, its optimizer, the RNG streams its steps draw from, and one or more
*passes* per epoch: a pass sweeps a GPU-resident index range in batches (a seeded permutation drawn on the
device from the ``data_order`` stream) and calls the method's step on each batch::

    engine = Engine(ctx, cfg, modules={"net": net}, optimizer=opt, streams={"augment": g_aug},
                    hooks=[LrScheduleHook.multistep(...), EvalHook(cluster, cfg.eval_every)])
    engine.add_pass("train", n, step, cfg.batch_size)
    engine.run(cfg.epochs)
    labels = engine.hook(EvalHook).pred

``step(idx)`` computes the losses of one batch and returns them as a dict of tensors: ``"loss"`` is
back-propagated (zero_grad, backward, optimizer step: the engine's), every 0-d ``"loss*"`` entry is averaged over
the epoch on the device (no per-step host sync) and logged, and the whole dict goes to the hooks' ``after_step``
(e.g. IDFD's memory bank update reads the batch's features from it). Speed stays the method's: its step keeps
the GPU data path of :mod:`methods.engine.gpu` (uint8 data on the device, GPU augmentations, channels-last,
bf16 autocast); the engine adds a few Python calls per step and one sync per epoch (timing, finite check).

The engine always adds :class:`CheckpointHook` (from the config's harness fields: ``checkpoint_every``,
``max_minutes``; fingerprint = the other fields) and, for one trial, :class:`CurveLogHook`.

A *seed batch* (``Engine([ctx_0, ctx_1, ...], ...)``, the autoencoder family's ``run_seeds``): several seeds train
in lockstep as one batched model (weights stacked on a leading seed axis), each from its own data order. The step
takes ``[S, batch]`` indices (a pass's ``order`` gives ``[S, n]``) and returns every ``loss*`` as a vector of S
per-seed losses; the engine back-propagates their sum (each seed gets exactly its own gradient: the parameters are
disjoint) and averages each seed's losses over the epoch. Which seed stops when, and its curve rows, are the
method's hooks' (DEC's tolerance rule): a seed batch gets no default :class:`CurveLogHook`. A seed marked failed
(``ctx.fail``, e.g. a non-finite loss) computes on in its slot, isolated from the others; the checkpoint keeps
every seed's curve and failure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal, TypeVar

import torch
from pydantic import Field

from bench.context import TrialContext
from bench.env import cuda_graphs_enabled
from bench.method import MethodConfig
from methods.engine.gpu import epoch_batches
from methods.engine.hooks import CheckpointHook, CurveLogHook, Hook
from methods.engine.steps import GraphedStep

H = TypeVar("H", bound=Hook)


class EngineConfig(MethodConfig):
    """Harness-side knobs every engine-trained method shares. None of them changes the training arithmetic
    except ``precision`` (see the note there)."""

    #: fields that may differ between a checkpoint and the run resuming it (not in the fingerprint)
    HARNESS_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"max_minutes", "eval_every", "checkpoint_every", "eval_batch_size", "cuda_graph"})

    eval_every: int = Field(10, ge=0, description="epochs between label-blind eval passes logged to the curve "
                                                  "(0: only at the end); the curve never picks the result")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (resume after a kill)")
    max_minutes: float | None = Field(None, ge=0, description="wall-clock budget for this command; when spent, "
                                                              "checkpoint and stop (re-run the same trial to resume)")
    # Deviation (numerics only): the official codes train in fp32. bf16 autocast on a GPU is ~2-3x faster;
    # "fp32" restores the original arithmetic. CPUs always run fp32.
    precision: Literal["fp32", "bf16"] = "bf16"
    eval_batch_size: int = Field(1024, ge=1)
    cuda_graph: bool = Field(True, description="on a GPU, replay the steps of passes that allow it as one CUDA "
                                               "graph each (same arithmetic, no per-kernel launch cost)")

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change the result: a checkpoint resumes only a run with the same."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.HARNESS_FIELDS}


@dataclasses.dataclass
class Pass:
    """One sweep of an epoch: ``n`` samples in batches of ``batch_size`` (``drop_last`` as the official
    loaders; a source smaller than a batch gives one batch of all), each fed to ``step``.

    The batches come from a permutation of ``range(n)`` drawn from the ``data_order`` stream, or, with
    ``order``, from the index tensor ``order()`` returns at the start of each epoch, in its order (a method's
    own sampler, e.g. DeepCluster's uniform draw over pseudo-classes; ``n`` is then unused). In a seed batch
    ``order()`` gives one row per seed, ``[S, n]``, and the batches are ``[S, batch_size]`` column slices.

    For methods whose epochs differ (ISL's backbone / GAN / mining epochs): ``active()`` False skips the pass
    this epoch; ``train`` False runs it with the modules in eval mode (a frozen backbone); ``optimize`` False
    means the step does its own optimisation (a GAN's two optimizers) or none, and the engine only averages
    its ``loss*`` outputs (no ``"loss"`` needed).

    ``graph``: the step may be captured as a CUDA graph (with backward and the optimizer step) and replayed
    (:class:`methods.engine.steps.GraphedStep`); on a GPU with ``cuda_graph`` on, every full-size batch after three
    eager warm-up steps is a replay. A step allows it when it makes no host sync or host-to-device copy, draws
    random numbers only from the engine's streams or torch's default generator, reads every tensor it uses from
    storage that stays put (update buffers in place), and the modules and parameters it trains are not replaced
    during the run. The optimizer must be capturable (``adam(..., capturable=True)``; SGD is). A changed lr is
    noticed and captured again.

    ``after(idx)``: runs right after each optimizer step, without gradients, inside the captured graph when there
    is one (DEPICT's refresh of the batch's soft targets from the updated model)."""
    name: str
    n: int
    step: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    batch_size: int
    drop_last: bool = True
    order: Callable[[], torch.Tensor] | None = None
    active: Callable[[], bool] | None = None
    train: bool = True
    optimize: bool = True
    graph: bool = False
    after: Callable[[torch.Tensor], None] | None = None

    def batches(self, gen: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
        if self.order is None:
            yield from epoch_batches(self.n, self.batch_size, gen, device, self.drop_last)
            return
        order = self.order()
        n = order.shape[-1]
        bs = min(self.batch_size, n)
        n_batches = n // bs if self.drop_last else -(-n // bs)
        for i in range(n_batches):
            yield order[..., i * bs:(i + 1) * bs].to(device)


class Engine:
    def __init__(self, ctx: TrialContext | list[TrialContext], cfg: EngineConfig, *,
                 modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                 streams: dict[str, torch.Generator] | None = None, hooks: Iterable[Hook] = ()):
        self.seed_batch = isinstance(ctx, list)  # see the module doc
        self.ctxs: list[TrialContext] = list(ctx) if isinstance(ctx, list) else [ctx]
        self.ctx, self.cfg = self.ctxs[0], cfg
        self.device = self.ctx.device
        self.modules, self.optimizer = modules, optimizer
        # the engine's own stream draws the batch order; the method's (augmentation, ...) are checkpointed with it
        self.streams = {"data_order": self.ctx.rng("data_order"), **(streams or {})}
        self.passes: list[Pass] = []
        hooks = list(hooks)
        if not any(isinstance(h, CheckpointHook) for h in hooks):
            hooks.append(CheckpointHook(cfg.checkpoint_every, cfg.max_minutes, cfg.fingerprint()))
        if not self.seed_batch and not any(isinstance(h, CurveLogHook) for h in hooks):
            hooks.append(CurveLogHook())
        self.hooks = sorted(hooks, key=lambda h: h.priority)  # stable: ties keep the given order
        self._step_hooks = [h for h in self.hooks if type(h).after_step is not Hook.after_step]
        self.epoch = 0                  # epochs done (during an epoch: the current one, 1-based)
        self.max_epochs = 0
        self.global_step = 0
        self.stop = False               # set by a hook (early stop): the run ends after this epoch
        self.resumed_from: int | None = None
        self.log: dict[str, Any] = {}   # this epoch's curve row in the making (losses, lr, eval_pred, ...)
        self.epoch_times: list[float] = []
        self._graphed: dict[str, GraphedStep] = {}  # per pass, made on first use

    # -- building ----------------------------------------------------------------------------------
    def add_pass(self, name: str, n: int, step: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                 batch_size: int, drop_last: bool = True, order: Callable[[], torch.Tensor] | None = None,
                 active: Callable[[], bool] | None = None, train: bool = True, optimize: bool = True,
                 graph: bool = False, after: Callable[[torch.Tensor], None] | None = None) -> None:
        self.passes.append(Pass(name, n, step, batch_size, drop_last, order, active, train, optimize, graph, after))

    def hook(self, kind: type[H]) -> H:
        """The (first) hook of this type."""
        return next(h for h in self.hooks if isinstance(h, kind))

    @property
    def is_last_epoch(self) -> bool:
        return self.epoch >= self.max_epochs or self.stop

    # -- running -----------------------------------------------------------------------------------
    def run(self, epochs: int) -> None:
        """Epochs ``1..epochs`` (after the checkpointed ones, when resuming), hooks around each."""
        self.max_epochs = epochs
        self._call("before_run")
        while self.epoch < epochs and not self.stop:
            self.epoch += 1
            self.log = {}
            self._sync()
            t0 = time.perf_counter()
            self._call("before_epoch")
            self.log.update(self._train_epoch())
            self._sync()
            self.epoch_times.append(time.perf_counter() - t0)
            self._call("after_epoch")
        self._call("after_run")

    def _call(self, stage: str) -> None:
        for h in self.hooks:
            getattr(h, stage)(self)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _train_epoch(self) -> dict[str, torch.Tensor]:
        """Every pass once; the epoch's mean of each ``loss*`` output (over the steps that returned it, all passes;
        with several passes also per pass as ``<key>_<pass>``), as device tensors."""
        per_pass: list[tuple[Pass, list[str], torch.Tensor, int]] = []
        gen = self.streams["data_order"]
        for p in self.passes:
            if p.active is not None and not p.active():
                continue
            for m in self.modules.values():
                m.train(p.train)
            keys: list[str] | None = None
            acc: torch.Tensor | None = None
            steps = 0
            for idx in p.batches(gen, self.device):
                graphed = self._graphed_step(p, idx)
                if graphed is not None:
                    out = graphed.step(idx)  # step + backward + optimizer step, replayed
                else:
                    out = p.step(idx)
                    if p.optimize:
                        self.optimizer.zero_grad(set_to_none=True)
                        loss = out["loss"]
                        # a seed batch's per-seed losses: d(sum)/d(loss_s) = 1, each seed its own gradient
                        loss.backward(torch.ones_like(loss) if loss.dim() else None)
                        self.optimizer.step()
                    if p.after is not None:
                        with torch.no_grad():
                            p.after(idx)
                for h in self._step_hooks:
                    h.after_step(self, idx, out)
                if keys is None:  # 0-d losses; in a seed batch, one per seed
                    keys = [k for k, v in out.items() if k.startswith("loss") and v.dim() == int(self.seed_batch)]
                if keys:
                    vals = torch.stack([out[k].detach() for k in keys])
                    acc = vals if acc is None else acc + vals
                steps += 1
                self.global_step += 1
            if steps:
                per_pass.append((p, keys, acc, steps))
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        means: dict[str, torch.Tensor] = {}
        for p, keys, acc, steps in per_pass:
            for i, k in enumerate(keys):
                sums[k] = acc[i] if k not in sums else sums[k] + acc[i]
                counts[k] = counts.get(k, 0) + steps
                if len(per_pass) > 1:
                    means[f"{k}_{p.name}"] = acc[i] / steps
        return {**{k: sums[k] / counts[k] for k in sums}, **means}

    def _graphed_step(self, p: Pass, idx: torch.Tensor) -> GraphedStep | None:
        """The pass's CUDA-graphed step for a batch of this shape, or None (run eagerly: CPU, graphs off, a pass
        that does not allow it, or a batch shaped unlike the captured one, e.g. a last partial batch)."""
        if not (p.graph and p.optimize and self.cfg.cuda_graph and self.device.type == "cuda"
                and cuda_graphs_enabled()):
            return None
        gs = self._graphed.get(p.name)
        if gs is None:
            gs = self._graphed[p.name] = GraphedStep(
                p.step, self.optimizer, tuple(idx.shape), self.device, after_fn=p.after,
                n_losses=len(self.ctxs) if self.seed_batch else None, generators=list(self.streams.values()))
        return gs if idx.shape == gs.idx.shape else None

    # -- state -------------------------------------------------------------------------------------
    def _hook_keys(self) -> list[str]:
        seen: dict[str, int] = {}
        keys = []
        for h in self.hooks:
            name = type(h).__name__
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys

    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the run reads: weights, optimizer, every RNG stream (the engine's, the method's,
        torch's global ones), position, hook states, the curve so far."""
        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "streams": {k: g.get_state() for k, g in self.streams.items()},
            "torch_rng": torch.get_rng_state(),
            "hooks": {k: h.state_dict() for k, h in zip(self._hook_keys(), self.hooks)},
            "curve": list(self.ctx.curve),
            "epoch_times": list(self.epoch_times),
        }
        if self.seed_batch:
            state["curves"] = [list(c.curve) for c in self.ctxs]
            state["failures"] = [None if c.failure is None else (c.failure, c.failed_at) for c in self.ctxs]
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, g in self.streams.items():
            g.set_state(state["streams"][k])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for k, h in zip(self._hook_keys(), self.hooks):
            if state["hooks"].get(k):
                h.load_state_dict(state["hooks"][k])
        self.ctx.curve[:] = state["curve"]
        if self.seed_batch:
            for ctx, curve, failure in zip(self.ctxs, state["curves"], state["failures"], strict=True):
                ctx.curve[:] = curve
                if failure is not None:
                    ctx.fail(failure[0], **failure[1])
        self.epoch_times = list(state["epoch_times"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])

    def info(self) -> dict[str, Any]:
        """For the record: epochs run (this command and before), where it resumed, mean epoch seconds."""
        times = self.epoch_times
        return {"epochs_run": len(times), "resumed_from_epoch": self.resumed_from,
                "mean_epoch_s": round(sum(times) / len(times), 3) if times else None,
                "epoch_s_first": round(times[0], 3) if times else None}

"""Launch-cheap minibatch training for small models on GPU-resident data.

Small models (the d-500-500-2000-10 autoencoder) are bound by kernel launches, not arithmetic.
Two things keep the GPU busy:

* :class:`IndexStream` draws minibatch indices on the device, as back-to-back random permutations
  (every sample once per pass, no host round trip, no dropped remainder).
* :class:`GraphedStep` captures forward, backward and optimizer step once as a CUDA graph and
  replays it; per step the host only copies the next index slice and launches the graph. The loss
  is summed on the device and read (one sync) only when asked. On a CPU it runs eagerly.

The loss closure must read every tensor it uses through stable storage (update targets in place
with ``copy_``), because a graph replays fixed addresses.

Seed batching: a closure may train S independent models at once (weights stacked on a leading seed
axis, see ``methods.nn.autoencoder.BatchedMLPAutoencoder``). It then returns the S per-seed
losses as a vector; the step back-propagates their sum, which gives every seed exactly the gradient
of its own loss (parameters are disjoint), and the running loss is kept per seed.
:class:`SeedIndexStreams` draws the ``[S, batch]`` indices, each seed from its own generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from bench.env import cuda_graphs_enabled


class IndexStream:
    """Minibatch indices from consecutive random permutations of ``range(n)`` (seeded)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device):
        self.n, self.batch_size, self.gen, self.device = n, min(batch_size, n), generator, device
        self._buf = torch.empty(0, dtype=torch.long, device=device)
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self._pos + self.batch_size > self._buf.numel():
            rest = self._buf[self._pos:]
            perm = torch.randperm(self.n, generator=self.gen, device=self.gen.device).to(self.device)
            self._buf = torch.cat([rest, perm])
            self._pos = 0
        out = self._buf[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return out


class SequentialIndexStreams:
    """``[S, batch]`` minibatch indices walking ``range(n)`` in order, wrapping around at the end, the same
    for every seed: what Caffe's DATA layer reads from a LevelDB (DEC's official pretraining and
    self-training). ``start`` continues a walk, as DEC's ``seek`` does across target updates."""

    def __init__(self, n: int, batch_size: int, n_seeds: int, device: torch.device, start: int = 0,
                 block: int = 64):
        self.n, self.batch_size, self.n_seeds, self.device = n, min(batch_size, n), n_seeds, device
        self.pos = start % n
        self.block = max(1, block)
        self._buf = torch.empty(n_seeds, 0, dtype=torch.long, device=device)
        self._at = 0

    def next(self) -> torch.Tensor:
        # `block` batches are made at once, so a step costs one slice (no kernel launch)
        if self._at + self.batch_size > self._buf.shape[1]:
            flat = (torch.arange(self.block * self.batch_size, device=self.device) + self.pos) % self.n
            self._buf, self._at = flat.expand(self.n_seeds, -1), 0
        out = self._buf[:, self._at:self._at + self.batch_size]
        self._at += self.batch_size
        self.pos = (self.pos + self.batch_size) % self.n
        return out

    def state(self) -> dict:
        """Position in the walk (for checkpoints; same interface as SeedIndexStreams)."""
        return {"buf": self._buf.cpu(), "at": self._at, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self._buf, self._at, self.pos = state["buf"].to(self.device), int(state["at"]), int(state["pos"])


def index_streams(order: str, n: int, batch_size: int, generators: list[torch.Generator],
                  device: torch.device) -> SeedIndexStreams | SequentialIndexStreams:
    """``order``: "sequential" (Caffe's data layer) or "shuffled" (each seed its own permutations)."""
    if order == "sequential":
        return SequentialIndexStreams(n, batch_size, len(generators), device)
    return SeedIndexStreams(n, batch_size, generators, device)


class SeedIndexStreams:
    """``[S, batch]`` minibatch indices: row s is exactly what ``IndexStream(n, batch, gens[s])`` yields.

    Permutations are drawn ahead in blocks so that a step costs one slice of a device buffer.
    """

    def __init__(self, n: int, batch_size: int, generators: list[torch.Generator], device: torch.device,
                 block: int = 8):
        self.n, self.batch_size, self.gens, self.device = n, min(batch_size, n), list(generators), device
        self.block = max(1, block)
        self._buf = torch.empty(len(self.gens), 0, dtype=torch.long, device=device)
        self._pos = 0

    def _refill(self) -> None:
        rest = self._buf[:, self._pos:]
        rows = []
        for s, gen in enumerate(self.gens):
            perms = [torch.randperm(self.n, generator=gen, device=gen.device).to(self.device)
                     for _ in range(self.block)]
            rows.append(torch.cat([rest[s], *perms]))
        self._buf = torch.stack(rows)
        self._pos = 0

    def state(self) -> dict:
        """Position in the stream (the buffered indices; the generators are saved by their owner)."""
        return {"buf": self._buf.cpu(), "pos": self._pos}

    def load_state(self, state: dict) -> None:
        self._buf, self._pos = state["buf"].to(self.device), int(state["pos"])

    def next(self) -> torch.Tensor:
        # IndexStream appends one permutation whenever the rest is shorter than a batch; drawing
        # `block` permutations at once only changes when they are drawn, not the sequence.
        if self._pos + self.batch_size > self._buf.shape[1]:
            self._refill()
        out = self._buf[:, self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return out


class GraphedStep:
    """``step(idx)`` runs ``loss = loss_fn(idx); loss.backward(); optimizer.step()``.

    On CUDA with ``use_graph`` the three are captured once (after ``warmup`` eager steps on a side
    stream, which are real training steps) and replayed. Changing the learning rate re-captures.
    """

    def __init__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor | dict[str, torch.Tensor]],
                 optimizer: torch.optim.Optimizer,
                 batch_size: int | tuple[int, ...], device: torch.device, use_graph: bool = True, warmup: int = 3,
                 n_losses: int | None = None, after_fn: Callable[[torch.Tensor], None] | None = None,
                 generators: Sequence[torch.Generator] = ()):
        """``batch_size``: the index shape (an int, or ``(S, batch)`` for seed-batched closures).
        ``n_losses``: S when the closure returns a vector of per-seed losses. ``after_fn(idx)``
        runs after the optimizer step, inside the graph (e.g. DEPICT's clean re-prediction).
        ``loss_fn`` may return a dict of tensors with the loss under ``"loss"`` (the engine's steps); the last
        step's outputs are ``self.outputs`` (under a graph: fixed tensors, overwritten by the next replay).
        ``generators``: the CUDA generators the closure draws from besides torch's default one (e.g. an
        augmentation stream); they are registered with the graph, so every replay draws fresh numbers and
        advances them exactly as the eager step would."""
        self.loss_fn, self.opt, self.device, self.after_fn = loss_fn, optimizer, device, after_fn
        self.generators = [g for g in generators if g.device.type == "cuda"]
        self.outputs: torch.Tensor | dict[str, torch.Tensor] | None = None
        self._captured_lrs: tuple[float, ...] | None = None
        self.use_graph = use_graph and device.type == "cuda" and cuda_graphs_enabled()  # BENCH_CUDA_GRAPHS=0: eager
        self.warmup = warmup
        shape = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
        self.idx = torch.zeros(shape, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros(() if n_losses is None else (n_losses,), device=device)
        # d(sum of the seeds' losses)/d(loss): back-propagating these ones directly saves the sum and the
        # ones_like launches of ``loss.sum().backward()`` (same gradients)
        self._ones = None if n_losses is None else torch.ones(n_losses, device=device)
        self.n_summed = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager_left = warmup
        self._momentum: torch.Tensor | None = None  # device scalar during a momentum burn-in

    def _body(self) -> None:
        out = self.loss_fn(self.idx)
        loss = out["loss"] if isinstance(out, dict) else out
        if self._ones is not None:
            loss.backward(self._ones)
        else:
            (loss if loss.dim() == 0 else loss.sum()).backward()
        if self._momentum is not None:  # momentum burn-in: buf <- m * buf before SGD with momentum 1
            bufs = [st["momentum_buffer"] for st in self.opt.state.values() if st.get("momentum_buffer") is not None]
            if bufs:
                torch._foreach_mul_(bufs, self._momentum)
        self.opt.step()
        self.loss_sum += loss.detach()
        if self.after_fn is not None:
            with torch.no_grad():
                self.after_fn(self.idx)
        self.outputs = out

    def _eager(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._body()

    def _capture(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        for g in self.generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph):
            self._body()
        self._graph = graph
        self._captured_lrs = self._lrs()

    def _lrs(self) -> tuple[float, ...]:
        return tuple(float(g["lr"]) for g in self.opt.param_groups)

    def step(self, idx: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """One step on the batch ``idx``; returns the closure's outputs (see ``self.outputs``)."""
        if idx.shape != self.idx.shape:  # e.g. a dataset smaller than one batch
            if self._graph is not None:
                raise ValueError(f"batch shape changed from {tuple(self.idx.shape)} to {tuple(idx.shape)}")
            self.idx = torch.zeros_like(idx)
        self.idx.copy_(idx, non_blocking=True)
        self.n_summed += 1
        if not self.use_graph:
            self._eager()
            return self.outputs
        if self._graph is not None and self._lrs() != self._captured_lrs:
            # the lr was changed behind our back (a per-epoch schedule): it is baked into the captured optimizer
            # kernels, so capture again (no warm-up needed: optimizer state and cuDNN choices exist by now)
            self._graph = None
        if self._graph is None:
            if self._eager_left > 0:  # warm up on a side stream, as graph capture requires
                self._eager_left -= 1
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    self._eager()
                torch.cuda.current_stream(self.device).wait_stream(side)
                return self.outputs
            # capture also runs the step once: capture records without executing, so replay now
            self._capture()
        self._graph.replay()
        return self.outputs

    def _recapture(self) -> None:
        if self._graph is not None:
            self._graph = None
            self._eager_left = self.warmup

    def state(self) -> dict:
        """The running loss and the optimizer's state (the parameters are saved by their owner)."""
        return {"loss_sum": self.loss_sum.cpu(), "n_summed": self.n_summed, "opt": self.opt.state_dict()}

    def load_state(self, state: dict) -> None:
        self.loss_sum.copy_(state["loss_sum"])  # in place: a graph captured later adds into this storage
        self.n_summed = int(state["n_summed"])
        self.opt.load_state_dict(state["opt"])

    def set_lr(self, lr: float) -> None:
        """Base learning rate; a group with ``lr_mult`` (Caffe's blobs_lr, e.g. 2 for biases) gets lr x mult."""
        changed = any(g["lr"] != lr * g.get("lr_mult", 1.0) for g in self.opt.param_groups)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        if changed:  # lr is baked into the captured kernels
            self._recapture()

    def set_momentum(self, momentum: float, final: float) -> None:
        """Momentum for the next step; ``final`` is the optimizer's own value (Caffe's momentum burn-in:
        ``momentum x iter / burnin`` while iter < burnin).

        A captured graph bakes the momentum in, so while ``momentum != final`` the step runs SGD with
        momentum 1 after scaling the buffers by a device scalar (buf <- m * buf, then buf <- buf + grad:
        the same update), and the graph is captured once for the whole burn-in; at ``final`` it returns to
        the plain optimizer (one re-capture)."""
        if momentum != final:
            if self._momentum is None:
                self._momentum = torch.zeros((), device=self.device)
                for g in self.opt.param_groups:
                    g["momentum"] = 1.0
                self._recapture()
            self._momentum.fill_(momentum)
        elif self._momentum is not None or any(g["momentum"] != final for g in self.opt.param_groups):
            # (the second case: optimizer state loaded from a checkpoint taken during the burn-in)
            self._momentum = None
            for g in self.opt.param_groups:
                g["momentum"] = final
            self._recapture()

    def mean_loss(self, reset: bool = True) -> torch.Tensor:
        """Mean loss since the last reset (per seed for batched closures), as a device tensor
        (reading it syncs)."""
        out = self.loss_sum / max(1, self.n_summed)
        if reset:
            self.loss_sum.zero_()  # in place: a captured graph adds into this storage
            self.n_summed = 0
        return out


def reset_momentum(opt: torch.optim.Optimizer) -> None:
    """Zero the momentum buffers in place (a captured graph keeps their addresses): DEC's official code starts a
    fresh Caffe solver, with empty momentum history, at each target update."""
    with torch.no_grad():
        for st in opt.state.values():
            buf = st.get("momentum_buffer")
            if buf is not None:
                buf.zero_()


def sgd(params, lr: float, momentum: float, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum; on a GPU the fused kernel (one pass over parameters, gradients and
    momentum: the optimizer step is memory-bound once many seeds are batched). Same update rule.
    ``params`` may be groups with an ``lr_mult`` (see :func:`lr_groups`).

    PyTorch's rule (buf = m buf + g; p -= lr buf) equals Caffe's (h = m h + lr g; p -= h) while the lr
    is constant; at a step decay Caffe's history keeps the old lr's share, PyTorch's rescales (a
    difference over one momentum time constant, ~10 iterations, at each 20,000-iteration step)."""
    if params and isinstance(params[0], dict):
        params = [{**g, "lr": lr * g.get("lr_mult", 1.0)} for g in params]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, fused=device.type == "cuda")


def lr_groups(weights: list, biases: list, bias_lr_mult: float, others: list | None = None) -> list[dict]:
    """Parameter groups with Caffe's per-blob learning-rate multipliers: biases x ``bias_lr_mult``
    (DEC's layers say ``blobs_lr: 1, blobs_lr: 2``), the rest x 1."""
    groups = [{"params": list(weights), "lr_mult": 1.0}, {"params": list(biases), "lr_mult": float(bias_lr_mult)}]
    if others:
        groups.append({"params": list(others), "lr_mult": 1.0})
    return [g for g in groups if g["params"]]


def burnin_momentum(momentum: float, it: int, burnin: int) -> float:
    """Caffe's momentum_burnin (piiswrong/dec's solver.cpp): momentum x it / burnin while it < burnin."""
    return momentum * it / burnin if burnin > 0 and it < burnin else momentum


def adam(params, lr: float, device: torch.device, capturable: bool | None = None, **kwargs) -> torch.optim.Adam:
    """Adam; on a GPU the fused kernel, capturable in a CUDA graph unless ``capturable=False``. Same update rule."""
    on_gpu = device.type == "cuda"
    return torch.optim.Adam(params, lr=lr, fused=on_gpu, capturable=on_gpu if capturable is None else capturable,
                            **kwargs)


def step_decay(base_lr: float, step: int, every: int, gamma: float = 0.1) -> float:
    """Caffe's "step" policy: lr = base * gamma ^ floor(step / every)."""
    return base_lr * gamma ** (step // every) if every > 0 else base_lr


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    """Let fp32 matrix products use TF32 tensor cores (GPU only) inside the block, then restore.

    Captured CUDA graphs keep the kernels chosen at capture time, so wrap capture and replay alike.
    """
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old

"""The fully connected autoencoder of DEC/IDEC (d-500-500-2000-10) and its stacked pretraining.

Pretraining follows DEC's official Caffe scripts (piiswrong/dec, dec/pretrain.py):

1. Greedy layer-wise denoising: layer *i* learns to reconstruct the (clean, frozen) output of the
   layers below it. Dropout 0.2 on its input (not for the first layer, which sees pixels) and on
   its hidden code (not for the innermost, linear embedding layer); ReLU everywhere except the
   embedding and the pixel reconstruction. Gaussian init, std 0.01.
2. End-to-end fine-tuning of the stacked encoder/decoder without dropout.

Both use SGD, momentum 0.9, no weight decay, lr 0.1 divided by 10 every 20,000 iterations, batch
256; 50,000 iterations per layer and 100,000 for fine-tuning in the paper recipe. The Caffe
details are the defaults too (each checked against piiswrong/dec, see AutoencoderConfig): Caffe's
EUCLIDEAN_LOSS (half the mean squared error), biases at twice the learning rate (``blobs_lr: 1, 2``),
momentum burn-in from 0 to 0.9 over the first 1,000 iterations of every stage (each stage is a
fresh ``caffe train``), and the data read in order (a LevelDB, no shuffling).

Several seeds train as one :class:`BatchedMLPAutoencoder` (weights ``[S, in, out]``, one
``baddbmm`` per layer for all seeds); the cached stage stays one artifact per seed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn

from bench.context import Checkpointer, TrialContext, rng_state, set_rng_state, stream_seed
from bench.errors import NonFiniteLossError
from bench.method import ClusteringData, MethodConfig
from bench.stages import StageRequest

if TYPE_CHECKING:  # pragma: no cover
    from methods.stages.sdae import StackedDenoisingAutoencoder

    SDAEConfig = StackedDenoisingAutoencoder.Config
from methods.engine.hooks import poison_due_seeds
from methods.engine.steps import (
    GraphedStep,
    SeedIndexStreams,
    SequentialIndexStreams,
    burnin_momentum,
    index_streams,
    lr_groups,
    matmul_tf32,
    sgd,
    step_decay,
)


def _linear(n_in: int, n_out: int, std: float) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.zeros_(layer.bias)
    return layer


class MLPAutoencoder(nn.Module):
    """Encoder dims[0] -> ... -> dims[-1] (ReLU between, linear code); decoder mirrors it (linear output)."""

    def __init__(self, dims: list[int], init_std: float = 0.01):
        super().__init__()
        self.dims = list(dims)
        n = len(dims) - 1
        self.encoder = nn.ModuleList(_linear(dims[i], dims[i + 1], init_std) for i in range(n))
        # decoder[i] maps dims[i+1] -> dims[i]; applied from the innermost outwards
        self.decoder = nn.ModuleList(_linear(dims[i + 1], dims[i], init_std) for i in range(n))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i < len(self.encoder) - 1:
                x = torch.relu(x)
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for i in reversed(range(len(self.decoder))):
            z = self.decoder[i](z)
            if i > 0:
                z = torch.relu(z)
        return z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.decode(z)


def _gather(h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx [S, B]`` of ``h``: shared ``[N, d]`` (the input) or per seed ``[S, N, d]``."""
    s, b = idx.shape
    if h.dim() == 2:
        return h.index_select(0, idx.reshape(-1)).view(s, b, h.shape[-1])
    n = h.shape[1]
    offs = torch.arange(s, device=idx.device).unsqueeze(1) * n
    return h.reshape(s * n, h.shape[-1]).index_select(0, (idx + offs).reshape(-1)).view(s, b, h.shape[-1])


def per_seed_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each seed's ``[S, B, d]`` slice: a vector of S losses.

    ``mse_loss`` squares the difference in one kernel and differentiates it in one (``2 (a - b) g``), where
    ``(a - b).pow(2)`` takes two forward and three backward passes over the batch: the same values, fewer
    launches (a one-seed step is launch-bound) and fewer bytes (a ten-seed step is not)."""
    return nn.functional.mse_loss(a, b, reduction="none").flatten(1).mean(1)


class BatchedMLPAutoencoder(nn.Module):
    """S independent MLP autoencoders (one per seed) with weights stacked on a leading seed axis.

    A layer is one ``baddbmm`` for all seeds, so S seeds cost about the launches of one; seeds
    never mix (each seed's weights only see its own minibatch and its own loss). ``state(s)`` and
    ``from_states`` convert to and from :class:`MLPAutoencoder` state dicts, so the cached stage is
    one artifact per seed whether it was trained alone or in a batch.
    """

    def __init__(self, dims: list[int], n_seeds: int):
        super().__init__()
        self.dims, self.n_seeds = list(dims), int(n_seeds)
        n = len(dims) - 1
        self.enc_w = nn.ParameterList(nn.Parameter(torch.zeros(n_seeds, dims[i], dims[i + 1])) for i in range(n))
        self.enc_b = nn.ParameterList(nn.Parameter(torch.zeros(n_seeds, 1, dims[i + 1])) for i in range(n))
        self.dec_w = nn.ParameterList(nn.Parameter(torch.zeros(n_seeds, dims[i + 1], dims[i])) for i in range(n))
        self.dec_b = nn.ParameterList(nn.Parameter(torch.zeros(n_seeds, 1, dims[i])) for i in range(n))

    @property
    def n_layers(self) -> int:
        return len(self.enc_w)

    @classmethod
    def from_states(cls, dims: list[int], states: list[dict[str, torch.Tensor]]) -> BatchedMLPAutoencoder:
        model = cls(dims, len(states))
        with torch.no_grad():
            for i in range(model.n_layers):
                model.enc_w[i].copy_(torch.stack([st[f"encoder.{i}.weight"].T for st in states]))
                model.enc_b[i].copy_(torch.stack([st[f"encoder.{i}.bias"][None] for st in states]))
                model.dec_w[i].copy_(torch.stack([st[f"decoder.{i}.weight"].T for st in states]))
                model.dec_b[i].copy_(torch.stack([st[f"decoder.{i}.bias"][None] for st in states]))
        return model

    @classmethod
    def initial(cls, dims: list[int], init_std: float, seeds: list[int]) -> BatchedMLPAutoencoder:
        """Each seed's initial weights as ``MLPAutoencoder`` draws them on the seed's "sdae/init" stream."""
        states = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed(seed, "sdae/init"))
                states.append(MLPAutoencoder(dims, init_std).state_dict())
        return cls.from_states(dims, states)

    def state(self, s: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i in range(self.n_layers):
            out[f"encoder.{i}.weight"] = self.enc_w[i][s].detach().T.contiguous().cpu()
            out[f"encoder.{i}.bias"] = self.enc_b[i][s, 0].detach().clone().cpu()
            out[f"decoder.{i}.weight"] = self.dec_w[i][s].detach().T.contiguous().cpu()
            out[f"decoder.{i}.bias"] = self.dec_b[i][s, 0].detach().clone().cpu()
        return out

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [*self.enc_w, *self.enc_b]

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.dec_w, *self.dec_b]

    def enc_layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if h.dim() == 2:  # input shared by all seeds: [N, d] -> [S, N, out]
            return torch.matmul(h, self.enc_w[i]) + self.enc_b[i]
        return torch.baddbmm(self.enc_b[i], h, self.enc_w[i])

    def dec_layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.dec_b[i], h, self.dec_w[i])

    def encode(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        n = self.n_layers if upto is None else upto
        for i in range(n):
            x = self.enc_layer(i, x)
            if i < self.n_layers - 1:
                x = torch.relu(x)
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for i in reversed(range(self.n_layers)):
            z = self.dec_layer(i, z)
            if i > 0:
                z = torch.relu(z)
        return z

    @torch.no_grad()
    def encode_all(self, x: torch.Tensor, upto: int | None = None, chunk: int = 8192) -> torch.Tensor:
        """``[S, N, d]`` codes (or the output of the first ``upto`` layers) of ``x`` ([N, D] shared or
        [S, N, D] per seed), in chunks of rows."""
        dim = 0 if x.dim() == 2 else 1
        outs = [self.encode(x.narrow(dim, s, min(chunk, x.shape[dim] - s)), upto)
                for s in range(0, x.shape[dim], chunk)]
        if not outs:
            return torch.zeros(self.n_seeds, 0, self.dims[upto or -1], device=x.device)
        return torch.cat(outs, 1)


def denoising_layer_loss(model: BatchedMLPAutoencoder, i: int, h_in: torch.Tensor, idx: torch.Tensor,
                         dropout: float, loss_scale: float = 1.0) -> torch.Tensor:
    """Per-seed loss of greedy layer ``i``: reconstruct its (clean) input rows ``idx`` of ``h_in``.

    Dropout on the input (not for the first layer, which sees pixels) and on the hidden code (not
    for the innermost, linear embedding); ReLU on the reconstruction except for the pixels."""
    first, last = i == 0, i == model.n_layers - 1
    target = _gather(h_in, idx)
    h = target if first else nn.functional.dropout(target, dropout, training=True)
    h = model.enc_layer(i, h)
    if not last:
        h = nn.functional.dropout(torch.relu(h), dropout, training=True)
    rec = model.dec_layer(i, h)
    if not first:
        rec = torch.relu(rec)
    return loss_scale * per_seed_mse(rec, target)


def reconstruction_loss(model: BatchedMLPAutoencoder, x: torch.Tensor, idx: torch.Tensor,
                        loss_scale: float = 1.0) -> torch.Tensor:
    """Per-seed MSE (x ``loss_scale``) of the whole stacked autoencoder on rows ``idx`` of ``x`` (fine-tuning)."""
    xb = _gather(x, idx)
    return loss_scale * per_seed_mse(model.decode(model.encode(xb)), xb)


def _train(loss_fn, weights, biases, x_n: int, cfg: SDAEConfig, iters: int, ctxs: list[TrialContext],
           stage: str, gens: list[torch.Generator], progress: _Progress) -> None:
    """One Caffe ``train`` run for every seed at once: SGD (biases at ``bias_lr_mult`` x lr), lr step decay and
    momentum burn-in counted from this stage's first iteration.

    Per-seed isolation: a seed whose loss turns non-finite is masked out of the batch (``ctx.fail``,
    with the stage and iteration); its slice goes on computing garbage that never reaches the other
    seeds (disjoint parameters), so their numbers are those of a batch without the fault. Progress is
    checkpointed through ``progress`` and resumed from it."""
    params = [*weights, *biases]
    device = ctxs[0].device
    opt = sgd(lr_groups(weights, biases, cfg.bias_lr_mult), cfg.lr, cfg.momentum, device)
    step = GraphedStep(loss_fn, opt, (len(ctxs), cfg.batch_size), device, use_graph=cfg.cuda_graphs,
                       n_losses=len(ctxs))
    stream = index_streams(cfg.data_order, x_n, cfg.batch_size, gens, device)
    log_every = max(1, min(iters, cfg.log_every))
    iters_per_epoch = max(1, -(-x_n // cfg.batch_size))
    start = progress.resume_stage(stage, step, stream)
    for it in range(start, iters):
        step.set_lr(step_decay(cfg.lr, it, cfg.lr_step))
        step.set_momentum(burnin_momentum(cfg.momentum, it, cfg.momentum_burnin), cfg.momentum)
        step.step(stream.next())
        poison_due_seeds(ctxs, stage, it + 1, params)
        if (it + 1) % log_every == 0 or it + 1 == iters:
            losses = step.mean_loss().tolist()  # one sync for all seeds
            for ctx, loss in zip(ctxs, losses):
                if ctx.failure is not None:
                    continue
                epoch = (it + 1) / iters_per_epoch
                if not math.isfinite(loss):
                    ctx.fail(NonFiniteLossError(f"{stage} loss became {loss} by iteration {it + 1} (epoch {epoch:.2f}; "
                                                f"seed {ctx.seed}); lower the learning rate or check the input "
                                                "scaling"), stage=stage, iteration=it + 1, epoch=round(epoch, 3))
                    continue
                ctx.log_epoch(epoch, stage=stage, iteration=it + 1, loss=loss)
            if all(ctx.failure is not None for ctx in ctxs):
                raise ctxs[0].failure  # type: ignore[misc]
        if progress.due() and it + 1 < iters:
            progress.save(stage, it + 1, step, stream)


class _Progress:
    """Checkpoint of the stacked pretraining of a batch: which stage, which iteration, and all the state
    the rest of it reads (weights, optimizer, minibatch streams, dropout RNG, curves, failures)."""

    def __init__(self, ckpt: Checkpointer, model: BatchedMLPAutoencoder, ctxs: list[TrialContext],
                 gens: list[torch.Generator]):
        self.ckpt, self.model, self.ctxs, self.gens = ckpt, model, ctxs, gens
        self.state = ckpt.load()
        if self.state is not None:
            model.load_state_dict(self.state["model"])
            for ctx, curve, failure in zip(ctxs, self.state["curves"], self.state["failures"]):
                ctx.curve = list(curve)
                if failure is not None:
                    ctx.fail(failure[0], **failure[1])
        self.done_stages: list[str] = list(self.state["done_stages"]) if self.state else []

    def skip(self, stage: str) -> bool:
        return stage in self.done_stages

    def resume_stage(self, stage: str, step: GraphedStep, stream: SeedIndexStreams | SequentialIndexStreams) -> int:
        st = self.state
        if st is None or st["stage"] != stage:
            return 0
        step.load_state(st["step"])
        stream.load_state(st["stream"])
        set_rng_state(st["rng"], self.gens)
        self.state = None
        return int(st["iteration"])

    def finish(self, stage: str) -> None:
        self.done_stages.append(stage)

    def due(self) -> bool:
        return self.ckpt.due()

    def save(self, stage: str, iteration: int, step: GraphedStep,
             stream: SeedIndexStreams | SequentialIndexStreams) -> None:
        self.ckpt.save({"stage": stage, "iteration": iteration, "done_stages": list(self.done_stages),
                        "model": self.model.state_dict(), "step": step.state(), "stream": stream.state(),
                        "rng": rng_state(self.gens), "curves": [list(c.curve) for c in self.ctxs],
                        "failures": [None if c.failure is None else (c.failure, c.failed_at) for c in self.ctxs]})


def pretrain_stacked_batched(x: torch.Tensor, cfg: SDAEConfig, ctxs: list[TrialContext],
                             ckpt: Checkpointer | None = None) -> list[dict[str, torch.Tensor]]:
    """Greedy layer-wise denoising pretraining, then end-to-end fine-tuning, for every seed of
    ``ctxs`` at once. Returns one ``MLPAutoencoder`` state dict per seed (a seed masked out by
    ``ctx.fail`` gets its garbage weights back: the caller must not store them).

    ``x`` is the scaled input ``[N, D]`` on the device. Each seed has its own initial weights (stream
    "sdae/init") and its own minibatch order (stream "sdae/data_order"); dropout masks come from the device's
    global generator, so a seed trained in a batch is statistically, not bitwise, the same as alone.
    ``ckpt``: where progress is saved and resumed from (none: no checkpoints).
    """
    device = ctxs[0].device
    gens = [ctx.rng("sdae/data_order") for ctx in ctxs]
    dims = [x.shape[1], *cfg.hidden_dims]
    model = BatchedMLPAutoencoder.initial(dims, cfg.init_std, [ctx.seed for ctx in ctxs]).to(device)
    progress = _Progress(ckpt or Checkpointer(ctxs[0].artifact_dir / "unused", every_s=float("inf")), model, ctxs,
                         gens)
    n_layers = model.n_layers
    with matmul_tf32(cfg.tf32):
        for i in range(n_layers):
            stage = f"pretrain_layer{i + 1}"
            if progress.skip(stage):
                continue
            h_in = model.encode_all(x, upto=i) if i > 0 else x  # clean output of the frozen layers below

            def layer_loss(idx: torch.Tensor, i=i, h_in=h_in) -> torch.Tensor:
                return denoising_layer_loss(model, i, h_in, idx, cfg.dropout, cfg.loss_scale)

            _train(layer_loss, [model.enc_w[i], model.dec_w[i]], [model.enc_b[i], model.dec_b[i]], x.shape[0], cfg,
                   cfg.iters_per_layer, ctxs, stage, gens, progress)
            progress.finish(stage)
            del h_in

        def finetune_loss(idx: torch.Tensor) -> torch.Tensor:
            return reconstruction_loss(model, x, idx, cfg.loss_scale)

        if not progress.skip("finetune"):
            _train(finetune_loss, [*model.enc_w, *model.dec_w], [*model.enc_b, *model.dec_b], x.shape[0], cfg,
                   cfg.finetune_iters, ctxs, "finetune", gens, progress)
    return [model.state(s) for s in range(len(ctxs))]


def pretrained_autoencoders(ctxs: list[TrialContext], stage: str = "autoencoder") -> BatchedMLPAutoencoder:
    """The seeds' stacked autoencoders (the method's stage ``stage``, built once per seed and data and shared by
    AE + k-means, DEC and IDEC) as one batched model on the device. A seed whose stage failed is already marked
    (``ctx.fail``); its slot holds a copy of another seed's weights that nothing reads."""
    outs = TrialContext.batch_stage(ctxs, stage)
    good = [o for o in outs if not isinstance(o, BaseException)]
    if not good:
        raise outs[0]  # type: ignore[misc]
    states = [o["state"] if not isinstance(o, BaseException) else good[0]["state"] for o in outs]
    return BatchedMLPAutoencoder.from_states(good[0]["dims"], states).to(ctxs[0].device)


def scaled_input(images: torch.Tensor, input_scale: float, device: torch.device) -> torch.Tensor:
    """Flattened pixels on the 0..255 scale times ``input_scale`` (DEC: x 0.02), on ``device``."""
    return (ClusteringData.float01(images).flatten(1) * (255.0 * input_scale)).to(device)


#: Per-dataset input scaling of the autoencoder family (pixels 0..255 times input_scale), shared by DEC,
#: IDEC and AE + k-means so that the three use the same pretrained stage on each dataset.
#: * mnist: x 0.02, DEC's make_mnist_data (piiswrong/dec, dec.py), which IDEC loads too (x / 50).
#: * usps: x 2/255, i.e. the [0, 2] grey values of the usps_*.jf files that IDEC's official code feeds
#:   unscaled (XifengGuo/IDEC-toy datasets.load_usps; DEC-keras divides the same values by 2 to reach
#:   [0, 1]). x 0.02 would give [0, 5.1], 2.55 times the official input.
#: * fashion-mnist, digits: no official DEC/IDEC setting exists; they keep MNIST's x 0.02 (the same
#:   28x28 / 8x8 grey digits-like format, rescaled to 0..255 by the loader).
AE_DATASET_DEFAULTS: dict[str, dict[str, Any]] = {"usps": {"input_scale": 2.0 / 255.0}}


def with_ae_defaults(per_method: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A method's ``dataset_defaults`` on top of :data:`AE_DATASET_DEFAULTS`."""
    names = set(AE_DATASET_DEFAULTS) | set(per_method)
    return {d: {**AE_DATASET_DEFAULTS.get(d, {}), **per_method.get(d, {})} for d in sorted(names)}


class AutoencoderConfig(MethodConfig):
    """Stacked autoencoder pretraining, shared by the autoencoder family (DEC, IDEC, AE + k-means)."""

    hidden_dims: list[int] = Field(default_factory=lambda: [500, 500, 2000, 10],
                                   description="encoder widths after the input; the last is the embedding")
    input_scale: float = Field(0.02, gt=0, description="pixels (0..255) times this; official MNIST data x0.02")
    pretrain_dropout: float = Field(0.2, ge=0, lt=1)
    pretrain_lr: float = Field(0.1, gt=0)
    pretrain_lr_step: int = Field(20000, ge=1, description="lr x0.1 every this many iterations")
    pretrain_momentum: float = 0.9
    pretrain_batch_size: int = Field(256, ge=1)
    pretrain_iters_per_layer: int = Field(50000, ge=0)
    finetune_iters: int = Field(100000, ge=0)
    init_std: float = Field(0.01, gt=0, description="Gaussian init of every layer, as the official code")
    # The official Caffe details (piiswrong/dec: pretrain.py writes the nets and solvers, dec.py make_net the
    # layers; caffe/src/caffe/solver.cpp and layers/euclidean_loss_layer.cu the rules):
    # EUCLIDEAN_LOSS = sum of squares / count / 2, i.e. half of the mean squared error used here.
    pretrain_loss_scale: float = Field(0.5, gt=0, description="x MSE; Caffe's Euclidean loss is MSE / 2")
    # every INNER_PRODUCT layer has "blobs_lr: 1, blobs_lr: 2": biases learn at twice the rate.
    pretrain_bias_lr_mult: float = Field(2.0, gt=0, description="bias lr = this x lr (Caffe blobs_lr 2)")
    # pt_solver/ft_solver: "momentum_burnin: 1000" (solver.cpp: momentum x iter / 1000 while iter < 1000),
    # counted per `caffe train` run, i.e. per greedy layer and again for fine-tuning.
    pretrain_momentum_burnin: int = Field(1000, ge=0, description="momentum ramps 0 -> momentum over this many "
                                          "iterations of each stage (0: off)")
    # Caffe's DATA layer reads the LevelDB (mnist_train) in order, wrapping around; nothing shuffles it.
    # Deviation: the official pretraining reads only the training split (mnist_train, 60,000); here it
    # reads the method's train split (DEC: train + test), because a method sees only its protocol's splits.
    pretrain_data_order: Literal["sequential", "shuffled"] = Field(
        "sequential", description="minibatches in data order, wrapping around (Caffe), or per-seed permutations")
    cuda_graphs: bool = Field(True, description="capture training steps as CUDA graphs (GPU only; same math)")
    # Deviation: Caffe multiplied in full fp32. TF32 tensor cores (10-bit mantissa products, fp32
    # accumulation) make the 10-seed batched model fit the speed target; GPU only, part of the stage key.
    tf32: bool = Field(True, description="allow TF32 matrix products on the GPU (no effect on a CPU)")

    def protocol(self, batch_size: int) -> dict:
        """The protocol fields of a method built on this autoencoder (``batch_size``: its own stage's)."""
        return {"image_size": None, "stem": "mlp " + "-".join(map(str, self.hidden_dims)), "epochs": None,
                "batch_size": batch_size,
                "pretrain_iters": f"{self.pretrain_iters_per_layer}/layer + {self.finetune_iters} finetune"}

    def sdae_request(self) -> StageRequest:
        """The shared stage this config pretrains: the same request (hence the same artifact per seed and data)
        from AE + k-means, DEC and IDEC when their autoencoder fields agree."""
        from methods.stages.sdae import StackedDenoisingAutoencoder as SDAE

        return StageRequest("sdae", SDAE.Config(
            hidden_dims=tuple(self.hidden_dims), input_scale=self.input_scale, dropout=self.pretrain_dropout,
            lr=self.pretrain_lr, lr_step=self.pretrain_lr_step, momentum=self.pretrain_momentum,
            batch_size=self.pretrain_batch_size, iters_per_layer=self.pretrain_iters_per_layer,
            finetune_iters=self.finetune_iters, init_std=self.init_std, loss_scale=self.pretrain_loss_scale,
            bias_lr_mult=self.pretrain_bias_lr_mult, momentum_burnin=self.pretrain_momentum_burnin,
            data_order=self.pretrain_data_order, cuda_graphs=self.cuda_graphs, tf32=self.tf32))

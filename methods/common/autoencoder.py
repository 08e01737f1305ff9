"""The fully connected autoencoder of DEC/IDEC (d-500-500-2000-10) and its stacked pretraining.

Pretraining follows DEC's official Caffe scripts (piiswrong/dec, dec/pretrain.py):

1. Greedy layer-wise denoising: layer *i* learns to reconstruct the (clean, frozen) output of the
   layers below it. Dropout 0.2 on its input (not for the first layer, which sees pixels) and on
   its hidden code (not for the innermost, linear embedding layer); ReLU everywhere except the
   embedding and the pixel reconstruction. Gaussian init, std 0.01.
2. End-to-end fine-tuning of the stacked encoder/decoder without dropout.

Both use SGD, momentum 0.9, no weight decay, lr 0.1 divided by 10 every 20,000 iterations, batch
256, MSE; 50,000 iterations per layer and 100,000 for fine-tuning in the paper recipe.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from bench.context import TrialContext
from bench.method import MethodConfig
from methods.common.train import GraphedStep, IndexStream, step_decay


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


@torch.no_grad()
def encode_all(model: MLPAutoencoder, x: torch.Tensor, chunk: int = 16384, upto: int | None = None) -> torch.Tensor:
    """Encoder output (or the output of the first ``upto`` encoder layers) for every row, in chunks."""
    outs = []
    n_layers = len(model.encoder) if upto is None else upto
    for s in range(0, x.shape[0], chunk):
        h = x[s:s + chunk]
        for i in range(n_layers):
            h = model.encoder[i](h)
            if i < len(model.encoder) - 1:
                h = torch.relu(h)
        outs.append(h)
    return torch.cat(outs)


def _train(loss_fn, params, x_n: int, cfg: dict[str, Any], iters: int, ctx: TrialContext, stage: str,
           gen: torch.Generator) -> None:
    opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=0.0)
    step = GraphedStep(loss_fn, opt, cfg["batch_size"], ctx.device, use_graph=cfg.get("cuda_graphs", True))
    stream = IndexStream(x_n, cfg["batch_size"], gen, ctx.device)
    log_every = max(1, min(iters, cfg.get("log_every", 1000)))
    for it in range(iters):
        step.set_lr(step_decay(cfg["lr"], it, cfg["lr_step"]))
        step.step(stream.next())
        if (it + 1) % log_every == 0 or it + 1 == iters:
            loss = step.mean_loss()
            ctx.check_finite(loss, f"{stage} loss")
            ctx.log_epoch((it + 1) / max(1, -(-x_n // cfg["batch_size"])), stage=stage, iteration=it + 1, loss=loss)


def pretrain_stacked(x: torch.Tensor, cfg: dict[str, Any], ctx: TrialContext) -> dict[str, torch.Tensor]:
    """Greedy layer-wise denoising pretraining, then end-to-end fine-tuning. Returns a state dict.

    ``cfg``: dims, dropout, lr, lr_step, momentum, batch_size, iters_per_layer, finetune_iters,
    init_std, cuda_graphs, log_every. ``x`` is the scaled input on ``ctx.device``.
    """
    gen = ctx.generator(offset=101)
    torch.manual_seed(ctx.seed)  # weight init draws from the global generator
    model = MLPAutoencoder(cfg["dims"], cfg["init_std"]).to(ctx.device)
    n_layers = len(model.encoder)
    drop = cfg["dropout"]
    for i in range(n_layers):
        enc, dec = model.encoder[i], model.decoder[i]
        h_in = encode_all(model, x, upto=i) if i > 0 else x  # clean output of the frozen layers below
        last = i == n_layers - 1

        def layer_loss(idx: torch.Tensor, enc=enc, dec=dec, h_in=h_in, first=i == 0, last=last) -> torch.Tensor:
            target = h_in.index_select(0, idx)
            h = target if first else nn.functional.dropout(target, drop, training=True)
            h = enc(h)
            if not last:
                h = nn.functional.dropout(torch.relu(h), drop, training=True)
            rec = dec(h)
            if not first:
                rec = torch.relu(rec)
            return nn.functional.mse_loss(rec, target)

        _train(layer_loss, list(enc.parameters()) + list(dec.parameters()), x.shape[0], cfg,
               cfg["iters_per_layer"], ctx, f"pretrain_layer{i + 1}", gen)
        del h_in

    def finetune_loss(idx: torch.Tensor) -> torch.Tensor:
        xb = x.index_select(0, idx)
        return nn.functional.mse_loss(model(xb)[1], xb)

    _train(finetune_loss, list(model.parameters()), x.shape[0], cfg, cfg["finetune_iters"], ctx, "finetune", gen)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def pretrained_autoencoder(x: torch.Tensor, cfg: dict[str, Any], ctx: TrialContext) -> MLPAutoencoder:
    """The stacked autoencoder for this (config, data, seed, code), built once and shared.

    DEC, IDEC and AE + k-means with the same seed get the same weights (ClustPy's fairness device),
    through the trial context's stage cache.
    """
    key_cfg = {k: cfg[k] for k in ("dims", "dropout", "lr", "lr_step", "momentum", "batch_size", "iters_per_layer",
                                   "finetune_iters", "init_std", "input_scale", "train_split")}
    state = ctx.cached_stage("sdae", key_cfg, lambda: pretrain_stacked(x, cfg, ctx))
    model = MLPAutoencoder(cfg["dims"], cfg["init_std"])
    model.load_state_dict(state)
    return model.to(ctx.device)


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
    cuda_graphs: bool = Field(True, description="capture training steps as CUDA graphs (GPU only; same math)")

    def ae_cfg(self, input_dim: int, train_split: str) -> dict:
        return {"dims": [input_dim, *self.hidden_dims], "dropout": self.pretrain_dropout, "lr": self.pretrain_lr,
                "lr_step": self.pretrain_lr_step, "momentum": self.pretrain_momentum,
                "batch_size": self.pretrain_batch_size, "iters_per_layer": self.pretrain_iters_per_layer,
                "finetune_iters": self.finetune_iters, "init_std": self.init_std, "input_scale": self.input_scale,
                "train_split": train_split, "cuda_graphs": self.cuda_graphs}

"""SimCLR pretext training as SCAN runs it: the stage SimCLR + k-means, SCAN and SPICE start from.

Recipe from SCAN's official code (wvangansbeke/Unsupervised-Classification, configs/pretext/simclr_cifar10.yml,
simclr.py, utils/common_config.py; claims.md sections 2 and 12), each value at its default below:

* ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool) at 32 px; projection head 512-512-128,
  L2-normalised; NT-Xent with temperature 0.1.
* SGD lr 0.4, momentum 0.9 (no Nesterov), weight decay 1e-4, per-epoch cosine from lr to lr * 0.1^3,
  500 epochs, batch 512, drop_last.
* Augmentation: RandomResizedCrop(32, scale 0.2-1), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8,
  grayscale 0.2, normalised with the dataset's mean/std.
* Trained on the train split only (the stage key holds the split); STL-10 on train + the 100,000 unlabeled
  images (simclr.py: ``split='train+unlabeled'``).
* Loss: SCAN's ``SimCLRLoss`` is one-sided (``anchor = features[:, 0]``): the first view's N rows are the
  anchors, each contrasted with the other 2N - 1 outputs (``anchors: first``; ``both`` = the SimCLR paper's
  symmetric loss). Both views go through the network in one batch, so BatchNorm sees them together.

Artifacts: the network's weights (backbone + head, CPU tensors), the architecture to rebuild it
(:func:`load_pretext`), and the per-epoch training seconds. A build checkpoints every ``CHECKPOINT_EVERY``
epochs into the stage's partial folder and a killed build resumes there (same key).

Speed (issue 15 item 9): the data stays on the GPU as uint8, both views are made there with per-sample
parameters (GPUAugment, compiled), the network runs channels-last in bf16 autocast (``precision: fp32`` gives
the official arithmetic), no host sync inside an epoch. Measured figures: bench/perf/NOTES_scan.md.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from bench.context import TrialContext
from bench.method import ClusteringData, MethodConfig
from bench.stages import Stage, StageConfig, StageRequest, register_stage
from methods.augment.gpu import NORMALIZATION, GPUAugment, resize_eval, simclr_spec
from methods.engine import (
    Engine,
    EngineConfig,
    LrScheduleHook,
    autocast,
    conv_layout,
    eval_pass,
    prepare_training,
    unlabeled_images,
)
from methods.losses import nt_xent
from methods.nn.backbones import resnet
from methods.nn.heads import mlp_head


class SimCLRNet(torch.nn.Module):
    """Backbone + projection head; ``forward`` returns (backbone features, L2-normalised projections)."""

    def __init__(self, backbone: str, stem: str, in_channels: int, hidden_dim: int, feature_dim: int):
        super().__init__()
        self.backbone = resnet(backbone, stem=stem, in_channels=in_channels)
        self.head = mlp_head(self.backbone.out_dim, hidden_dim, feature_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, F.normalize(self.head(h), dim=1)


class SimCLRRecipe(BaseModel):
    """The SimCLR pretext recipe's fields, their one home: the stage's config and SimCLR + k-means' config (which
    exposes them all) are both these. Defaults: SCAN's configs/pretext/simclr_cifar10.yml."""

    backbone: Literal["resnet18", "resnet34"] = "resnet18"
    # SCAN's STL-10 resnet_stl stem (3x3/1 conv + max-pool) is not one of the shared stems: there the CIFAR
    # stem is used (a deviation, stated in simclr_kmeans / scan's dataset defaults)
    stem: Literal["imagenet", "cifar"] = "cifar"
    image_size: int = Field(32, ge=8)
    head_hidden_dim: int = Field(512, ge=1)
    feature_dim: int = Field(128, ge=1)
    temperature: float = Field(0.1, gt=0)
    epochs: int = Field(500, ge=1)
    batch_size: int = Field(512, ge=2)
    lr: float = Field(0.4, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    lr_final_factor: float = Field(1e-3, ge=0, description="cosine ends at lr * this (SCAN: 0.1 ** 3)")
    normalization: Literal["cifar10", "cifar20", "imagenet"] = "cifar10"
    anchors: Literal["first", "both"] = Field("first", description="NT-Xent anchors: SCAN's first view only, "
                                                                    "or both views (SimCLR paper)")
    unlabeled: bool = Field(True, description="train on the dataset's unlabeled images too, where it has "
                                              "them (STL-10; SCAN's train+unlabeled)")
    # Deviation (numerics only): SCAN trains in fp32; bf16 autocast is ~2x faster on a GPU. CPUs run fp32.
    precision: Literal["fp32", "bf16"] = "bf16"


@register_stage
class SimCLRPretext(Stage):
    name = "simclr_pretext"
    version = 1

    class Config(SimCLRRecipe, StageConfig):
        """The recipe's fields (:class:`SimCLRRecipe`) as a stage config: frozen, unknown keys are errors."""

    def build(self, data: ClusteringData, inputs: dict[str, dict[str, Any]], ctx: TrialContext) -> dict[str, Any]:
        net, epoch_s = train_simclr(self.config, data, ctx)
        return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "arch": arch_of(self.config, data.x_train.shape[1]), "config": self.config.model_dump(mode="json"),
                "epoch_s": epoch_s}


class PretextFields(MethodConfig):
    """The pretext stage fields SCAN and SPICE expose; the rest of the SimCLR recipe is the stage's defaults, so
    SimCLR + k-means, SCAN and SPICE with the same values share one stored pretext network per seed."""

    backbone: Literal["resnet18", "resnet34"] = "resnet18"
    stem: Literal["imagenet", "cifar"] = "cifar"
    image_size: int = Field(32, ge=8)
    normalization: Literal["cifar10", "cifar20", "imagenet"] = "cifar10"
    pretext_epochs: int = Field(500, ge=1, description="SimCLR epochs (SCAN: 500)")
    pretext_batch_size: int = Field(512, ge=2)
    pretext_lr: float = Field(0.4, gt=0, description="SimCLR's SGD lr (SCAN: 0.4 at batch 512)")
    # Deviation (numerics only): the official codes train in fp32; bf16 autocast on a GPU.
    precision: Literal["fp32", "bf16"] = "bf16"
    eval_batch_size: int = Field(1024, ge=1)

    def pretext_request(self) -> StageRequest:
        return StageRequest("simclr_pretext", SimCLRPretext.Config(
            backbone=self.backbone, stem=self.stem, image_size=self.image_size, normalization=self.normalization,
            epochs=self.pretext_epochs, batch_size=self.pretext_batch_size, lr=self.pretext_lr,
            precision=self.precision))


def arch_of(cfg: SimCLRPretext.Config, in_channels: int) -> dict[str, Any]:
    return {"backbone": cfg.backbone, "stem": cfg.stem, "in_channels": in_channels,
            "hidden_dim": cfg.head_hidden_dim, "feature_dim": cfg.feature_dim}


def load_pretext(artifacts: dict[str, Any], device: torch.device | str = "cpu") -> SimCLRNet:
    """The trained network of a ``simclr_pretext`` artifact, on ``device`` (eval mode)."""
    net = SimCLRNet(**artifacts["arch"])
    net.load_state_dict(artifacts["state_dict"])
    return net.to(device).eval()


@torch.no_grad()
def pretext_features(net: SimCLRNet, x: torch.Tensor, cfg: SimCLRPretext.Config, device: torch.device,
                     which: Literal["head", "backbone"] = "head", batch_size: int = 1024) -> torch.Tensor:
    """L2-normalised features of the un-augmented images (SCAN's val transform: resize/centre crop + Normalize):
    the 128-d projection (``head``, what SCAN mines neighbours on) or the 512-d backbone output."""
    mean, std = NORMALIZATION[cfg.normalization]
    was_training = net.training
    net.eval()
    try:
        h, z = eval_pass(net, x, lambda xb: conv_layout(resize_eval(xb, cfg.image_size, mean, std), device),
                         batch_size, device, cfg.precision)
    finally:
        net.train(was_training)
    return F.normalize(z if which == "head" else h, dim=1)


#: epochs between a build's checkpoints: a harness knob (not in the stage config, so not in its key)
CHECKPOINT_EVERY = 10


def train_simclr(cfg: SimCLRPretext.Config, data: ClusteringData, ctx: TrialContext,
                 checkpoint_every: int | None = None) -> tuple[SimCLRNet, list[float]]:
    """SCAN's SimCLR pretext training on the engine, resumable from the build's checkpoint; returns
    (net, seconds per epoch)."""
    dev = ctx.device
    with ctx.init_rng("init"):
        net = SimCLRNet(cfg.backbone, cfg.stem, data.x_train.shape[1], cfg.head_hidden_dim, cfg.feature_dim)
    extra = unlabeled_images(data, cfg.unlabeled)
    x_train, net = prepare_training(data.x_train if extra is None else torch.cat([data.x_train, extra]), net, dev)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=False)
    spec = simclr_spec(cfg.image_size, *NORMALIZATION[cfg.normalization])
    augment = GPUAugment(spec, channels_last=dev.type == "cuda")  # grey images: hue/saturation skip
    g_aug = ctx.rng("augment")
    # the engine's harness knobs: not in the stage config (they would change its key)
    every = CHECKPOINT_EVERY if checkpoint_every is None else checkpoint_every
    knobs = EngineConfig(eval_every=0, checkpoint_every=min(every, cfg.epochs), precision=cfg.precision)
    engine = Engine(ctx, knobs, modules={"net": net}, optimizer=opt, streams={"augment": g_aug},
                    # SCAN adjusts the lr at the start of each (0-based) epoch
                    hooks=[LrScheduleHook.cosine(cfg.lr, cfg.epochs, cfg.lr_final_factor)])
    engine.add_pass("train", x_train.shape[0],
                    lambda idx: {"loss": simclr_loss(net, augment, x_train.index_select(0, idx), g_aug, cfg)},
                    cfg.batch_size, graph=True)
    engine.run(cfg.epochs)
    return net, list(engine.epoch_times)


def simclr_loss(net: SimCLRNet, augment: GPUAugment, xb: torch.Tensor, g_aug: torch.Generator | None,
                cfg: SimCLRPretext.Config) -> torch.Tensor:
    """The loss of one uint8 batch (the engine's step): two views, one forward over both, NT-Xent. No sync."""
    dev = xb.device
    views = conv_layout(torch.cat([augment(xb, generator=g_aug), augment(xb, generator=g_aug)]), dev)
    with autocast(dev, cfg.precision):
        _, z = net(views)
    z1, z2 = z.float().chunk(2)
    return nt_xent(z1, z2, cfg.temperature, anchors=cfg.anchors)

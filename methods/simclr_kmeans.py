"""SimCLR + k-means: SCAN's pretext stage followed by k-means, the "Pretext + K-means" row of SCAN.

Recipe from SCAN's official code (wvangansbeke/Unsupervised-Classification,
configs/pretext/simclr_cifar10.yml, simclr.py, utils/common_config.py; claims.md sections 2 and 12):

* ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool) at 32 px; projection head
  512-512-128, L2-normalised; NT-Xent with temperature 0.1.
* SGD lr 0.4, momentum 0.9 (no Nesterov), weight decay 1e-4, per-epoch cosine from lr to
  lr * 0.1^3, 500 epochs, batch 512, drop_last.
* Augmentation: RandomResizedCrop(32, scale 0.2-1), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8,
  grayscale 0.2, normalised with the dataset's mean/std.
* Trained on the train split only; evaluated on the test split. STL-10: trained on train + the
  100,000 unlabeled images (simclr.py: ``split='train+unlabeled'``), k-means fit on the train split.
* Loss: SCAN's ``SimCLRLoss`` is one-sided: the anchors are the first view's N rows only
  (``anchor = features[:, 0]``), each contrasted with the other 2N - 1 outputs; SimCLR's paper averages
  over both views' 2N rows. This is SCAN's baseline, so SCAN's form is the default (``anchors: first``;
  ``both`` gives the paper's symmetric loss). Both views go through the network in one batch
  (SCAN: ``model(input_)`` on the two views interleaved), so BatchNorm sees both views together.
* Clusters (maintainer's protocol, SCAN issues #38 and #126): features of the un-augmented images
  from the 128-d projection output, L2-normalised; k-means fit on the train features, test images
  assigned to the nearest centre. ``kmeans_features: backbone`` uses the 512-d backbone features
  instead (slightly better for ImageNet according to the maintainer).

This is the pretext baseline that SCAN and SPICE start from; their files can reuse
:func:`train_simclr`. Labels are never looked at; the result is the final epoch's.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods._contrastive import (
    EpochLoop,
    LoopConfig,
    autocast,
    conv_layout,
    cosine_lr,
    epoch_batches,
    eval_pass,
    prepare_training,
    set_lr,
    unlabeled_images,
)
from methods.common.augment import NORMALIZATION, GPUAugment, resize_eval, simclr_spec
from methods.common.backbones import resnet
from methods.common.heads import mlp_head
from methods.common.kmeans import kmeans
from methods.common.losses import nt_xent


class SimCLRNet(torch.nn.Module):
    def __init__(self, backbone: str, stem: str, in_channels: int, hidden_dim: int, feature_dim: int):
        super().__init__()
        self.backbone = resnet(backbone, stem=stem, in_channels=in_channels)
        self.head = mlp_head(self.backbone.out_dim, hidden_dim, feature_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, F.normalize(self.head(h), dim=1)


@register_method
class SimCLRKMeans(ClusteringMethod):
    name = "simclr_kmeans"
    label = "SimCLR + k-means"
    paper = "SimCLR pretext (Chen et al., ICML 2020) + k-means, as SCAN's baseline (Van Gansbeke et al., ECCV 2020)"
    selection_rule = "final epoch; k-means (lowest inertia of n_init) fit on train features, test assigned"
    train_split = "train"
    eval_split = "test"
    gpu_share = 1.0
    variants = {"default": {}, "backbone_features": {"kmeans_features": "backbone"}}
    # SCAN's per-dataset normalisation; STL-10 at 96 px (SCAN's resnet_stl stem, 3x3/1 conv + maxpool, is not one
    # of the shared stems: the CIFAR stem is used there, a deviation)
    dataset_defaults = {"cifar100-20": {"normalization": "cifar20"},
                        "stl10": {"image_size": 96, "normalization": "imagenet"}}

    class Config(LoopConfig):
        backbone: Literal["resnet18", "resnet34"] = "resnet18"
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
        kmeans_features: Literal["head", "backbone"] = "head"
        anchors: Literal["first", "both"] = Field("first", description="NT-Xent anchors: SCAN's first view only, "
                                                                        "or both views (SimCLR paper)")
        unlabeled: bool = Field(True, description="train on the dataset's unlabeled images too, where it has "
                                                  "them (STL-10; SCAN's train+unlabeled)")
        kmeans_n_init: int = Field(10, ge=1)

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        net, loop, spec, labels = train_simclr(cfg, data, ctx, self._cluster)
        if labels is None:
            labels = self._cluster(net, data, ctx, spec)
        loop.finish()
        extra = unlabeled_images(data, cfg.unlabeled)
        return ClusterOutput(labels=labels, info={**loop.info(), "kmeans_features": cfg.kmeans_features,
                                                  "unlabeled_images": 0 if extra is None else extra.shape[0]})

    @torch.no_grad()
    def _cluster(self, net: SimCLRNet, data: ClusteringData, ctx: TrialContext, spec) -> torch.Tensor:
        cfg = self.config
        dev = ctx.device
        pick = 0 if cfg.kmeans_features == "backbone" else 1

        def prep(xb: torch.Tensor) -> torch.Tensor:
            return resize_eval(xb, cfg.image_size, spec.mean, spec.std)

        net.eval()
        try:
            f_fit = eval_pass(net, data.x_train, prep, cfg.eval_batch_size, dev, cfg.precision)[pick]
            f_fit = F.normalize(f_fit, dim=1)
            km = kmeans(f_fit, data.n_clusters, n_init=cfg.kmeans_n_init, generator=ctx.generator(offset=3))
            if data.same_split:
                return km.labels
            f_eval = F.normalize(eval_pass(net, data.x_eval, prep, cfg.eval_batch_size, dev, cfg.precision)[pick],
                                 dim=1)
            return torch.cdist(f_eval, km.centers).argmin(1)
        finally:
            net.train()


def train_simclr(cfg, data: ClusteringData, ctx: TrialContext, cluster_fn=None):
    """SCAN's SimCLR pretext training, resumable; returns (net, loop, augmentation spec, last labels).

    ``cluster_fn(net, data, ctx, spec)`` (optional) gives labels for the learning curve every
    ``eval_every`` epochs and after the last one (returned, so the caller need not recompute them).
    """
    dev = ctx.device
    net = SimCLRNet(cfg.backbone, cfg.stem, data.x_train.shape[1], cfg.head_hidden_dim, cfg.feature_dim)
    extra = unlabeled_images(data, cfg.unlabeled)
    x_train, net = prepare_training(data.x_train if extra is None else torch.cat([data.x_train, extra]), net, dev)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=False)
    spec = simclr_spec(cfg.image_size, *NORMALIZATION[cfg.normalization])
    augment = GPUAugment(spec, channels_last=dev.type == "cuda")  # grey images: hue/saturation skip
    g_batch, g_aug = ctx.generator(offset=1), ctx.generator(offset=2)
    loop = EpochLoop(ctx, cfg, modules={"net": net}, optimizer=opt, generators={"batch": g_batch, "aug": g_aug})
    n = x_train.shape[0]
    labels = None
    for epoch in loop.epochs(cfg.epochs):
        # SCAN adjusts the lr at the start of each (0-based) epoch
        set_lr(opt, cosine_lr(cfg.lr, epoch - 1, cfg.epochs, cfg.lr_final_factor))
        net.train()
        loss_sum = torch.zeros((), device=dev)
        n_steps = 0
        for idx in epoch_batches(n, cfg.batch_size, g_batch, dev):
            xb = x_train.index_select(0, idx)
            views = torch.cat([augment(xb, generator=g_aug), augment(xb, generator=g_aug)])
            views = conv_layout(views, dev)
            with autocast(dev, cfg.precision):
                _, z = net(views)
            z1, z2 = z.float().chunk(2)
            loss = nt_xent(z1, z2, cfg.temperature, anchors=cfg.anchors)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            n_steps += 1
        train_s = loop.train_seconds()
        labels = cluster_fn(net, data, ctx, spec) if cluster_fn and loop.wants_eval(epoch, cfg.epochs) else None
        loop.end_epoch(epoch, cfg.epochs, train_s=train_s, eval_pred=labels, loss=loss_sum / max(1, n_steps),
                       lr=opt.param_groups[0]["lr"])
    return net, loop, spec, labels

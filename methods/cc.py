"""CC: Contrastive Clustering (Li, Hu, Liu, Peng, Zhou & Peng, AAAI 2021).

Recipe from the official code (Yunfan-Li/Contrastive-Clustering: config/config.yaml, train.py,
modules/{network,contrastive_loss,transform}.py; ../shared/reference/claims.md section 1):

* ResNet-34 with the unmodified ImageNet stem, every image upsampled to 224 px, no mean/std
  normalisation.
* Instance head (ICH) 512-512-128, L2-normalised, NT-Xent with tau_I = 0.5 over the 2N views;
  cluster head (CCH) 512-512-K with softmax, contrastive loss over the K cluster columns
  (tau_C = 1.0) plus the entropy term log K + sum p log p of each view.
* Adam lr 3e-4, weight decay 0, constant lr, 1000 epochs, batch 256, drop_last.
* Two views per image from the same weak SimCLR pipeline: RandomResizedCrop(224), flip,
  ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) p 0.8 (s = 0.5 for CIFAR, 1.0 for STL-10), grayscale 0.2.
* CIFAR-10/100: train + test (60,000 images) for training and evaluation; clusters are the argmax
  of the CCH on Resize(224) of each image.

Ablations of the paper (section 4.3), as variants:

* heads: ``ich+cch`` (CC), ``ich`` (instance loss only, then k-means once on the 128-d ICH outputs,
  as the maintainer describes in issue #47), ``cch`` (cluster loss only);
* augmentation pairs: ``ta+tb`` (two augmentations), ``ta+x`` (one augmentation and the original),
  ``x+x`` (the original twice).

Labels are never looked at. The reported clusters are those after the final epoch.
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
    epoch_batches,
    eval_pass,
    prepare_training,
)
from methods.common.augment import GPUAugment, cc_spec, resize_eval
from methods.common.backbones import resnet
from methods.common.heads import cluster_head, mlp_head
from methods.common.kmeans import kmeans
from methods.common.losses import cluster_contrastive, nt_xent


class CCNet(torch.nn.Module):
    def __init__(self, backbone: str, stem: str, in_channels: int, feature_dim: int, n_clusters: int, heads: str):
        super().__init__()
        self.backbone = resnet(backbone, stem=stem, in_channels=in_channels)
        d = self.backbone.out_dim
        self.ich = mlp_head(d, d, feature_dim) if heads in ("ich+cch", "ich") else None
        self.cch = cluster_head(d, d, n_clusters) if heads in ("ich+cch", "cch") else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        h = self.backbone(x)
        z = F.normalize(self.ich(h), dim=1) if self.ich is not None else None
        p = torch.softmax(self.cch(h), dim=1) if self.cch is not None else None
        return z, p


@register_method
class CC(ClusteringMethod):
    name = "cc"
    paper = "Li et al., Contrastive Clustering, AAAI 2021"
    selection_rule = "final epoch; clusters = argmax of the cluster head (k-means once on ICH outputs when ich only)"
    train_split = "all"
    eval_split = "all"
    gpu_share = 1.0
    variants = {
        "default": {},
        "ich_only": {"heads": "ich"},
        "cch_only": {"heads": "cch"},
        "aug_ta_x": {"aug_pair": "ta+x"},
        "aug_x_x": {"aug_pair": "x+x"},
        # Deviation, documented: 32 px with the CIFAR stem (3x3/1 conv1, no max-pool) instead of 224 px with
        # the ImageNet stem; CC issue #47 reports NMI 0.570 / ACC 0.612 / ARI 0.430 for 1000 epochs of this.
        "cifar32": {"stem": "cifar", "image_size": 32},
    }
    # official: s = 0.5 for CIFAR-10/100 and Tiny-ImageNet, 1.0 for STL-10 and the ImageNet subsets
    dataset_defaults = {"stl10": {"jitter_strength": 1.0}}

    class Config(LoopConfig):
        backbone: Literal["resnet18", "resnet34"] = "resnet34"  # maintainer (issue #44): ResNet-34 everywhere
        stem: Literal["imagenet", "cifar"] = "imagenet"  # unmodified torchvision stem (7x7/2 conv + maxpool)
        image_size: int = Field(224, ge=8, description="every dataset is resized to this (CIFAR 32 -> 224)")
        heads: Literal["ich+cch", "ich", "cch"] = "ich+cch"
        aug_pair: Literal["ta+tb", "ta+x", "x+x"] = "ta+tb"
        feature_dim: int = Field(128, ge=1, description="ICH output dimension")
        epochs: int = Field(1000, ge=1)
        # current official config; the config at publication (commit eda28d7, = XLearning-SCU/2021-AAAI-CC) had 128
        batch_size: int = Field(256, ge=2)
        lr: float = Field(3e-4, gt=0, description="Adam, constant")
        weight_decay: float = Field(0.0, ge=0)
        instance_temperature: float = Field(0.5, gt=0)
        cluster_temperature: float = Field(1.0, gt=0)
        jitter_strength: float = Field(0.5, ge=0, description="s in ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)")
        blur: bool = Field(False, description="Gaussian blur p 0.5 (official: ImageNet-10 and ImageNet-Dogs only)")
        kmeans_n_init: int = Field(10, ge=1, description="ich only: k-means restarts on the ICH outputs")

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        net = CCNet(cfg.backbone, cfg.stem, data.x_train.shape[1], cfg.feature_dim, data.n_clusters, cfg.heads)
        x_train, net = prepare_training(data.x_train, net, dev)
        x_eval = x_train if data.same_split else data.x_eval
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        spec = cc_spec(cfg.image_size, cfg.jitter_strength, blur=cfg.blur)
        augment = GPUAugment(spec, channels_last=dev.type == "cuda")  # grey images: hue/saturation skip
        g_batch, g_aug = ctx.generator(offset=1), ctx.generator(offset=2)
        loop = EpochLoop(ctx, cfg, modules={"net": net}, optimizer=opt, generators={"batch": g_batch, "aug": g_aug})

        def plain(xb: torch.Tensor) -> torch.Tensor:  # the "x" of the ablations and the eval view: Resize only
            return resize_eval(xb, cfg.image_size, spec.mean, spec.std)

        n = x_train.shape[0]
        labels = None
        for epoch in loop.epochs(cfg.epochs):
            net.train()
            loss_sum = torch.zeros((), device=dev)
            parts = torch.zeros(2, device=dev)
            n_steps = 0
            for idx in epoch_batches(n, cfg.batch_size, g_batch, dev):
                xb = x_train.index_select(0, idx)
                if cfg.aug_pair == "ta+tb":
                    v1, v2 = augment(xb, generator=g_aug), augment(xb, generator=g_aug)
                elif cfg.aug_pair == "ta+x":
                    v1, v2 = augment(xb, generator=g_aug), plain(xb)
                else:
                    v1 = v2 = plain(xb)
                views = torch.cat([v1, v2])
                views = conv_layout(views, dev)
                with autocast(dev, cfg.precision):
                    z, p = net(views)
                loss = torch.zeros((), device=dev)
                if z is not None:
                    z1, z2 = z.float().chunk(2)
                    li = nt_xent(z1, z2, cfg.instance_temperature)
                    loss = loss + li
                    parts[0] += li.detach()
                if p is not None:
                    p1, p2 = p.float().chunk(2)
                    lc = cluster_contrastive(p1, p2, cfg.cluster_temperature)
                    loss = loss + lc
                    parts[1] += lc.detach()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                n_steps += 1
            train_s = loop.train_seconds()
            labels = self._cluster(net, x_eval, x_train, data, ctx, plain) \
                if loop.wants_eval(epoch, cfg.epochs) else None
            k = max(1, n_steps)
            scalars = {"loss": loss_sum / k}
            if cfg.heads != "cch":
                scalars["loss_instance"] = parts[0] / k
            if cfg.heads != "ich":
                scalars["loss_cluster"] = parts[1] / k
            loop.end_epoch(epoch, cfg.epochs, train_s=train_s, eval_pred=labels, **scalars)
        if labels is None:  # the last epoch always evaluates; kept for safety
            labels = self._cluster(net, x_eval, x_train, data, ctx, plain)
        loop.finish()
        return ClusterOutput(labels=labels, info={**loop.info(), "heads": cfg.heads, "aug_pair": cfg.aug_pair})

    @torch.no_grad()
    def _cluster(self, net: CCNet, x_eval, x_train, data: ClusteringData, ctx: TrialContext, plain) -> torch.Tensor:
        cfg = self.config
        dev = ctx.device
        net.eval()
        try:
            z, p = eval_pass(net, x_eval, plain, cfg.eval_batch_size, dev, cfg.precision)
            if p is not None:
                return p.argmax(1)
            # ICH only: k-means once on the 128-d ICH outputs (fit on the training images)
            z_fit = z if x_eval is x_train else eval_pass(lambda v: net(v)[0], x_train, plain, cfg.eval_batch_size,
                                                         dev, cfg.precision)
            km = kmeans(z_fit, data.n_clusters, n_init=cfg.kmeans_n_init, generator=ctx.generator(offset=3))
            return km.labels if x_eval is x_train else torch.cdist(z, km.centers).argmin(1)
        finally:
            net.train()

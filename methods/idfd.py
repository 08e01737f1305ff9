"""IDFD: Clustering-friendly Representation Learning via Instance Discrimination and Feature
Decorrelation (Tao, Takagi & Nakata, ICLR 2021).

Recipe from the official code (TTN-YKK/Clustering_friendly_representation_learning, main.py;
claims.md section 8), which "reproduces the main result on CIFAR-10":

* ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool), fc -> 128-d, L2-normalised.
* L_ID: instance discrimination against a non-parametric memory bank of all n training images
  (tau = 1.0, memory momentum 0.5); L_FD: softmax feature decorrelation over the 128 feature
  columns of the batch (tau2 = 2.0); loss = L_ID + L_FD.
* SGD lr 0.03, momentum 0.9, weight decay 5e-4, MultiStepLR at epochs [600, 950, 1300, 1650]
  x 0.1, 2000 epochs, batch 128, one augmented view per image per step.
* Augmentation: RandomResizedCrop(32, scale 0.2-1), ColorJitter(0.4, 0.4, 0.4) always applied,
  grayscale 0.2, normalised; **no horizontal flip**.
* CIFAR-10 train split only (50,000) for training and evaluation (claims.md: the paper's split is
  not verified; PwC lists train+test). Clusters: k-means (20 restarts) on the memory bank, which
  holds the 128-d features of the training images (on the eval images' features when the eval
  split differs from the training split).

Variants of the paper's ablation (Table 3): ``id`` (L_ID only), ``idfo`` (L_ID + the orthogonality
constraint ||V^T V - I||^2), ``default`` = IDFD (L_ID + L_FD). The IDFO weight is not given in the
official code; 1.0 here (an assumption, see ``fd_weight``).
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
    multistep_lr,
    prepare_training,
    set_lr,
)
from methods.common.augment import GPUAugment, idfd_spec, resize_eval
from methods.common.backbones import resnet
from methods.common.kmeans import kmeans
from methods.common.losses import feature_decorrelation, feature_orthogonality, instance_discrimination, update_memory


class IDFDNet(torch.nn.Module):
    def __init__(self, backbone: str, stem: str, in_channels: int, feature_dim: int):
        super().__init__()
        self.backbone = resnet(backbone, stem=stem, in_channels=in_channels)
        self.fc = torch.nn.Linear(self.backbone.out_dim, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.backbone(x)), dim=1)


@register_method
class IDFD(ClusteringMethod):
    name = "idfd"
    label = "IDFD"
    paper = "Tao, Takagi & Nakata, Clustering-friendly Representation Learning via Instance Discrimination " \
            "and Feature Decorrelation, ICLR 2021"
    selection_rule = "final epoch; k-means (lowest inertia of n_init=20) on the memory-bank features"
    train_split = "train"
    eval_split = "train"
    gpu_share = 1.0
    variants = {"default": {}, "id": {"loss": "id"}, "idfo": {"loss": "idfo"}}

    class Config(LoopConfig):
        backbone: Literal["resnet18", "resnet34"] = "resnet18"
        stem: Literal["imagenet", "cifar"] = "cifar"
        image_size: int = Field(32, ge=8)
        feature_dim: int = Field(128, ge=1)
        loss: Literal["idfd", "idfo", "id"] = "idfd"
        temperature: float = Field(1.0, gt=0, description="tau of instance discrimination")
        memory_momentum: float = Field(0.5, ge=0, lt=1)
        fd_temperature: float = Field(2.0, gt=0, description="tau2 of feature decorrelation")
        fd_weight: float = Field(1.0, ge=0, description="weight of L_FD (IDFD) or L_FO (IDFO; not in the code)")
        epochs: int = Field(2000, ge=1)
        batch_size: int = Field(128, ge=2)
        lr: float = Field(0.03, gt=0)
        momentum: float = Field(0.9, ge=0)
        weight_decay: float = Field(5e-4, ge=0)
        lr_milestones: list[int] = Field(default_factory=lambda: [600, 950, 1300, 1650])
        lr_gamma: float = Field(0.1, gt=0)
        kmeans_n_init: int = Field(20, ge=1)

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        net = IDFDNet(cfg.backbone, cfg.stem, data.x_train.shape[1], cfg.feature_dim)
        x_train, net = prepare_training(data.x_train, net, dev)
        n = x_train.shape[0]
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        spec = idfd_spec(cfg.image_size)
        augment = GPUAugment(spec, channels_last=dev.type == "cuda")  # grey images: hue/saturation skip
        g_batch, g_aug = ctx.generator(offset=1), ctx.generator(offset=2)
        # memory bank initialised as the official NonParametricClassifier: U(-s, s), s = 1/sqrt(dim/3)
        # (rows of norm ~1; every entry is refreshed in epoch 1)
        g_mem = ctx.generator(device="cpu", offset=4)
        stdv = 1.0 / (cfg.feature_dim / 3.0) ** 0.5
        memory = (torch.rand(n, cfg.feature_dim, generator=g_mem) * (2 * stdv) - stdv).to(dev)
        loop = EpochLoop(ctx, cfg, modules={"net": net}, optimizer=opt, generators={"batch": g_batch, "aug": g_aug},
                         extra={"memory": memory})
        labels = None
        for epoch in loop.epochs(cfg.epochs):
            set_lr(opt, multistep_lr(cfg.lr, epoch - 1, cfg.lr_milestones, cfg.lr_gamma))
            net.train()
            sums = torch.zeros(3, device=dev)
            n_steps = 0
            for idx in epoch_batches(n, cfg.batch_size, g_batch, dev, drop_last=False):
                v = augment(x_train.index_select(0, idx), generator=g_aug)
                v = conv_layout(v, dev)
                with autocast(dev, cfg.precision):
                    f = net(v)
                f = f.float()
                l_id = instance_discrimination(f, memory, idx, cfg.temperature)
                if cfg.loss == "idfd":
                    l_f = feature_decorrelation(f, cfg.fd_temperature)
                elif cfg.loss == "idfo":
                    l_f = feature_orthogonality(f)
                else:
                    l_f = torch.zeros((), device=dev)
                loss = l_id + cfg.fd_weight * l_f
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                update_memory(memory, f, idx, cfg.memory_momentum)
                sums += torch.stack([loss.detach(), l_id.detach(), l_f.detach()])
                n_steps += 1
            train_s = loop.train_seconds()
            labels = self._cluster(net, memory, data, ctx, spec) if loop.wants_eval(epoch, cfg.epochs) else None
            mean = sums / max(1, n_steps)
            loop.end_epoch(epoch, cfg.epochs, train_s=train_s, eval_pred=labels, loss=mean[0], loss_id=mean[1],
                           loss_feature=mean[2], lr=opt.param_groups[0]["lr"])
        if labels is None:
            labels = self._cluster(net, memory, data, ctx, spec)
        loop.finish()
        return ClusterOutput(labels=labels, info={**loop.info(), "loss": cfg.loss})

    @torch.no_grad()
    def _cluster(self, net: IDFDNet, memory: torch.Tensor, data: ClusteringData, ctx: TrialContext,
                 spec) -> torch.Tensor:
        cfg = self.config
        km = kmeans(memory, data.n_clusters, n_init=cfg.kmeans_n_init, generator=ctx.generator(offset=3))
        if data.same_split:
            return km.labels
        net.eval()
        try:
            f = eval_pass(net, data.x_eval, lambda xb: resize_eval(xb, cfg.image_size, spec.mean, spec.std),
                          cfg.eval_batch_size, ctx.device, cfg.precision)
        finally:
            net.train()
        return torch.cdist(f, km.centers).argmin(1)

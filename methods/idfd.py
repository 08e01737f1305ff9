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
from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.augment.gpu import GPUAugment, idfd_spec, resize_eval
from methods.cluster.kmeans import kmeans
from methods.engine import (
    Engine,
    EngineConfig,
    EvalHook,
    LrScheduleHook,
    MemoryBankHook,
    autocast,
    conv_layout,
    eval_mode,
    eval_pass,
    prepare_training,
)
from methods.losses import feature_decorrelation, feature_orthogonality, instance_discrimination
from methods.nn.heads import NormalizedEmbeddingNet


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

    class Config(EngineConfig):
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
        with ctx.init_rng("init"):
            net = NormalizedEmbeddingNet(cfg.backbone, cfg.stem, data.x_train.shape[1], cfg.feature_dim)
        x_train, net = prepare_training(data.x_train, net, dev)
        n = x_train.shape[0]
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        spec = idfd_spec(cfg.image_size)
        augment = GPUAugment(spec, channels_last=dev.type == "cuda")  # grey images: hue/saturation skip
        g_aug = ctx.rng("augment")
        # memory bank initialised as the official NonParametricClassifier: U(-s, s), s = 1/sqrt(dim/3)
        # (rows of norm ~1; every entry is refreshed in epoch 1)
        stdv = 1.0 / (cfg.feature_dim / 3.0) ** 0.5
        memory = (torch.rand(n, cfg.feature_dim, generator=ctx.rng("memory_init", "cpu")) * (2 * stdv) - stdv).to(dev)

        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            """One augmented view -> 128-d features f -> L = L_ID(f, memory) + w L_FD(f) (or L_FO, or none)."""
            v = conv_layout(augment(x_train.index_select(0, idx), generator=g_aug), dev)
            with autocast(dev, cfg.precision):
                f = net(v).float()
            l_id = instance_discrimination(f, memory, idx, cfg.temperature)
            if cfg.loss == "idfd":
                l_f = feature_decorrelation(f, cfg.fd_temperature)
            elif cfg.loss == "idfo":
                l_f = feature_orthogonality(f)
            else:
                l_f = torch.zeros((), device=dev)
            return {"loss": l_id + cfg.fd_weight * l_f, "loss_id": l_id, "loss_feature": l_f, "features": f}

        def cluster(_engine) -> torch.Tensor:
            """k-means on the memory bank; eval images (when another split) go to the nearest centre."""
            km = kmeans(memory, data.n_clusters, n_init=cfg.kmeans_n_init, generator=ctx.rng("kmeans"))
            if data.same_split:
                return km.labels
            with eval_mode(net):
                f = eval_pass(net, data.x_eval, lambda xb: resize_eval(xb, cfg.image_size, spec.mean, spec.std),
                              cfg.eval_batch_size, dev, cfg.precision)
            return torch.cdist(f, km.centers).argmin(1)

        engine = Engine(ctx, cfg, modules={"net": net}, optimizer=opt, streams={"augment": g_aug}, hooks=[
            LrScheduleHook.multistep(cfg.lr, cfg.lr_milestones, cfg.lr_gamma),
            MemoryBankHook(memory, cfg.memory_momentum),
            EvalHook(cluster, cfg.eval_every)])
        engine.add_pass("train", n, step, cfg.batch_size, drop_last=False, graph=True)
        engine.run(cfg.epochs)
        return ClusterOutput(labels=engine.hook(EvalHook).pred, info={**engine.info(), "loss": cfg.loss})

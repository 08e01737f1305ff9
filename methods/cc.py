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
* The two views go through the network one after the other (``Network.forward``: ``h_i =
  self.resnet(x_i); h_j = self.resnet(x_j)``), so BatchNorm normalises each view with its own batch
  statistics (``batchnorm: per_view``). ``batchnorm: joint`` runs both views as one 2N batch (shared
  statistics; what this harness did before, one larger batch is faster on a GPU): a documented option.
* STL-10 (``train_STL10.py``): each epoch first one pass over the 100,000 unlabeled images with the
  instance loss only, then the usual pass over train + test with both losses (``unlabeled: true``).

Ablations of the paper (section 4.3), as variants:

* heads: ``ich+cch`` (CC), ``ich`` (instance loss only, then k-means once on the 128-d ICH outputs,
  as the maintainer describes in issue #47), ``cch`` (cluster loss only);
* augmentation pairs: ``ta+tb`` (two augmentations), ``ta+x`` (one augmentation and the original),
  ``x+x`` (the original twice).

Labels are never looked at. The reported clusters are those after the final epoch.
"""

from __future__ import annotations

import functools
import operator
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.augment.gpu import GPUAugment, cc_spec, resize_eval
from methods.cluster.kmeans import kmeans
from methods.engine import (
    Engine,
    EngineConfig,
    EvalHook,
    autocast,
    conv_layout,
    eval_mode,
    eval_pass,
    prepare_training,
    unlabeled_images,
)
from methods.engine.steps import adam
from methods.losses import cluster_contrastive, nt_xent
from methods.nn.backbones import resnet
from methods.nn.heads import cluster_head, mlp_head


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


def forward_views(net: CCNet, v1: torch.Tensor, v2: torch.Tensor, device: torch.device, precision: str,
                  per_view: bool = True) -> tuple[torch.Tensor | None, ...]:
    """(z1, z2, p1, p2) in float32 for the two views. ``per_view``: two forward passes, as the official
    ``Network.forward``, so each view's BatchNorm uses its own batch statistics (and updates the running
    statistics twice); otherwise one pass over both views concatenated (statistics shared)."""
    with autocast(device, precision):
        if per_view:
            (z1, p1), (z2, p2) = net(conv_layout(v1, device)), net(conv_layout(v2, device))
        else:
            z, p = net(conv_layout(torch.cat([v1, v2]), device))
            z1, z2 = (None, None) if z is None else z.chunk(2)
            p1, p2 = (None, None) if p is None else p.chunk(2)
    return tuple(None if t is None else t.float() for t in (z1, z2, p1, p2))


@register_method
class CC(ClusteringMethod):
    name = "cc"
    label = "CC"
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

    class Config(EngineConfig):
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
        batchnorm: Literal["per_view", "joint"] = Field(
            "per_view", description="per_view: each view is its own forward pass (official); joint: both views "
                                    "in one batch, BatchNorm statistics shared")
        unlabeled: bool = Field(True, description="where the dataset has unlabeled images (STL-10): an "
                                                  "instance-loss-only pass over them before each epoch's pass")

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        with ctx.init_rng("init"):
            net = CCNet(cfg.backbone, cfg.stem, data.x_train.shape[1], cfg.feature_dim, data.n_clusters, cfg.heads)
        x_train, net = prepare_training(data.x_train, net, dev)
        x_eval = x_train if data.same_split else data.x_eval
        extra = unlabeled_images(data, cfg.unlabeled) if cfg.heads != "cch" else None
        x_extra = None if extra is None else extra.to(dev, non_blocking=True).contiguous()
        # fused Adam (same update rule), capturable so the step replays as a CUDA graph on a GPU
        opt = adam(net.parameters(), cfg.lr, dev, weight_decay=cfg.weight_decay)
        spec = cc_spec(cfg.image_size, cfg.jitter_strength, blur=cfg.blur)
        augment = GPUAugment(spec, channels_last=dev.type == "cuda")  # grey images: hue/saturation skip
        g_aug = ctx.rng("augment")

        def plain(xb: torch.Tensor) -> torch.Tensor:  # the "x" of the ablations and the eval view: Resize only
            return resize_eval(xb, cfg.image_size, spec.mean, spec.std)

        def views_of(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if cfg.aug_pair == "ta+tb":
                return augment(xb, generator=g_aug), augment(xb, generator=g_aug)
            if cfg.aug_pair == "ta+x":
                return augment(xb, generator=g_aug), plain(xb)
            v = plain(xb)
            return v, v

        def step(x_source: torch.Tensor, idx: torch.Tensor, instance_only: bool = False) -> dict[str, torch.Tensor]:
            """Two views of the batch -> ICH and CCH of each -> L = L_instance + L_cluster."""
            z1, z2, p1, p2 = forward_views(net, *views_of(x_source.index_select(0, idx)), dev, cfg.precision,
                                           per_view=cfg.batchnorm == "per_view")
            out = {}
            if z1 is not None:
                out["loss_instance"] = nt_xent(z1, z2, cfg.instance_temperature)
            if p1 is not None and not instance_only:
                out["loss_cluster"] = cluster_contrastive(p1, p2, cfg.cluster_temperature)
            out["loss"] = functools.reduce(operator.add, out.values())  # L_instance + L_cluster (no extra kernel)
            return out

        engine = Engine(ctx, cfg, modules={"net": net}, optimizer=opt, streams={"augment": g_aug},
                        hooks=[EvalHook(lambda e: self._cluster(net, x_eval, x_train, data, ctx, plain),
                                        cfg.eval_every)])
        if x_extra is not None:  # official STL-10: the unlabeled images train the ICH (and trunk) first
            engine.add_pass("unlabeled", x_extra.shape[0],
                            lambda idx: step(x_extra, idx, instance_only=True), cfg.batch_size, graph=True)
        engine.add_pass("train", x_train.shape[0], lambda idx: step(x_train, idx), cfg.batch_size, graph=True)
        engine.run(cfg.epochs)
        return ClusterOutput(labels=engine.hook(EvalHook).pred,
                             info={**engine.info(), "heads": cfg.heads, "aug_pair": cfg.aug_pair,
                                   "batchnorm": cfg.batchnorm,
                                   "unlabeled_images": 0 if extra is None else extra.shape[0]})

    def _cluster(self, net: CCNet, x_eval, x_train, data: ClusteringData, ctx: TrialContext, plain) -> torch.Tensor:
        """Argmax of the CCH on the eval view; ICH only: k-means once on the ICH outputs (fit on the training
        images)."""
        cfg = self.config
        dev = ctx.device
        with eval_mode(net):
            z, p = eval_pass(net, x_eval, plain, cfg.eval_batch_size, dev, cfg.precision)
            if p is not None:
                return p.argmax(1)
            z_fit = z if x_eval is x_train else eval_pass(lambda v: net(v)[0], x_train, plain, cfg.eval_batch_size,
                                                         dev, cfg.precision)
        km = kmeans(z_fit, data.n_clusters, n_init=cfg.kmeans_n_init, generator=ctx.rng("kmeans"))
        return km.labels if x_eval is x_train else torch.cdist(z, km.centers).argmin(1)

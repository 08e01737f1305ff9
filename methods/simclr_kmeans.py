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

The pretext training is the ``simclr_pretext`` stage (methods/stages/simclr_pretext.py), the same stored
network SCAN and SPICE start from: a suite running all three on a seed trains it once. This file is the
k-means step. Labels are never looked at; the result is the final epoch's. The pretext stage's per-epoch
loss, lr and seconds appear on this trial's curve (rows marked ``stage: simclr_pretext``); there is no
k-means evaluation during the pretext any more (a stage shared by several methods evaluates none of them).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, MethodConfig, TrialContext
from bench.registry import register_method
from bench.stages import StageRequest
from methods.cluster.kmeans import kmeans
from methods.engine import unlabeled_images
from methods.stages.simclr_pretext import SimCLRPretext, SimCLRRecipe, load_pretext, pretext_features


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

    class Config(SimCLRRecipe, MethodConfig):
        """The pretext stage's fields (:class:`SimCLRRecipe`, SCAN's configs/pretext/simclr_*.yml), then k-means'."""

        # the k-means step
        kmeans_features: Literal["head", "backbone"] = "head"
        kmeans_n_init: int = Field(10, ge=1)
        eval_batch_size: int = Field(1024, ge=1)

    @classmethod
    def stages(cls, cfg: SimCLRKMeans.Config) -> dict[str, StageRequest]:
        fields = {f: getattr(cfg, f) for f in SimCLRRecipe.model_fields}
        return {"pretext": StageRequest("simclr_pretext", SimCLRPretext.Config(**fields))}

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        pre = ctx.stage("pretext")
        pcfg = SimCLRPretext.Config(**pre["config"])
        net = load_pretext(pre, ctx.device)
        if ctx.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        f_fit = pretext_features(net, data.x_train, pcfg, ctx.device, cfg.kmeans_features, cfg.eval_batch_size)
        km = kmeans(f_fit, data.n_clusters, n_init=cfg.kmeans_n_init, generator=ctx.rng("kmeans"))
        if data.same_split:
            labels = km.labels
        else:
            f_eval = pretext_features(net, data.x_eval, pcfg, ctx.device, cfg.kmeans_features, cfg.eval_batch_size)
            labels = torch.cdist(f_eval, km.centers).argmin(1)
        ctx.log_epoch(cfg.epochs, inertia=km.inertia, eval_pred=labels)
        times = pre["epoch_s"]
        mean_s = round(sum(times) / len(times), 3) if times else None
        extra = unlabeled_images(data, cfg.unlabeled)
        return ClusterOutput(labels=labels, info={
            "kmeans_features": cfg.kmeans_features, "unlabeled_images": 0 if extra is None else extra.shape[0],
            "pretext_epochs_run": len(times), "pretext_mean_epoch_s": mean_s,
            "kmeans_inertia": km.inertia})

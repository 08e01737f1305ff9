"""PCL: Prototypical Contrastive Learning of Unsupervised Representations (Li, Zhou, Xiong & Hoi, ICLR 2021).

The algorithm (paper Algorithm 1; official salesforce/PCL ``main_pcl.py`` and ``pcl/builder.py``; facts,
not code):

* **Model.** MoCo: a query encoder and a momentum (key) encoder, ResNet + fc to 128-d (PCL v2: an MLP
  fc, ``--mlp``), L2-normalised; key encoder <- m x key + (1 - m) x query with m = 0.999 before each
  step; a queue of r = 16,384 past keys as negatives; temperature 0.2.
* **E-step**, once per epoch after ``warmup_epochs`` = 20 epochs of InfoNCE alone: momentum features of
  the *un-augmented* images (official ``eval_augmentation``: Resize 256 + CenterCrop 224; here the image
  at ``image_size``), then for each granularity k-means (faiss ``Clustering``: 20 iterations, 5 restarts,
  seed = the granularity's index, at most 1,000 training points per centroid) -> cluster of every image,
  L2-normalised centroids (prototypes) and a concentration phi per prototype:
  phi = mean ||v - c|| / log(Z + alpha), alpha = 10, a cluster of <= 1 point gets the largest phi, phi
  clipped to its 10th/90th percentiles and scaled to mean = temperature
  (:func:`methods.losses.concentration`).
* **M-step** (every step): L = InfoNCE(q, k, queue) + (1/M) sum_m ProtoNCE_m, where ProtoNCE_m contrasts
  q with the positive prototypes of the batch and r sampled negative prototypes, each scaled by its phi
  (:func:`methods.losses.proto_nce`, official quirks kept and described there).
* **Optimiser.** SGD lr 0.03, momentum 0.9, weight decay 1e-4, batch 256, 200 epochs; PCL v2 (the
  default here, the official README's ``--mlp --aug-plus --cos``): cosine lr, MoCo v2 augmentation
  (RandomResizedCrop scale 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, Gaussian blur
  p 0.5, flip); variant ``v1``: linear fc, MoCo v1 augmentation (crop 0.2-1, grayscale 0.2,
  ColorJitter(0.4, 0.4, 0.4, 0.4), flip), lr x 0.1 at epochs 120 and 160.
* **BatchNorm.** The official code trains on 8 GPUs with DistributedDataParallel (32 images per GPU) and
  shuffles the key batch across GPUs ("shuffle BN") so BN statistics cannot leak the positive pair; on
  one GPU this is emulated with :class:`SplitBatchNorm` over ``bn_splits`` = 8 groups and a shuffled key
  batch (as MoCo's official single-GPU CIFAR demo does).

Evaluation (no labels): PCL reports linear probes, not clusters. Here the cluster assignment is the
E-step's at the granularity k = number of classes, computed once more on the final momentum encoder
(the clustering the next epoch would use); the curve logs that granularity's assignment every epoch
after warm-up.

Choices for CIFAR-10 (PCL's paper has no CIFAR-10 clustering results), each commented at its default:

* Granularities ``cluster_multiples`` = [1, 5, 10] x the number of classes (CIFAR-10: 10, 50, 100). The
  official ImageNet setting 25k/50k/100k is 25-100 x its 1,000 classes with ~13-51 images per cluster;
  on 60,000 images 100 clusters already have ~600 each, and a granularity equal to the class count is
  needed for the evaluation. ImageNet-sized multiples (250-1,000 clusters) would be a variant.
* ProtoNCE negatives: the official code samples r = 16,384 prototypes among those no batch image is in
  and fails (``random.sample``) when fewer exist; with 10-100 prototypes all of them are used.
* ResNet-18 with the CIFAR stem at 32 px (official: ResNet-50 at 224 px); no Gaussian blur at 32 px (as
  MoCo's CIFAR demo and SimCLR's CIFAR setting); normalisation with ImageNet's mean/std as the official.

Speed (one H200, bf16, CIFAR-10 train + test, code 46a83e948f52; reports/deepcluster_pcl_cifar10_short/NOTES.md):
8.9 s per warm-up epoch (~6,700 pairs/s), 11.3 s with the E-step (11.8 s with the checkpoint); the official
200 epochs with 20 of warm-up: about 38 minutes, four 10-minute commands. After 6 epochs (warm-up shortened to
2): ACC 25.4, NMI 13.6, ARI 7.5.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.augment.gpu import NORMALIZATION, AugmentSpec, GPUAugment, resize_eval
from methods.cluster.kmeans import kmeans
from methods.engine import Engine, EngineConfig, Hook, LrScheduleHook, Priority, TargetUpdateHook, autocast, eval_pass
from methods.losses import concentration, info_nce_queue, proto_nce
from methods.nn.backbones import build_backbone
from methods.nn.heads import mlp_head


class SplitBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics are computed over ``splits`` groups of the batch (samples i with
    the same i mod splits), as on that many GPUs; the running statistics are the groups' average."""

    def __init__(self, num_features: int, splits: int):
        super().__init__(num_features)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.splits
        if not self.training or s == 1 or n % s:
            return super().forward(x)
        rm, rv = self.running_mean.repeat(s), self.running_var.repeat(s)
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), rm, rv, self.weight.repeat(s), self.bias.repeat(s),
                           True, self.momentum, self.eps).reshape(n, c, h, w)
        with torch.no_grad():
            self.running_mean.copy_(rm.view(s, c).mean(0))
            self.running_var.copy_(rv.view(s, c).mean(0))
        return out


def split_batchnorm(module: torch.nn.Module, splits: int) -> torch.nn.Module:
    """Replace every BatchNorm2d of ``module`` (in place) with a :class:`SplitBatchNorm` of the same shape."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            setattr(module, name, SplitBatchNorm(child.num_features, splits))
        else:
            split_batchnorm(child, splits)
    return module


class Encoder(torch.nn.Module):
    """ResNet features -> fc (Linear, or PCL v2's Linear-ReLU-Linear) -> L2-normalised [B, feature_dim]."""

    def __init__(self, backbone: str, stem: str, in_channels: int, feature_dim: int, mlp: bool):
        super().__init__()
        self.backbone = build_backbone(backbone, stem=stem, in_channels=in_channels)
        d = self.backbone.out_dim
        self.fc = mlp_head(d, d, feature_dim) if mlp else torch.nn.Linear(d, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.backbone(x)), dim=1)


@torch.no_grad()
def momentum_update(key: torch.nn.Module, query: torch.nn.Module, m: float) -> None:
    """key <- m key + (1 - m) query, parameters only (buffers such as BN statistics stay the key's own)."""
    kp, qp = list(key.parameters()), list(query.parameters())
    torch._foreach_mul_(kp, m)
    torch._foreach_add_(kp, qp, alpha=1.0 - m)


@register_method
class PCL(ClusteringMethod):
    name = "pcl"
    label = "PCL"
    paper = "Li, Zhou, Xiong & Hoi, Prototypical Contrastive Learning of Unsupervised Representations, ICLR 2021"
    selection_rule = "final epoch; the E-step k-means at k = number of classes (faiss settings: 20 iterations, " \
                     "5 restarts, lowest inertia) on the final momentum encoder's features"
    # no CIFAR protocol in the paper: the whole dataset, train + test, as the clustering papers it is compared to
    train_split = "all"
    eval_split = "all"
    gpu_share = 1.0
    variants = {"default": {},
                "v1": {"mlp": False, "augmentation": "mocov1", "lr_schedule": "step"}}

    class Config(EngineConfig):
        # Deviation: ResNet-50 at 224 px in the official code; ResNet-18 with the CIFAR stem at 32 px here
        backbone: Literal["resnet18", "resnet34", "tiny_cnn"] = "resnet18"  # tiny_cnn: CPU tests only
        stem: Literal["imagenet", "cifar"] = "cifar"
        image_size: int = Field(32, ge=8)
        feature_dim: int = Field(128, ge=1, description="official --low-dim")
        mlp: bool = Field(True, description="PCL v2's MLP fc (official --mlp)")
        augmentation: Literal["mocov2", "mocov1"] = Field("mocov2", description="official --aug-plus (v2) or not")
        blur: bool = Field(False, description="MoCo v2's Gaussian blur p 0.5; off at 32 px (deviation, as MoCo's "
                                              "CIFAR demo)")
        normalization: Literal["cifar10", "cifar20", "imagenet"] = "imagenet"
        queue_size: int = Field(16384, ge=1, description="official --pcl-r: queue length and number of negative "
                                                         "prototypes")
        moco_momentum: float = Field(0.999, ge=0, lt=1, description="official --moco-m")
        temperature: float = Field(0.2, gt=0, description="official --temperature")
        # CIFAR choice (see the module docstring): official ImageNet --num-cluster 25000,50000,100000
        cluster_multiples: list[int] = Field(default_factory=lambda: [1, 5, 10],
                                             description="granularities as multiples of the number of classes; "
                                                         "must contain 1 (the evaluated assignment)")
        warmup_epochs: int = Field(20, ge=0, description="epochs of InfoNCE only before the first E-step "
                                                         "(official --warmup-epoch)")
        concentration_alpha: float = Field(10.0, gt=0, description="alpha in phi = mean dist / log(Z + alpha)")
        kmeans_iters: int = Field(20, ge=1, description="faiss niter (official run_kmeans)")
        kmeans_restarts: int = Field(5, ge=1, description="faiss nredo")
        kmeans_max_points_per_centroid: int = Field(1000, ge=1, description="faiss max_points_per_centroid")
        bn_splits: int = Field(8, ge=1, description="BatchNorm groups, emulating the official 8 GPUs x 32 "
                                                    "(shuffle BN for the keys)")
        epochs: int = Field(200, ge=1)
        batch_size: int = Field(256, ge=2)
        lr: float = Field(0.03, gt=0)
        momentum: float = Field(0.9, ge=0)
        weight_decay: float = Field(1e-4, ge=0)
        lr_schedule: Literal["cos", "step"] = Field("cos", description="v2: cosine (--cos); v1: x 0.1 at the "
                                                                       "milestones")
        lr_milestones: list[int] = Field(default_factory=lambda: [120, 160])

        @model_validator(mode="after")
        def _check(self):
            if 1 not in self.cluster_multiples:
                raise ValueError("cluster_multiples must contain 1: the granularity equal to the number of classes "
                                 "gives the evaluated assignment")
            if any(m < 1 for m in self.cluster_multiples) or len(set(self.cluster_multiples)) != len(
                    self.cluster_multiples):
                raise ValueError("cluster_multiples must be distinct positive integers")
            if self.queue_size % self.batch_size:
                raise ValueError(f"queue_size ({self.queue_size}) must be a multiple of batch_size "
                                 f"({self.batch_size}), as the official queue asserts")
            if self.batch_size % self.bn_splits:
                raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of bn_splits ({self.bn_splits})")
            return self

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        mean, std = NORMALIZATION[cfg.normalization]
        ks = [m * data.n_clusters for m in cfg.cluster_multiples]
        n = data.x_train.shape[0]
        if max(ks) > n:
            raise ValueError(f"{max(ks)} clusters for {n} images: lower cluster_multiples")
        if cfg.batch_size > n:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n} training images")
        g_batch, g_aug = ctx.rng("data_order"), ctx.rng("augment")
        g_neg = ctx.rng("negative_prototypes")
        with ctx.init_rng("init"):
            query = split_batchnorm(Encoder(cfg.backbone, cfg.stem, data.x_train.shape[1], cfg.feature_dim,
                                            cfg.mlp), cfg.bn_splits)
            queue = F.normalize(torch.randn(cfg.feature_dim, cfg.queue_size), dim=0)  # official: randn, normalised
        key = copy.deepcopy(query)
        for p in key.parameters():
            p.requires_grad_(False)
        torch.backends.cudnn.benchmark = dev.type == "cuda"
        query, key = query.to(dev), key.to(dev)
        x_train = data.x_train.to(dev, non_blocking=True).contiguous()
        opt = torch.optim.SGD(query.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        augment = GPUAugment(self._spec(mean, std))
        e_step = EStep(self, key, x_train, ks, ctx, show=data.same_split)
        keys = KeyQueue(queue.to(dev))

        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            """M-step on one batch: L = InfoNCE(q, k, queue) + mean over granularities of ProtoNCE."""
            xb = x_train.index_select(0, idx)
            im_q, im_k = augment(xb, generator=g_aug), augment(xb, generator=g_aug)
            momentum_update(key, query, cfg.moco_momentum)
            with torch.no_grad():  # shuffle BN: the keys' BN groups differ from the queries'
                perm = torch.randperm(idx.shape[0], generator=g_batch, device=g_batch.device).to(dev)
                with autocast(dev, cfg.precision):
                    k_shuf = key(im_k.index_select(0, perm))
                k = torch.empty_like(k_shuf, dtype=torch.float32).index_copy_(0, perm, k_shuf.float())
            with autocast(dev, cfg.precision):
                q = query(im_q)
            q = F.normalize(q.float(), dim=1)
            loss_inst = info_nce_queue(q, k, keys.queue, cfg.temperature)
            loss_proto = torch.zeros((), device=dev)
            if e_step.clusters is not None:
                for c in e_step.clusters:
                    pos = c["assign"].index_select(0, idx)
                    loss_proto = loss_proto + proto_nce(q, c["prototypes"], c["phi"], pos,
                                                        self._negatives(pos, c["k"], g_neg))
                loss_proto = loss_proto / len(e_step.clusters)
            return {"loss": loss_inst + loss_proto, "loss_instance": loss_inst, "loss_proto": loss_proto, "keys": k}

        schedule = LrScheduleHook.cosine(cfg.lr, cfg.epochs, 0.0) if cfg.lr_schedule == "cos" else \
            LrScheduleHook.multistep(cfg.lr, cfg.lr_milestones, 0.1)
        engine = Engine(ctx, cfg, modules={"query": query, "key": key}, optimizer=opt,
                        streams={"data_order": g_batch, "augment": g_aug, "negative_prototypes": g_neg},
                        hooks=[schedule, e_step, keys])
        engine.add_pass("train", n, step, cfg.batch_size)  # official: drop_last=True
        engine.run(cfg.epochs)
        labels = self._final_labels(key, x_train, data, mean, std, ctx)
        return ClusterOutput(labels=labels, info={**engine.info(), "e_steps": e_step.updates, "granularities": ks})

    # -- parts ----------------------------------------------------------------------------------------------
    def _spec(self, mean, std) -> AugmentSpec:
        cfg = self.config
        if cfg.augmentation == "mocov2":
            return AugmentSpec(size=cfg.image_size, crop_scale=(0.2, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1),
                               jitter_p=0.8, grayscale_p=0.2, blur_p=0.5 if cfg.blur else 0.0, mean=mean, std=std)
        # MoCo v1 applies grayscale *before* the (always-on) jitter; GPUAugment's order is jitter then grayscale
        # (deviation: a greyed image is jittered in brightness/contrast officially, greyed after jitter here)
        return AugmentSpec(size=cfg.image_size, crop_scale=(0.2, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.4),
                           jitter_p=1.0, grayscale_p=0.2, mean=mean, std=std)

    def _features(self, key: torch.nn.Module, x: torch.Tensor, mean, std, dev) -> torch.Tensor:
        """The momentum encoder's L2-normalised features of un-augmented images (official ``is_eval``)."""
        cfg = self.config
        key.eval()
        try:
            f = eval_pass(key, x, lambda xb: resize_eval(xb, cfg.image_size, mean, std), cfg.eval_batch_size, dev,
                          cfg.precision)
        finally:
            key.train()
        return F.normalize(f, dim=1)

    @torch.no_grad()
    def _cluster(self, f: torch.Tensor, k: int, gi: int, ctx: TrialContext) -> dict:
        """One granularity of the official ``run_kmeans``: k-means, assignment, prototypes and phi."""
        cfg = self.config
        # official: clus.seed = the granularity's index, the same at every E-step (here also the trial's seed)
        gen = ctx.rng(f"kmeans{gi}")
        km = kmeans(f, k, n_init=cfg.kmeans_restarts, max_iter=cfg.kmeans_iters, tol=0.0, generator=gen,
                    init="random", empty="split", max_points_per_centroid=cfg.kmeans_max_points_per_centroid)
        dist = (f - km.centers[km.labels]).norm(dim=1)
        phi = concentration(dist, km.labels, k, cfg.temperature, cfg.concentration_alpha).to(f.device)
        return {"k": k, "assign": km.labels, "prototypes": F.normalize(km.centers, dim=1), "phi": phi,
                "centers": km.centers}

    def _e_step(self, key, x_train, ks: list[int], mean, std, ctx: TrialContext) -> list[dict]:
        f = self._features(key, x_train, mean, std, ctx.device)
        return [self._cluster(f, k, gi, ctx) for gi, k in enumerate(ks)]

    def _negatives(self, pos: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """Prototypes no image of the batch is in; r of them sampled when there are more (official ``sample``)."""
        free = torch.ones(k, dtype=torch.bool, device=pos.device)
        free[pos] = False
        neg = free.nonzero().squeeze(1)
        r = self.config.queue_size
        if neg.numel() > r:
            neg = neg[torch.randperm(neg.numel(), generator=gen, device=gen.device)[:r].to(neg.device)]
        return neg

    @torch.no_grad()
    def _final_labels(self, key, x_train, data: ClusteringData, mean, std, ctx: TrialContext) -> torch.Tensor:
        gi = self.config.cluster_multiples.index(1)
        f = self._features(key, x_train, mean, std, ctx.device)
        c = self._cluster(f, data.n_clusters, gi, ctx)
        if data.same_split:
            return c["assign"]
        f_eval = self._features(key, data.x_eval.to(ctx.device), mean, std, ctx.device)
        return torch.cdist(f_eval, c["centers"]).argmin(1)


class EStep(TargetUpdateHook):
    """The E-step before every epoch after ``warmup_epochs``: k-means at each granularity on the momentum
    encoder's features -> ``clusters`` (assignment, prototypes, phi) that the step reads; None during warm-up.
    Recomputed from the weights every epoch (fresh k-means streams), so a resumed run needs no state but the
    count."""

    def __init__(self, method: PCL, key: torch.nn.Module, x: torch.Tensor, ks: list[int], ctx: TrialContext,
                 show: bool):
        super().__init__(every=1)
        self.method, self.key, self.x, self.ks, self.ctx, self.show = method, key, x, ks, ctx, show
        self.clusters: list[dict] | None = None

    def due(self, engine: Engine) -> bool:
        return engine.epoch > self.method.config.warmup_epochs  # official: epoch >= warmup_epoch, 0-based

    def before_epoch(self, engine: Engine) -> None:
        self.clusters = None
        super().before_epoch(engine)

    def update(self, engine: Engine) -> None:
        cfg = self.method.config
        mean, std = NORMALIZATION[cfg.normalization]
        self.clusters = self.method._e_step(self.key, self.x, self.ks, mean, std, self.ctx)
        engine.log["phi_min"] = min(float(c["phi"].min()) for c in self.clusters)
        engine.log["phi_max"] = max(float(c["phi"].max()) for c in self.clusters)
        if self.show:  # the granularity k = number of classes, when the eval images are the training images
            engine.log["eval_pred"] = self.clusters[cfg.cluster_multiples.index(1)]["assign"]


class KeyQueue(Hook):
    """MoCo's queue of past keys (the InfoNCE negatives): each step's keys replace the oldest after the
    optimizer step (official ``_dequeue_and_enqueue``). Saved with the checkpoint."""
    priority = Priority.HIGH

    def __init__(self, queue: torch.Tensor):
        self.queue = queue
        self.ptr = 0

    @torch.no_grad()
    def after_step(self, engine: Engine, idx: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        b = outputs["keys"].shape[0]
        self.queue[:, self.ptr:self.ptr + b] = outputs["keys"].t()
        self.ptr = (self.ptr + b) % self.queue.shape[1]

    def state_dict(self) -> dict:
        return {"queue": self.queue.detach().cpu(), "ptr": self.ptr}

    def load_state_dict(self, state: dict) -> None:
        self.queue.copy_(state["queue"].to(self.queue.device))  # in place: the step holds this tensor
        self.ptr = int(state["ptr"])

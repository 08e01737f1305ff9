"""SPICE: Semantic Pseudo-labeling for Image Clustering (Niu, Shan & Wang, IEEE TIP 2022).

The algorithm, as the official code runs it (niuchuangnn/SPICE: tools/train_self_v2.py, tools/local_consistency.py,
tools/train_semi.py, spice/model/heads/sem_head*.py, configs/cifar10/*.py; claims.md section 7):

1. **Pretext**: a frozen feature model. SPICE trains MoCo v2 (1000 epochs); here the ``simclr_pretext`` stage
   that SimCLR + k-means and SCAN share is used instead (a deviation: one pretext network per seed for the three
   methods, the point of issue 15 item 8). Its 512-d backbone output, L2-normalised, is SPICE's "embedding".
2. **SPICE-Self** (variant ``self`` stops here): the backbone frozen, 10 heads MLP 512-512-K with a softmax.
   Each epoch walks the train images in big batches of 5,000; per big batch, every head scores a weakly augmented
   view (RandomCrop 32 pad 4 + flip), and :func:`spice_prototype_labels` turns the scores into pseudo-labels: the
   top ``center_ratio`` x N/K images of each cluster's score give a prototype (their mean embedding), the N/K
   images nearest to it get that cluster. Each head then trains on its pseudo-labelled images' strongly augmented
   views (SCAN's augmentation) for ``num_repeat`` 8 passes in sub-batches of 128 (mean of the heads' CE; the heads
   are stacked, :class:`~methods.nn.heads.StackedMLPHeads`, one batched product and one loss call for all), Adam
   lr 0.005, wd 0; 30 epochs (CIFAR-10; 100 for the other datasets). After each epoch every head's CE against
   the prototype pseudo-labels of the whole train split (un-augmented) is its label-free loss; the (epoch, head)
   with the lowest is kept (``checkpoint_select``). This step is the stage ``spice_self``
   (:mod:`methods.stages.spice_self`, on the epoch engine): built once per seed for both variants, resumable.
3. **Reliable pseudo-labels** (:func:`spice_reliable_labels`): a train image is reliable when its selected-head
   confidence > 0.99 and at least 90 of its 100 nearest neighbours in the embedding (itself included) share its
   predicted cluster; every cluster is cut at random to the smallest one's count.
4. **SPICE-Semi** (variant ``default``): FixMatch from scratch with the reliable images as the labelled set and
   every train image as unlabelled: batch 64 labelled + 7 x 64 unlabelled, weak view pseudo-label kept when its
   probability >= 0.95, CE on the strong view, lambda_u 1; SGD lr 0.03, momentum 0.9, Nesterov, wd 5e-4, cosine
   lr * cos(7 pi k / 16 K); EMA 0.999 of the weights, which give the labels; 2^20 iterations. On the epoch engine:
   one engine epoch is one evaluation period (``semi_eval_every`` iterations, 10 per run by default), the EMA an
   :class:`~methods.engine.EMAHook`; the trial checkpoints after every period and a re-run resumes there.

Protocol: SPICE* (the TIP paper's separate-split version): trained on the train split, evaluated on the test
split, ResNet-18 rows of TIP Table III (SPICE's README rows train and evaluate on train+test).

Deviations, each at its default: (a) the SimCLR pretext stage instead of MoCo v2 (above), with the pretext's
normalisation instead of SPICE's ImageNet mean/std; (b) the frozen backbone's features of each big batch's views
are computed once in eval mode and reused by the 8 passes (the official re-runs the frozen backbone per sub-batch
in train mode, so its BatchNorm uses the sub-batch statistics): the same views and labels at a tenth of the
cost; (c) SPICE-Semi's network is ResNet-18 with the CIFAR stem (the official's ``resnet18_cifar`` option, the
TIP Table III ResNet-18 rows) instead of WideResNet-28-2; (d) FixMatch's strong view is SCAN's strong
augmentation (4 RandAugment ops + Cutout) instead of FixMatch's RandAugment, and the weak crop pads with zeros
(FixMatch: reflect); (e) bf16 autocast on a GPU (``precision: fp32`` for the official arithmetic).
Kept from the official although odd: the heads' cross-entropy is applied to their softmax outputs
(``last_activation="softmax"`` then ``nn.CrossEntropyLoss``), i.e. log-softmax of probabilities
(``ce_on_probabilities: false`` uses the logits).

GPU figures (one H200), the shared-pretext run and the extrapolation to the paper schedule: bench/perf/NOTES_scan.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.errors import BenchError
from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from bench.stages import StageRequest
from methods.augment.gpu import NORMALIZATION, resize_eval
from methods.augment.strong import ScanAugment, ScanAugmentSpec
from methods.engine import (
    CheckpointHook,
    CurveLogHook,
    EMAHook,
    Engine,
    EngineConfig,
    EvalHook,
    Hook,
    autocast,
    conv_layout,
    eval_pass,
)
from methods.losses import fixmatch_loss, spice_reliable_labels
from methods.nn.backbones import resnet
from methods.nn.heads import MultiHeadClassifier
from methods.stages.neighbours import MineNeighbours
from methods.stages.simclr_pretext import PretextFields
from methods.stages.spice_self import SpiceSelf, frozen_backbone, load_heads

_SELF = SpiceSelf.Config()  # the paper defaults of SPICE-Self
#: SPICE's names for the SPICE-Self stage's fields that carry a ``self_`` prefix here; the others keep their names
_SELF_RENAMED = {"epochs": "self_epochs", "batch_size": "self_batch_size", "lr": "self_lr",
                 "weight_decay": "self_weight_decay"}


@register_method
class SPICE(ClusteringMethod):
    name = "spice"
    label = "SPICE"
    paper = "Niu, Shan & Wang, SPICE: Semantic Pseudo-labeling for Image Clustering, IEEE TIP 2022"
    selection_rule = ("SPICE-Self: the (epoch, head) with the lowest CE against its prototype pseudo-labels on the "
                      "train images (official checkpoint_select, no labels); SPICE-Semi: the EMA model after the "
                      "last iteration")
    train_split = "train"
    eval_split = "test"
    gpu_share = 1.0
    variants = {"default": {}, "self": {"semi": False}}
    dataset_defaults = {
        "cifar100-20": {"normalization": "cifar20", "self_epochs": 100, "self_batch_size": 10000},
        "stl10": {"image_size": 96, "normalization": "imagenet", "self_epochs": 100, "cutout": 32},
    }

    class Config(PretextFields):
        # SPICE-Self (stage spice_self): its defaults, sources and deviations live in the stage's Config
        num_heads: int = Field(_SELF.num_heads, ge=1)
        head_hidden_dim: int = Field(_SELF.head_hidden_dim, ge=1)
        self_epochs: int = Field(_SELF.epochs, ge=1, description="SPICE-Self epochs (CIFAR-10: 30, others: 100)")
        self_batch_size: int = Field(_SELF.batch_size, ge=2, description="images per pseudo-labelling round")
        train_sub_batch_size: int = Field(_SELF.train_sub_batch_size, ge=1)
        num_repeat: int = Field(_SELF.num_repeat, ge=1, description="passes over each round's pseudo-labelled images")
        self_lr: float = Field(_SELF.lr, gt=0)
        self_weight_decay: float = Field(_SELF.weight_decay, ge=0)
        center_ratio: float = Field(_SELF.center_ratio, gt=0, le=1)
        ce_on_probabilities: bool = Field(_SELF.ce_on_probabilities, description="official: CE of the softmax outputs")
        weak_padding: int = Field(_SELF.weak_padding, ge=0, description="weak view: RandomCrop(size, padding) + flip")
        strong_ops: int = Field(_SELF.strong_ops, ge=0)
        cutout: int = Field(_SELF.cutout, ge=0, description="Cutout length (STL-10: 32)")
        reliable_neighbors: int = Field(100, ge=2, description="neighbours counted, the image itself included")
        reliable_agree: float = Field(0.9, gt=0, le=1)
        reliable_confidence: float = Field(0.99, gt=0, lt=1)
        semi: bool = Field(True, description="run SPICE-Semi after SPICE-Self (variant self: False)")
        semi_iterations: int = Field(2 ** 20, ge=1, description="FixMatch iterations")
        semi_batch_size: int = Field(64, ge=1)
        semi_uratio: int = Field(7, ge=1)
        semi_lr: float = Field(0.03, gt=0)
        semi_weight_decay: float = Field(5e-4, ge=0)
        semi_threshold: float = Field(0.95, gt=0, lt=1)
        semi_lambda_u: float = Field(1.0, ge=0)
        semi_ema: float = Field(0.999, ge=0, lt=1)
        semi_eval_every: int = Field(0, ge=0, description="iterations between curve evaluations (0: 10 per run)")

    @classmethod
    def protocol_fields(cls, config):
        return {"image_size": config.image_size, "stem": config.stem, "backbone": config.backbone,
                "epochs": config.pretext_epochs, "self_epochs": config.self_epochs,
                "semi_iterations": config.semi_iterations * config.semi}

    @classmethod
    def stages(cls, cfg: SPICE.Config) -> dict[str, StageRequest]:
        pretext = cfg.pretext_request()
        # SPICE-Self is the shared stage spice_self: built once per seed for the variants self and default
        self_step = StageRequest("spice_self", SpiceSelf.Config(**{f: getattr(cfg, _SELF_RENAMED.get(f, f))
                                                                    for f in SpiceSelf.Config.model_fields}),
            upstream={"pretext": pretext})
        if not cfg.semi:
            return {"pretext": pretext, "self": self_step}
        # official topk(k=100) includes the image itself: 99 others
        nbrs = StageRequest("neighbours", MineNeighbours.Config(k=cfg.reliable_neighbors - 1, eval_k=0,
                                                                features="backbone"),
                            upstream={"pretext": pretext})
        return {"pretext": pretext, "self": self_step, "neighbours": nbrs}

    # ------------------------------------------------------------------------------------------------------------
    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        pre = ctx.stage("pretext")
        art = ctx.stage("self")
        backbone = frozen_backbone(pre, dev)
        mean, std = NORMALIZATION[cfg.normalization]

        def feats(x: torch.Tensor) -> torch.Tensor:
            return eval_pass(backbone, x, lambda xb: conv_layout(resize_eval(xb, cfg.image_size, mean, std), dev),
                             cfg.eval_batch_size, dev, cfg.precision)

        x_train = data.x_train.to(dev)
        best = art["best"]
        head = load_heads(art, dev).head(best["head"]).eval()
        with torch.no_grad():
            scores_train = F.softmax(head(feats(x_train)), dim=1)
            self_labels = F.softmax(head(feats(data.x_eval.to(dev))), dim=1).argmax(1)
        info = {"self_best_epoch": best["epoch"], "self_best_head": best["head"], "self_select_loss": best["loss"],
                "pretext_epochs_run": len(pre["epoch_s"])}
        if not cfg.semi:
            ctx.log_epoch(cfg.self_epochs, phase="selected", eval_pred=self_labels)
            return ClusterOutput(labels=self_labels, info=info)

        nb = ctx.stage("neighbours")["train"].to(dev)
        idx_rel, lab_rel = spice_reliable_labels(nb, scores_train, cfg.reliable_agree, cfg.reliable_confidence,
                                                 generator=ctx.rng("reliable", dev))
        if idx_rel.numel() == 0:
            raise BenchError(f"SPICE found no reliable pseudo-labels (confidence > {cfg.reliable_confidence} and "
                             f"{cfg.reliable_agree:.0%} of {cfg.reliable_neighbors} neighbours agreeing, in every "
                             "cluster): the SPICE-Self step is too weak; train longer or lower the thresholds")
        info.update(reliable_labels=int(idx_rel.numel()))
        labels = self._spice_semi(data, x_train, idx_rel, lab_rel, ctx)
        return ClusterOutput(labels=labels, info=info)

    # -- SPICE-Semi (FixMatch) -----------------------------------------------------------------------------------
    def _spice_semi(self, data, x_train, idx_rel, lab_rel, ctx) -> torch.Tensor:
        cfg = self.config
        dev = ctx.device
        mean, std = NORMALIZATION[cfg.normalization]
        with ctx.init_rng("semi_init"):
            net = MultiHeadClassifier(resnet(cfg.backbone, stem=cfg.stem, in_channels=x_train.shape[1]), 1,
                                      data.n_clusters).to(dev)
        if dev.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        ema = MultiHeadClassifier(resnet(cfg.backbone, stem=cfg.stem, in_channels=x_train.shape[1]), 1,
                                  data.n_clusters).to(dev)
        if dev.type == "cuda":
            ema = ema.to(memory_format=torch.channels_last)
        ema.load_state_dict(net.state_dict())
        ema.requires_grad_(False)
        decay, no_decay = [], []
        for name, p in net.named_parameters():  # FixMatch: no weight decay on biases and BatchNorm
            (no_decay if "bn" in name or "bias" in name or p.ndim == 1 else decay).append(p)
        opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.semi_weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=cfg.semi_lr, momentum=0.9,
                              nesterov=True)
        weak = ScanAugment(ScanAugmentSpec(cfg.image_size, n_ops=0, cutout=0, crop_padding=cfg.weak_padding,
                                           mean=mean, std=std))
        strong = ScanAugment(ScanAugmentSpec(cfg.image_size, n_ops=cfg.strong_ops, cutout=cfg.cutout,
                                             mean=mean, std=std))
        g_order, g_aug = ctx.rng("semi_order", dev), ctx.rng("semi_augment", dev)

        def view(fn, xb):
            if xb.shape[-1] != cfg.image_size:
                xb = resize_eval(xb, cfg.image_size)
            return fn(xb, generator=g_aug)

        def prep(xb: torch.Tensor) -> torch.Tensor:
            return conv_layout(resize_eval(xb, cfg.image_size, mean, std), dev)

        total = cfg.semi_iterations
        every = cfg.semi_eval_every or max(1, total // 10)
        n, n_lb, bl, bu = x_train.shape[0], idx_rel.numel(), cfg.semi_batch_size, cfg.semi_batch_size * cfg.semi_uratio

        def step(_idx: torch.Tensor) -> dict[str, torch.Tensor]:
            """One FixMatch iteration: its lr, a labelled and an unlabelled batch drawn with replacement, three views,
            the loss (back-propagated by the engine before its SGD step; the EMA follows in a hook)."""
            it = engine.global_step
            for g in opt.param_groups:  # FixMatch's cosine: lr cos(7 pi k / (16 K))
                g["lr"] = cfg.semi_lr * math.cos(7 * math.pi * it / (16 * total))
            lb = torch.randint(n_lb, (bl,), device=dev, generator=g_order)
            ub = torch.randint(n, (bu,), device=dev, generator=g_order)
            x_lb, y_lb, x_ub = x_train[idx_rel[lb]], lab_rel[lb], x_train[ub]
            inputs = conv_layout(torch.cat([view(weak, x_lb), view(weak, x_ub), view(strong, x_ub)]), dev)
            with autocast(dev, cfg.precision):
                logits = net(inputs)[:, 0].float()
            l_lb, l_w, l_s = logits[:bl], logits[bl:bl + bu], logits[bl + bu:]
            loss, sup, unsup = fixmatch_loss(l_lb, y_lb, l_w, l_s, cfg.semi_threshold, cfg.semi_lambda_u)
            return {"loss": loss, "loss_sup": sup, "loss_unsup": unsup}

        # an engine "epoch" is one evaluation period of `every` iterations (the last one may be shorter)
        periods = -(-total // every)
        knobs = EngineConfig(eval_every=1, checkpoint_every=1, precision=cfg.precision)
        engine = Engine(ctx, knobs, modules={"net": net, "ema": ema}, optimizer=opt,
                        streams={"data_order": g_order, "augment": g_aug},
                        hooks=[EMAHook(ema, net, cfg.semi_ema),
                               EvalHook(lambda e: self._predict(ema, data.x_eval, prep, dev), 1),
                               IterationLog(),
                               CurveLogHook(epoch_offset=cfg.self_epochs, phase="semi"),
                               # harness knobs are not SPICE's config fields (they would change its trial key);
                               # the checkpoint resumes only a run of the same config
                               CheckpointHook(1, fingerprint=cfg.model_dump(mode="json"))])
        engine.add_pass("semi", 0, step, 1,
                        order=lambda: torch.arange(min(every, total - (engine.epoch - 1) * every), device=dev))
        engine.run(periods)
        return engine.hook(EvalHook).pred

    def _predict(self, net, x, prep, dev) -> torch.Tensor:
        net.eval()
        logits = eval_pass(net, x, prep, self.config.eval_batch_size, dev, self.config.precision)
        return logits[:, 0].argmax(1)


class IterationLog(Hook):
    """Puts the iterations run so far on each curve row (SPICE-Semi's periods are counted in FixMatch iterations)."""

    def after_epoch(self, engine: Engine) -> None:
        engine.log["iteration"] = engine.global_step


"""SCAN's clustering step (Van Gansbeke et al., ECCV 2020), shared by SCAN's variants ``scan_only`` and ``default``
(which self-labels from it): trained once per (config, pretext, neighbours, data, seed).

As the official code runs it (wvangansbeke/Unsupervised-Classification: scan.py, configs/scan/scan_cifar10.yml,
losses/losses.py ``SCANLoss``, utils/evaluate_utils.py ``scan_evaluate``): the pretext backbone + linear cluster
heads; every anchor is paired with a neighbour drawn uniformly from its mined list (itself included), both strongly
augmented (flip, crop, 4 random RandAugment ops, Cutout: :mod:`methods.augment.strong`), each through the network
in its own forward pass; loss per head = -mean log <p(anchor), p(neighbour)> - 5 x H(mean p(anchor))
(:func:`methods.losses.scan_loss`), summed over the heads; the whole network is updated; Adam, constant lr. After
each epoch every head is scored on the eval images without labels (consistency over the mined eval neighbours minus
the entropy, weight 1); the (epoch, head) with the lowest score is kept (``scan_model``).

Artifacts: the kept network's weights with the selected head only (no optimizer state: self-labelling starts a new
Adam, as the official), the pretext architecture to rebuild the backbone, the selection (epoch, head, score), and the
state of the SCAN step's three random streams at its end, so that self-labelling continues them exactly as one
process running both steps would (the numbers equal those of the pre-stage SCAN). The build runs on the epoch engine
(methods/engine) and checkpoints every ``CHECKPOINT_EVERY`` epochs into the stage's partial folder (keyed by the stage
key); a killed build resumes there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.context import TrialContext
from bench.method import ClusteringData
from bench.stages import Stage, register_stage
from methods.augment.gpu import NORMALIZATION, resize_eval
from methods.augment.strong import ScanAugment, ScanAugmentSpec
from methods.engine import (
    CurveLogHook,
    Engine,
    EngineConfig,
    Hook,
    Priority,
    autocast,
    conv_layout,
    eval_pass,
    prepare_training,
)
from methods.engine.steps import adam
from methods.losses import scan_loss, scan_selection_loss
from methods.nn.backbones import resnet
from methods.nn.heads import MultiHeadClassifier
from methods.stages import ImageStageConfig

#: the SCAN step's random streams, in the order the artifact stores their states
STREAMS = ("data_order", "augment", "neighbour_pick")


@register_stage
class ScanClustering(Stage):
    name = "scan_clustering"
    version = 1

    class Config(ImageStageConfig):
        """Defaults: configs/scan/scan_cifar10.yml (CIFAR-10); SCAN's dataset defaults set the rest."""

        eval_neighbors: int = Field(5, ge=1, description="top-5 eval neighbours for the selection score")
        # Deviation: the recipe and SCAN's ImageNet configs train 10 heads and keep the lowest-loss one;
        # SCAN's CIFAR/STL configs train one (num_heads 1 restores that)
        num_heads: int = Field(10, ge=1, description="issue recipe / ImageNet configs: 10; CIFAR/STL configs: 1")
        entropy_weight: float = Field(5.0, ge=0, description="SCANLoss entropy_weight 5")
        epochs: int = Field(50, ge=1, description="CIFAR-10: 50 (CIFAR-100-20, STL-10: 100)")
        batch_size: int = Field(128, ge=2, description="CIFAR-10: 128 (CIFAR-100-20: 512), drop_last")
        lr: float = Field(1e-4, gt=0, description="Adam lr 1e-4, constant")
        weight_decay: float = Field(1e-4, ge=0)
        update_cluster_head_only: bool = False
        strong_ops: int = Field(4, ge=0, description="num_strong_augs")
        cutout: int = Field(16, ge=0, description="Cutout length (STL-10: 32)")

    def build(self, data: ClusteringData, inputs: dict[str, dict[str, Any]], ctx: TrialContext) -> dict[str, Any]:
        return train_scan_step(self.config, data, inputs["pretext"], inputs["neighbours"], ctx)


def _prep(cfg: ScanClustering.Config, dev: torch.device):
    mean, std = NORMALIZATION[cfg.normalization]
    return lambda xb: conv_layout(resize_eval(xb, cfg.image_size, mean, std), dev)


def strong_view(cfg, g_aug: torch.Generator, dev: torch.device):
    """SCAN's strong augmentation of a uint8 batch at the network's size (also self-labelling's)."""
    mean, std = NORMALIZATION[cfg.normalization]
    strong = ScanAugment(ScanAugmentSpec(cfg.image_size, n_ops=cfg.strong_ops, cutout=cfg.cutout, mean=mean, std=std))

    def view(xb: torch.Tensor) -> torch.Tensor:
        if xb.shape[-1] != cfg.image_size:  # the augmentation works at the network's size
            xb = resize_eval(xb, cfg.image_size)
        return conv_layout(strong(xb, generator=g_aug), dev)
    return view


def load_clustering(art: dict[str, Any], device: torch.device) -> MultiHeadClassifier:
    """The kept network (backbone + the selected head) of a ``scan_clustering`` artifact, on ``device``."""
    a = art["arch"]
    net = MultiHeadClassifier(resnet(a["backbone"], stem=a["stem"], in_channels=a["in_channels"]), 1,
                              int(art["n_clusters"]))
    net.load_state_dict(art["state_dict"])
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


@torch.no_grad()
def head_probs(net: MultiHeadClassifier, x: torch.Tensor, prep, cfg, dev) -> torch.Tensor:
    """Softmax of every head on the un-augmented images, eval mode: [H, N, K]."""
    was = net.training
    net.eval()
    try:
        logits = eval_pass(net, x, prep, cfg.eval_batch_size, dev, cfg.precision)
    finally:
        net.train(was)
    return F.softmax(logits, dim=2).permute(1, 0, 2).contiguous()


#: epochs between a build's checkpoints: a harness knob (not in the stage config, so not in its key). A CIFAR-10 SCAN
#: epoch took 10.8 s on an H200 before its step was graphed (reports/scan_paper_cifar10_seed0/NOTES.md), a checkpoint
#: (network, kept network, Adam) ~180 MB
CHECKPOINT_EVERY = 5


def train_scan_step(cfg: ScanClustering.Config, data: ClusteringData, pre: dict[str, Any], nb: dict[str, Any],
                    ctx: TrialContext) -> dict[str, Any]:
    """SCAN's clustering step on the engine: the pretext backbone + ``num_heads`` linear heads trained with the SCAN
    loss (:func:`scan_step`), the lowest-loss (epoch, head) kept (:class:`KeepLowestLossHead`); resumable from the
    build's checkpoint. Returns the stage's artifacts."""
    from methods.stages.simclr_pretext import load_pretext

    dev = ctx.device
    with ctx.init_rng("init"):
        net = MultiHeadClassifier(load_pretext(pre).backbone, cfg.num_heads, data.n_clusters)
    x_train, net = prepare_training(data.x_train, net, dev)
    g_aug, g_nb = ctx.rng("augment"), ctx.rng("neighbour_pick")
    prep, view = _prep(cfg, dev), strong_view(cfg, g_aug, dev)
    neighbours = nb["train"].to(dev)
    eval_nb = nb["eval"].to(dev) if "eval" in nb else neighbours[:, :cfg.eval_neighbors + 1]
    if cfg.update_cluster_head_only:
        params = list(net.heads.parameters())
        net.backbone.requires_grad_(False)
    else:
        params = list(net.parameters())
    # official: torch.optim.Adam (constant lr, L2 weight decay); on a GPU the fused, capturable kernel (same rule) so
    # the step replays as a CUDA graph
    opt = adam(params, cfg.lr, dev, weight_decay=cfg.weight_decay)
    # the engine's harness knobs: not in the stage config (they would change its key)
    knobs = EngineConfig(eval_every=0, checkpoint_every=min(CHECKPOINT_EVERY, cfg.epochs), precision=cfg.precision)
    engine = Engine(ctx, knobs, modules={"net": net}, optimizer=opt,
                    streams={"augment": g_aug, "neighbour_pick": g_nb},
                    hooks=[KeepLowestLossHead(net, lambda: head_probs(net, data.x_eval, prep, cfg, dev), eval_nb),
                           CurveLogHook(phase="scan")])
    # the head-only variant keeps BatchNorm's statistics (official: model.eval() there)
    engine.add_pass("train", x_train.shape[0],
                    lambda idx: scan_step(net, x_train, neighbours, idx, view, g_nb, cfg),
                    cfg.batch_size, train=not cfg.update_cluster_head_only, graph=True)
    engine.run(cfg.epochs)
    best = engine.hook(KeepLowestLossHead)
    net.load_state_dict(best.state)
    net.keep_head(best.head)
    return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "arch": dict(pre["arch"]),
            "n_clusters": int(data.n_clusters), "best_epoch": best.epoch, "best_head": best.head,
            "select_loss": best.loss, "streams": {s: engine.streams[s].get_state().cpu() for s in STREAMS},
            "streams_device": dev.type}


class KeepLowestLossHead(Hook):
    """SCAN's label-free model selection (official ``scan_evaluate`` and ``scan_model``): after every epoch each head
    is scored on the eval images without labels (consistency over their mined eval neighbours minus the entropy,
    weight 1); the (epoch, head) with the lowest score so far is kept with the network's weights. The epoch's best
    head, its score and its labels go onto the curve row. Saved with the checkpoint."""
    priority = Priority.NORMAL  # before the curve row (LOW) and the checkpoint (LOWEST) of the epoch

    def __init__(self, net: MultiHeadClassifier, probs: Callable[[], torch.Tensor], eval_neighbours: torch.Tensor):
        self.net, self.probs, self.eval_neighbours = net, probs, eval_neighbours
        self.loss, self.head, self.epoch = float("inf"), 0, 0
        self.state: dict[str, torch.Tensor] | None = None

    def after_epoch(self, engine: Engine) -> None:
        probs = self.probs()  # [H, N_eval, K]
        sel = scan_selection_loss(probs, self.eval_neighbours)
        h = int(sel.argmin())
        score = float(sel[h])  # one host read per epoch
        if score < self.loss:
            self.loss, self.head, self.epoch = score, h, engine.epoch
            self.state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        engine.log.update(select_loss=score, select_head=h, eval_pred=probs[h].argmax(1))

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "head": self.head, "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss, self.head, self.epoch, self.state = state["loss"], state["head"], state["epoch"], state["state"]


def continue_streams(art: dict[str, Any], ctx: TrialContext, device: torch.device) -> list[torch.Generator]:
    """The SCAN step's streams (``STREAMS`` order) where its build left them: self-labelling draws on from there."""
    gens = [ctx.rng(s, device) for s in STREAMS]
    if art.get("streams_device") != torch.device(device).type:  # a CPU generator's state does not fit a CUDA one
        ctx.logger.warning("SCAN step built on %s, self-labelling on %s: its random streams start afresh",
                           art.get("streams_device"), torch.device(device).type)
        return gens
    for s, g in zip(STREAMS, gens):
        g.set_state(art["streams"][s])
    return gens


# The engine's step, shared with bench/perf/scan_epoch.py. Waits for nothing on the GPU (no .item(), no boolean
# indexing, no host-to-device copy): a step only queues kernels, so the host runs ahead of the device.
def scan_step(net: MultiHeadClassifier, x_train: torch.Tensor, neighbours: torch.Tensor, idx: torch.Tensor, view,
              g_nb: torch.Generator, cfg) -> dict[str, torch.Tensor]:
    """SCAN's losses on one batch: each anchor with a neighbour drawn from its mined list, both strongly augmented,
    each through the network in its own forward pass (official: BatchNorm sees the anchors and the neighbours
    separately). ``loss``: the heads' SCAN losses summed (official ``total_loss``, what the engine back-propagates
    before its Adam step); ``loss_consistency``, ``loss_entropy``: its parts, also summed over the heads."""
    dev = x_train.device
    pick = torch.randint(neighbours.shape[1], (idx.numel(),), device=dev, generator=g_nb)
    nb_idx = neighbours[idx, pick]
    with autocast(dev, cfg.precision):
        la = net(view(x_train[idx]))
        ln = net(view(x_train[nb_idx]))
    # all heads at once ([B, H, K] -> per-head [H]); the official loops over the heads, same arithmetic
    t, c, e = scan_loss(la.float(), ln.float(), cfg.entropy_weight)
    return {"loss": t.sum(), "loss_consistency": c.sum(), "loss_entropy": e.sum()}

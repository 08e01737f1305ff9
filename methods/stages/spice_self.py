"""SPICE-Self (Niu, Shan & Wang, IEEE TIP 2022), shared by SPICE's variants ``self`` and ``default`` (which trains
SPICE-Semi from its heads): trained once per (config, pretext, data, seed).

As the official code runs it (niuchuangnn/SPICE: tools/train_self_v2.py, spice/model/heads/sem_head*.py,
configs/cifar10/spice_self.py), on the frozen pretext backbone: 10 heads MLP 512-512-K. Each epoch walks the train
images in big batches of 5,000; per big batch, every head scores a weakly augmented view (RandomCrop pad 4 + flip),
and :func:`~methods.losses.spice_prototype_labels` turns the scores into pseudo-labels (the top ``center_ratio`` x
N/K images of each cluster's score give a prototype, the N/K images nearest to it get that cluster). Each head then
trains on its pseudo-labelled images' strongly augmented views for ``num_repeat`` passes in sub-batches (mean
of the heads' CE: :func:`~methods.losses.spice_self_loss`), Adam. After each epoch every head's CE against the
prototype pseudo-labels of the whole train split (un-augmented) is its label-free loss; the (epoch, head) with the
lowest is kept (``checkpoint_select``). The deviations are stated at SPICE's config (methods/spice.py).

The epochs run on :mod:`methods.engine` (one pass per epoch whose step does its own optimisation, a hook for the
selection), so a build checkpoints every epoch into the stage's partial folder and a killed build resumes there.

Artifacts: the heads' weights at the kept epoch (all heads, stacked), the kept (epoch, head, loss), and the head
shapes to rebuild them (:func:`load_heads`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.context import TrialContext
from bench.method import ClusteringData
from bench.stages import Stage, register_stage
from methods.augment.gpu import NORMALIZATION, resize_eval
from methods.augment.strong import ScanAugment, ScanAugmentSpec
from methods.engine import Engine, EngineConfig, Hook, Priority, conv_layout, eval_pass
from methods.losses import spice_prototype_labels, spice_self_loss
from methods.nn.heads import StackedMLPHeads, mlp_head
from methods.stages import ImageStageConfig


@register_stage
class SpiceSelf(Stage):
    name = "spice_self"
    version = 1

    class Config(ImageStageConfig):
        """Defaults: configs/cifar10/spice_self.py (CIFAR-10); SPICE's dataset defaults set the rest."""

        num_heads: int = Field(10, ge=1)
        head_hidden_dim: int = Field(512, ge=1)
        epochs: int = Field(30, ge=1, description="CIFAR-10: 30, others: 100")
        batch_size: int = Field(5000, ge=2, description="images per pseudo-labelling round")
        train_sub_batch_size: int = Field(128, ge=1)
        num_repeat: int = Field(8, ge=1, description="passes over each round's pseudo-labelled images")
        lr: float = Field(0.005, gt=0)
        weight_decay: float = Field(0.0, ge=0)
        center_ratio: float = Field(0.5, gt=0, le=1)
        ce_on_probabilities: bool = Field(True, description="official: CE of the softmax outputs")
        weak_padding: int = Field(4, ge=0, description="weak view: RandomCrop(size, padding) + flip")
        strong_ops: int = Field(4, ge=0)
        cutout: int = Field(16, ge=0, description="Cutout length (STL-10: 32)")

    def build(self, data: ClusteringData, inputs: dict[str, dict[str, Any]], ctx: TrialContext) -> dict[str, Any]:
        return train_spice_self(self.config, data, inputs["pretext"], ctx)


def frozen_backbone(pre: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The pretext network's backbone, frozen, in eval mode (SPICE's feature model)."""
    from methods.stages.simclr_pretext import load_pretext

    backbone = load_pretext(pre, device).backbone.eval().requires_grad_(False)
    if device.type == "cuda":
        backbone = backbone.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return backbone


def load_heads(art: dict[str, Any], device: torch.device) -> StackedMLPHeads:
    """The kept heads of a ``spice_self`` artifact (all of them, stacked), on ``device``, eval mode."""
    n, d, hidden, k = (int(art["arch"][a]) for a in ("num_heads", "in_dim", "hidden_dim", "n_clusters"))
    heads = StackedMLPHeads(torch.empty(n, hidden, d), torch.empty(n, hidden), torch.empty(n, k, hidden),
                            torch.empty(n, k))
    heads.load_state_dict(art["state_dict"])
    return heads.to(device).eval()


class HeadSelection(Hook):
    """After each epoch: every head's CE against its own prototype pseudo-labels of the whole train split
    (un-augmented, no labels); the (epoch, head) with the lowest is kept, its weights copied. Logs the epoch's best
    head and loss and its predictions on the eval images (curve only). Runs before the curve row is written."""
    priority = Priority.NORMAL

    def __init__(self, heads: StackedMLPHeads, f_train: torch.Tensor, emb_train: torch.Tensor, f_eval, cfg):
        self.heads, self.f_train, self.emb_train, self.f_eval, self.cfg = heads, f_train, emb_train, f_eval, cfg
        self.best: dict[str, Any] = {"loss": float("inf"), "head": 0, "epoch": 0, "state": None}

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.softmax(logits, 1) if self.cfg.ce_on_probabilities else logits, target)

    def after_epoch(self, engine: Engine) -> None:
        heads = self.heads
        was = heads.training
        heads.eval()
        with torch.no_grad():
            sel = []
            for logits in heads(self.f_train):
                p_idx, p_lab = spice_prototype_labels(self.emb_train, F.softmax(logits, 1), self.cfg.center_ratio)
                sel.append(float(self._ce(logits[p_idx], p_lab)))
            h_best = min(range(len(sel)), key=sel.__getitem__)
            if sel[h_best] < self.best["loss"]:
                self.best = {"loss": sel[h_best], "head": h_best, "epoch": engine.epoch,
                             "state": {k: v.detach().clone() for k, v in heads.state_dict().items()}}
            pred = heads(self.f_eval())[h_best].argmax(1)
        heads.train(was)
        engine.log.update(phase="self", select_loss=sel[h_best], select_head=h_best, eval_pred=pred)

    def state_dict(self) -> dict[str, Any]:
        b = self.best
        return {**b, "state": None if b["state"] is None else {k: v.cpu() for k, v in b["state"].items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.f_train.device
        self.best = {**state, "state": None if state["state"] is None else
                     {k: v.to(dev) for k, v in state["state"].items()}}


def train_spice_self(cfg: SpiceSelf.Config, data: ClusteringData, pre: dict[str, Any],
                     ctx: TrialContext) -> dict[str, Any]:
    dev = ctx.device
    k = data.n_clusters
    mean, std = NORMALIZATION[cfg.normalization]
    backbone = frozen_backbone(pre, dev)

    def prep(xb: torch.Tensor) -> torch.Tensor:
        return conv_layout(resize_eval(xb, cfg.image_size, mean, std), dev)

    def feats(x: torch.Tensor, transform=prep) -> torch.Tensor:
        return eval_pass(backbone, x, transform, cfg.eval_batch_size, dev, cfg.precision)

    x_train = data.x_train.to(dev)
    f_train = feats(x_train)  # head input (un-augmented)
    emb_train = F.normalize(f_train, dim=1)  # SPICE's embedding for prototypes
    with ctx.init_rng("init"):
        # initialised head by head (as the official's list of heads), trained stacked: one batched product per
        # layer and one loss call for all heads (a Python loop over 10 heads dominated the epoch)
        heads = StackedMLPHeads.from_heads(
            [mlp_head(f_train.shape[1], cfg.head_hidden_dim, k) for _ in range(cfg.num_heads)]).to(dev)
    opt = torch.optim.Adam(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weak = ScanAugment(ScanAugmentSpec(cfg.image_size, n_ops=0, cutout=0, crop_padding=cfg.weak_padding,
                                       mean=mean, std=std))
    strong = ScanAugment(ScanAugmentSpec(cfg.image_size, n_ops=cfg.strong_ops, cutout=cfg.cutout,
                                         mean=mean, std=std))
    # the batch order and each round's sub-batch order come from one stream (the engine's data_order)
    g_order, g_aug = ctx.rng("data_order", dev), ctx.rng("augment", dev)

    def aug(fn):
        return lambda xb: conv_layout(fn(resize_eval(xb, cfg.image_size) if xb.shape[-1] != cfg.image_size
                                         else xb, generator=g_aug), dev)

    def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One big batch: pseudo-labels from every head's weak-view scores, then ``num_repeat`` passes of
        sub-batch steps on the strong views (the step optimises itself: the mean of its steps' losses is logged)."""
        heads.eval()
        with torch.no_grad():
            f_weak = feats(x_train[idx], aug(weak))
            f_strong = feats(x_train[idx], aug(strong))
            scores = F.softmax(heads(f_weak), 2)  # [H, bs, K]
            picks = [spice_prototype_labels(emb_train[idx], scores[h], cfg.center_ratio) for h in range(len(heads))]
            pick_idx = torch.stack([p for p, _ in picks])  # [H, n_sel]
            pick_lab = torch.stack([lab for _, lab in picks])
        heads.train()
        n_sel = pick_idx.shape[1]
        sub = min(cfg.train_sub_batch_size, n_sel)
        loss_sum, steps = torch.zeros((), device=dev), 0
        for _ in range(cfg.num_repeat):
            order = torch.randperm(n_sel, device=dev, generator=g_order)
            for i in range(n_sel // sub):
                s = order[i * sub:(i + 1) * sub]
                loss = spice_self_loss(heads(f_strong[pick_idx[:, s]]), pick_lab[:, s], cfg.ce_on_probabilities)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                steps += 1
        return {"loss": loss_sum / max(1, steps)}

    selection = HeadSelection(heads, f_train, emb_train, lambda: feats(data.x_eval.to(dev)), cfg)
    # the engine's harness knobs: not in the stage config (they would change its key)
    knobs = EngineConfig(eval_every=0, checkpoint_every=1, precision=cfg.precision)
    engine = Engine(ctx, knobs, modules={"heads": heads}, optimizer=opt,
                    streams={"data_order": g_order, "augment": g_aug}, hooks=[selection])
    engine.add_pass("self", x_train.shape[0], step, cfg.batch_size, optimize=False)
    engine.run(cfg.epochs)
    best = selection.best
    return {"state_dict": {k: v.detach().cpu() for k, v in best["state"].items()},
            "best": {"epoch": best["epoch"], "head": best["head"], "loss": best["loss"]},
            "arch": {"num_heads": cfg.num_heads, "in_dim": f_train.shape[1], "hidden_dim": cfg.head_hidden_dim,
                     "n_clusters": k},
            "epoch_s": list(engine.epoch_times)}


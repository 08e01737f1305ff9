"""SCAN: Learning to Classify Images without Labels (Van Gansbeke et al., ECCV 2020).

The algorithm, as the official code runs it (wvangansbeke/Unsupervised-Classification: simclr.py, scan.py,
selflabel.py, configs/{pretext,scan,selflabel}/*_cifar10.yml, losses/losses.py; claims.md section 2):

1. **Pretext** (stage ``simclr_pretext``, shared with SimCLR + k-means and SPICE): SimCLR, 500 epochs.
2. **Mine neighbours** (stage ``neighbours``): top-20 of every train image by cosine similarity of the
   L2-normalised 128-d pretext features, the image itself included (``topk + 1``); top-5 on the eval split.
3. **SCAN step** (stage ``scan_clustering``, built once per seed for both variants): the pretext backbone +
   linear cluster heads; every anchor is paired with a neighbour drawn
   uniformly from its 21 (itself included), both strongly augmented (flip, crop, 4 random RandAugment ops,
   Cutout: :mod:`methods.augment.strong`), each through the network in its own forward pass; loss per
   head = -mean log <p(anchor), p(neighbour)> - 5 x H(mean p(anchor)) (:func:`scan_loss`), summed over the heads;
   the whole network is updated (``update_cluster_head_only: False``); Adam lr 1e-4, wd 1e-4, constant,
   50 epochs (CIFAR-10; 100 for CIFAR-100-20 and STL-10), batch 128 (CIFAR-100-20: 512), drop_last.
   After each epoch every head is scored on the eval images without labels (consistency over the mined top-5
   eval neighbours minus the entropy, weight 1: ``scan_evaluate``); the (epoch, head) with the lowest score is
   kept (``scan_model``).
4. **Self-labelling** (variant ``default``; ``scan_only`` stops after step 3): the kept model with its selected
   head; per batch of 1000, targets = predictions on the un-augmented images (network in train mode, no
   gradient, as the official) where the top probability > 0.99, cross-entropy on a strongly augmented view
   with class-balancing weights (:func:`confidence_ce`), Adam lr 1e-4, wd 1e-4, 200 epochs (STL-10: 100), no
   EMA; the final epoch's model gives the labels.

Protocol: train split for every step, eval (test) split for the selection score and the reported labels.

Deviations (each also at its default): ``num_heads`` 10 with the lowest-loss head kept, as the issue's recipe
and SCAN's ImageNet configs; SCAN's CIFAR/STL configs train one head (``num_heads: 1`` restores that). Strong
augmentation in float without uint8 rounding between ops (op-by-op equal to PIL within one grey level, tests).
bf16 autocast on a GPU (``precision: fp32`` for the official arithmetic). STL-10 uses the CIFAR stem (SCAN's
``resnet_stl`` adds a max-pool). Both training steps run on the epoch engine (methods/engine): the SCAN step
checkpoints every ``CHECKPOINT_EVERY`` epochs in its stage's partial folder, self-labelling every
``SELFLABEL_CHECKPOINT_EVERY`` in the trial's, and a killed trial run again resumes there; the pretext stage resumes
from its own.
A batch without any confident sample gives a zero self-labelling loss (the official raises).

GPU figures (one H200), the shared-pretext run and the extrapolation to the paper schedule: bench/perf/NOTES_scan.md;
the SCAN epoch's profile, its fix (no host sync in a step, compiled strong augmentation, all heads' loss at once) and
the plan for the paper schedule across device commands: reports/scan_spice_cifar10_short/NOTES.md.
"""

from __future__ import annotations

import torch
from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from bench.stages import StageRequest
from methods.augment.gpu import NORMALIZATION, resize_eval
from methods.engine import CheckpointHook, CurveLogHook, Engine, EngineConfig, EvalHook, Hook, autocast, conv_layout
from methods.losses import confidence_ce
from methods.nn.heads import MultiHeadClassifier
from methods.stages.neighbours import MineNeighbours
from methods.stages.scan_clustering import (  # noqa: F401 - scan_step: re-exported for bench/perf and tests
    ScanClustering,
    continue_streams,
    head_probs,
    load_clustering,
    scan_step,
    strong_view,
)
from methods.stages.simclr_pretext import PretextFields

_STEP = ScanClustering.Config()  # the paper defaults of the SCAN step


@register_method
class SCAN(ClusteringMethod):
    name = "scan"
    label = "SCAN"
    paper = "Van Gansbeke et al., SCAN: Learning to Classify Images without Labels, ECCV 2020"
    selection_rule = ("SCAN step: the (epoch, head) with the lowest SCAN loss (consistency - entropy) on the eval "
                      "images and their mined neighbours, no labels (official scan_evaluate); self-labelling: final "
                      "epoch")
    train_split = "train"
    eval_split = "test"
    gpu_share = 1.0
    variants = {"default": {}, "scan_only": {"selflabel": False}}
    dataset_defaults = {
        "cifar100-20": {"normalization": "cifar20", "scan_epochs": 100, "scan_batch_size": 512},
        "stl10": {"image_size": 96, "normalization": "imagenet", "scan_epochs": 100, "cutout": 32,
                  "selflabel_epochs": 100},
    }

    class Config(PretextFields):
        n_neighbors: int = Field(20, ge=1, description="SCAN: num_neighbors 20 (+ the image itself)")
        # the SCAN step (stage scan_clustering): its defaults, sources and deviations live in the stage's Config
        eval_neighbors: int = Field(_STEP.eval_neighbors, ge=1)
        num_heads: int = Field(_STEP.num_heads, ge=1)
        entropy_weight: float = Field(_STEP.entropy_weight, ge=0)
        scan_epochs: int = Field(_STEP.epochs, ge=1)
        scan_batch_size: int = Field(_STEP.batch_size, ge=2)
        scan_lr: float = Field(_STEP.lr, gt=0)
        scan_weight_decay: float = Field(_STEP.weight_decay, ge=0)
        update_cluster_head_only: bool = _STEP.update_cluster_head_only
        strong_ops: int = Field(_STEP.strong_ops, ge=0)
        cutout: int = Field(_STEP.cutout, ge=0)
        selflabel: bool = Field(True, description="run the self-labelling step (variant scan_only: False)")
        selflabel_epochs: int = Field(200, ge=1)
        selflabel_batch_size: int = Field(1000, ge=2)
        selflabel_lr: float = Field(1e-4, gt=0)
        selflabel_weight_decay: float = Field(1e-4, ge=0)
        confidence_threshold: float = Field(0.99, gt=0, lt=1)
        class_balancing: bool = True

    @classmethod
    def protocol_fields(cls, config):
        return {"image_size": config.image_size, "stem": config.stem, "backbone": config.backbone,
                "epochs": config.pretext_epochs, "scan_epochs": config.scan_epochs,
                "selflabel_epochs": config.selflabel_epochs * config.selflabel, "batch_size": config.scan_batch_size}

    @classmethod
    def stages(cls, cfg: SCAN.Config) -> dict[str, StageRequest]:
        pretext = cfg.pretext_request()
        nbrs = StageRequest("neighbours", MineNeighbours.Config(k=cfg.n_neighbors, eval_k=cfg.eval_neighbors),
                            upstream={"pretext": pretext})
        step = StageRequest("scan_clustering", ScanClustering.Config(
            image_size=cfg.image_size, normalization=cfg.normalization, precision=cfg.precision,
            eval_batch_size=cfg.eval_batch_size, eval_neighbors=cfg.eval_neighbors, num_heads=cfg.num_heads,
            entropy_weight=cfg.entropy_weight, epochs=cfg.scan_epochs, batch_size=cfg.scan_batch_size,
            lr=cfg.scan_lr, weight_decay=cfg.scan_weight_decay, update_cluster_head_only=cfg.update_cluster_head_only,
            strong_ops=cfg.strong_ops, cutout=cfg.cutout), upstream={"pretext": pretext, "neighbours": nbrs})
        return {"pretext": pretext, "neighbours": nbrs, "clustering": step}

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        # the SCAN step is the shared stage scan_clustering: built once per seed for scan_only and default
        art = ctx.stage("clustering")
        # read (sha256-checked) so that every record names the whole chain its labels come from
        pre, nb = ctx.stage("pretext"), ctx.stage("neighbours")
        net = load_clustering(art, dev)
        mean, std = NORMALIZATION[cfg.normalization]

        def prep(xb: torch.Tensor) -> torch.Tensor:
            return conv_layout(resize_eval(xb, cfg.image_size, mean, std), dev)

        info = {"scan_best_epoch": art["best_epoch"], "scan_best_head": art["best_head"],
                "scan_select_loss": art["select_loss"], "neighbours_k": int(nb["k"])}

        # -- self-labelling --------------------------------------------------------------------------------------
        if cfg.selflabel:
            labels = self._selflabel(net, data, prep, art, ctx)
        else:
            labels = head_probs(net, data.x_eval, prep, cfg, dev)[0].argmax(1)
            ctx.log_epoch(cfg.scan_epochs, phase="selected", eval_pred=labels)
        info.update(selflabel_epochs=cfg.selflabel_epochs * cfg.selflabel, pretext_epochs_run=len(pre["epoch_s"]))
        return ClusterOutput(labels=labels, info=info)

    def _selflabel(self, net: MultiHeadClassifier, data: ClusteringData, prep, art: dict, ctx: TrialContext):
        """Self-labelling of the kept SCAN model on the engine (:func:`selflabel_step`, Adam, final epoch's labels),
        resumable from the trial's checkpoint. The SCAN step's random streams go on where it left them (as one
        process running both steps would)."""
        cfg = self.config
        dev = ctx.device
        g_batch, g_aug, _ = continue_streams(art, ctx, dev)
        view = strong_view(cfg, g_aug, dev)
        x_train = data.x_train.to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.selflabel_lr, weight_decay=cfg.selflabel_weight_decay)
        # harness knobs: not fields of SCAN's config (they would change its trial key); the checkpoint resumes only
        # a run of the same config
        knobs = EngineConfig(eval_every=10, checkpoint_every=min(SELFLABEL_CHECKPOINT_EVERY, cfg.selflabel_epochs),
                             precision=cfg.precision)
        engine = Engine(ctx, knobs, modules={"net": net}, optimizer=opt,
                        streams={"data_order": g_batch, "augment": g_aug},
                        hooks=[EvalHook(lambda e: head_probs(net, data.x_eval, prep, cfg, dev)[0].argmax(1),
                                        knobs.eval_every),
                               ConfidentFraction(),
                               # the curve goes on after the SCAN step's epochs
                               CurveLogHook(epoch_offset=cfg.scan_epochs, phase="selflabel"),
                               CheckpointHook(knobs.checkpoint_every, fingerprint=cfg.model_dump(mode="json"))])
        engine.add_pass("train", x_train.shape[0], lambda idx: selflabel_step(net, x_train[idx], prep, view, cfg),
                        cfg.selflabel_batch_size)
        engine.run(cfg.selflabel_epochs)
        return engine.hook(EvalHook).pred


#: epochs between self-labelling checkpoints (a harness knob): a CIFAR-10 epoch takes ~2 s on an H200
#: (bench/perf/NOTES_scan.md), a checkpoint (network, Adam) ~135 MB
SELFLABEL_CHECKPOINT_EVERY = 25


class ConfidentFraction(Hook):
    """Logs ``confident_frac``: the epoch's share of samples whose target passed the confidence threshold (the steps'
    ``confident`` counts, summed on the device)."""

    def before_epoch(self, engine: Engine) -> None:
        self.confident, self.seen = torch.zeros((), device=engine.device), 0

    def after_step(self, engine: Engine, idx: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        self.confident += outputs["confident"]
        self.seen += idx.numel()

    def after_epoch(self, engine: Engine) -> None:
        engine.log["confident_frac"] = self.confident / max(1, self.seen)


# The engine's self-labelling step, shared with bench/perf/scan_epoch.py. It waits for nothing on the GPU (no
# .item(), no boolean indexing, no host-to-device copy).
def selflabel_step(net: MultiHeadClassifier, xb: torch.Tensor, prep, view, cfg: SCAN.Config) -> dict[str, torch.Tensor]:
    """Self-labelling's loss on a uint8 batch: targets from the un-augmented images (train mode, no gradient, as the
    official), confidence-masked class-balanced CE on a strong view (``loss``, back-propagated by the engine before
    its Adam step); ``confident``: how many samples had a target."""
    dev = xb.device
    with torch.no_grad(), autocast(dev, cfg.precision):  # official: train mode, no gradient
        weak = net(prep(xb))[:, 0]
    with autocast(dev, cfg.precision):
        strong_logits = net(view(xb))[:, 0]
    loss, n_conf = confidence_ce(weak.float(), strong_logits.float(), cfg.confidence_threshold, cfg.class_balancing)
    return {"loss": loss, "confident": n_conf}

"""ISL: Instance Similarity Learning for Unsupervised Feature Representation (Wang, Wang, Wu, Lu & Zhou,
ICCV 2021, arXiv 2108.02721).

The algorithm, as the official ZiweiWangTHU/ISL ``small_main.py`` and ``lib/LinearAverage.py`` run it on
CIFAR (facts, not code; claims.md §11): ``rounds`` = 4 rounds, each of three stages.

1. **Backbone** (``backbone_epochs`` = 200): instance discrimination against a memory bank of all n
   training features (tau = 0.1, memory momentum 0.5), where an image with mined neighbours is pulled
   towards its whole neighbourhood: L = -log sum_{j in A(i)} p_ij with A(i) = {i} + neighbours
   (L_inst when A(i) = {i}, L_aff otherwise), plus hp_loss_weight = 0.5 x KL(p_i || p_hp), p_hp the
   softmax over the memory of the *hard positive* (the neighbour most similar to i in the memory);
   summed over the batch and divided by the batch size (:func:`methods.losses.isl_loss`).
2. **GAN** (at most ``gan_epochs`` = 200, stopped by the official ``stop_train_GAN`` rule on the generator
   loss): with the backbone frozen (eval mode), a triplet (a, p, n) = (feature of the augmented image, its
   memory entry, the most similar of 4,096 sampled non-neighbours). The generator G (MLP 384-256-128-128,
   LeakyReLU, L2-normalised output) makes a proxy positive p'; the discriminator D (MLP 384-128-64-1,
   sigmoid) learns (a, p, n) -> 1, (a, p, p') and (a, p', n) -> 0 (each fake weighted 1/2, D's loss
   halved), G learns to make D say 1 on both fakes. Adam lr 1e-4 for both.
3. **Mining** (at most ``mining_epochs`` = 200, stopped once the mined pairs exceed
   (round + 1) x ``per_round_affinity`` = 0.5 per image): for each image, p' from G; when D(a, p', n) = s
   > 0.5, the ``topk`` = 10 memory entries most similar to p' with cosine > r = R + (1 - s)(1 - R),
   R = 0.6, become neighbours of the image (both ways).

SGD lr 0.03, momentum 0.9, weight decay 5e-4, batch 128; augmentation RandomResizedCrop(32, 0.2-1),
ColorJitter(0.4, 0.4, 0.4, 0.4) always, grayscale 0.2, **no flip**, CIFAR-10 normalisation (SCAN's std).

Choices (the paper evaluates with a weighted kNN classifier; ISL has no clustering output), each also
commented at its default:

* Clusters: k-means (``kmeans_n_init`` = 20 restarts) with K = number of classes on the final memory
  bank, as for IDFD. Not the paper's protocol; labels never enter.
* Learning rate: the official ``ReduceLROnPlateau(mode="max", patience=1, factor=0.8)`` is stepped on the
  weighted-kNN *test accuracy* every 5 backbone epochs, i.e. on labels. Here it is stepped on the mean
  backbone loss of those 5 epochs (mode "min"), label-free.
* Train split only (50,000 images for CIFAR-10), as the official code; evaluated on the same images.
* ResNet-18 with the CIFAR stem from methods/nn/backbones.py (the official ``cifar_resnet18`` is the
  same layout), fc -> 128, L2-normalised.
* Every epoch of any stage is one epoch of :class:`methods.engine.Engine` (one curve row, numbered across
  rounds and stages); :class:`Rounds` decides which stage's pass runs and when a stage ends, and saves the
  round, the stage, the mined neighbours, the GAN's optimizers and the plateau rule with the checkpoint, so a
  killed or time-budgeted (``max_minutes``) trial resumes after its last checkpointed epoch.
* Not run on a GPU yet: no epoch time or extrapolation measured (the official README: ~4 days on one V100
  for ImageNet).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.augment.gpu import NORMALIZATION, AugmentSpec, GPUAugment, resize_eval
from methods.cluster.kmeans import kmeans
from methods.engine import Engine, EngineConfig, Hook, MemoryBankHook, autocast, eval_pass, prepare_training
from methods.losses import isl_loss
from methods.nn.heads import NormalizedEmbeddingNet


class Generator(torch.nn.Module):
    """(a, p, n) -> proxy positive p' (official models/GAN.py: 3d -> 2d -> d -> d, LeakyReLU, L2-normalised)."""

    def __init__(self, d: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3 * d, 2 * d), torch.nn.LeakyReLU(),
                                       torch.nn.Linear(2 * d, d), torch.nn.LeakyReLU(), torch.nn.Linear(d, d))

    def forward(self, triplet: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(triplet), dim=1)


class Discriminator(torch.nn.Module):
    """Triplet -> probability that it is real (official: 3d -> d -> d/2 -> 1, LeakyReLU, sigmoid)."""

    def __init__(self, d: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3 * d, d), torch.nn.LeakyReLU(),
                                       torch.nn.Linear(d, d // 2), torch.nn.LeakyReLU(), torch.nn.Linear(d // 2, 1))

    def forward(self, triplet: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(triplet).squeeze(-1))


class Affinity:
    """Each image's mined neighbours (official ``affinity_mat``: a set per image, itself included), symmetric."""

    def __init__(self, n: int):
        self.sets: list[set[int]] = [{i} for i in range(n)]

    def add(self, anchors: list[int], found: list[list[int]]) -> None:
        for a, js in zip(anchors, found, strict=True):
            for j in js:
                self.sets[a].add(j)
                self.sets[j].add(a)

    def pairs(self) -> int:
        """The official ``cal_aff_num``: neighbours summed over images (each pair counted twice)."""
        return sum(len(s) - 1 for s in self.sets)

    def mask(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """[B, n] bool: A(i) (itself and its neighbours) of each image of the batch."""
        rows, cols = [], []
        for r, i in enumerate(idx.tolist()):
            js = self.sets[i]
            rows.extend([r] * len(js))
            cols.extend(js)
        m = torch.zeros(idx.shape[0], n, dtype=torch.bool, device=idx.device)
        m[torch.tensor(rows, device=idx.device), torch.tensor(cols, device=idx.device)] = True
        return m


def hard_positives(memory: torch.Tensor, idx: torch.Tensor, aff: torch.Tensor) -> torch.Tensor:
    """For each row with neighbours: the neighbour (self excluded) whose memory entry is most similar to its own
    (official ``hard_pos_loss``); -1 for rows without neighbours. ``aff``: [B, n] from :meth:`Affinity.mask`."""
    sim = memory.index_select(0, idx) @ memory.t()  # [B, n]
    others = aff.clone()
    others[torch.arange(idx.shape[0], device=idx.device), idx] = False
    sim = sim.masked_fill(~others, float("-inf"))
    best = sim.argmax(1)
    return torch.where(others.any(1), best, torch.full_like(best, -1))


def stop_train_gan(losses: list[float], is_round0: bool) -> bool:
    """The official ``stop_train_GAN`` on the generator's per-epoch losses."""
    if is_round0 and len(losses) < 10:  # round 0 trains longer
        return False
    low = min(losses)
    if low > 1.0 or (is_round0 and losses[-1] > 1.0):  # "G converges to a loss < 1"
        return False
    if min(losses[-3:]) == losses[-1]:  # still decreasing
        return False
    return low not in losses[-3:]


@register_method
class ISL(ClusteringMethod):
    name = "isl"
    label = "ISL"
    paper = "Wang, Wang, Wu, Lu & Zhou, Instance Similarity Learning for Unsupervised Feature Representation, " \
            "ICCV 2021"
    selection_rule = "after the last round; k-means (lowest inertia of n_init) with K = number of classes on the " \
                     "memory bank (the paper evaluates by kNN: this clustering is the harness's choice)"
    train_split = "train"  # official: CIFAR train split only
    eval_split = "train"
    gpu_share = 1.0

    class Config(EngineConfig):
        backbone: Literal["resnet18", "resnet34", "tiny_cnn"] = "resnet18"  # tiny_cnn: CPU tests only
        stem: Literal["imagenet", "cifar"] = "cifar"
        image_size: int = Field(32, ge=8)
        feature_dim: int = Field(128, ge=2, description="official --low-dim")
        temperature: float = Field(0.1, gt=0, description="official --nce-t")
        memory_momentum: float = Field(0.5, ge=0, lt=1, description="official --nce-m")
        hard_positive_weight: float = Field(0.5, ge=0, description="official --hp_loss_weight")
        sample_negatives: int = Field(4096, ge=1, description="official --sample_neg")
        pos_score_threshold: float = Field(0.5, ge=0, le=1, description="D score above which p' mines neighbours")
        affinity_radius: float = Field(0.6, ge=-1, le=1, description="official --pos_aff_threshold (R)")
        per_round_affinity: float = Field(0.5, gt=0, description="mining stops above (round+1) x this pairs/image")
        topk: int = Field(10, ge=1, description="candidates per proxy positive (official --topk)")
        rounds: int = Field(4, ge=1)
        backbone_epochs: int = Field(200, ge=1)
        gan_epochs: int = Field(200, ge=1)
        mining_epochs: int = Field(200, ge=1)
        batch_size: int = Field(128, ge=2)
        lr: float = Field(0.03, gt=0)
        momentum: float = Field(0.9, ge=0)
        weight_decay: float = Field(5e-4, ge=0)
        # Deviation: the official plateau rule is stepped on kNN *test accuracy* (labels); here on the loss
        plateau_every: int = Field(5, ge=1, description="backbone epochs between plateau checks (official eval "
                                                        "interval)")
        plateau_factor: float = Field(0.8, gt=0, lt=1)
        plateau_patience: int = Field(1, ge=0)
        gan_lr: float = Field(1e-4, gt=0)
        kmeans_n_init: int = Field(20, ge=1)

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        with ctx.init_rng("init"):
            net = NormalizedEmbeddingNet(cfg.backbone, cfg.stem, data.x_train.shape[1], cfg.feature_dim)
            gen_net, disc = Generator(cfg.feature_dim), Discriminator(cfg.feature_dim)
            stdv = 1.0 / (cfg.feature_dim / 3.0) ** 0.5  # official LinearAverage init, U(-stdv, stdv)
            memory = torch.rand(data.x_train.shape[0], cfg.feature_dim) * (2 * stdv) - stdv
        x_train, net = prepare_training(data.x_train, net, dev)
        gen_net, disc, memory = gen_net.to(dev), disc.to(dev), memory.to(dev)
        n = x_train.shape[0]
        mean, std = NORMALIZATION["cifar10"]
        augment = GPUAugment(AugmentSpec(size=cfg.image_size, crop_scale=(0.2, 1.0), flip_p=0.0,
                                         jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, grayscale_p=0.2, mean=mean,
                                         std=std), channels_last=dev.type == "cuda")
        g_aug, g_neg = ctx.rng("augment"), ctx.rng("negatives")
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        rounds = Rounds(cfg, n, opt, torch.optim.Adam(gen_net.parameters(), lr=cfg.gan_lr),
                        torch.optim.Adam(disc.parameters(), lr=cfg.gan_lr))
        aff = rounds.affinity

        def view(idx: torch.Tensor) -> torch.Tensor:
            return augment(x_train.index_select(0, idx), generator=g_aug)

        def backbone_step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            """1. Instance / affinity discrimination against the memory bank + the hard-positive KL term."""
            v = view(idx)
            with autocast(dev, cfg.precision):
                f = net(v)
            f = F.normalize(f.float(), dim=1)
            mask = aff.mask(idx, n)
            hp = hard_positives(memory, idx, mask)
            loss, (l_inst, l_aff, l_hp) = isl_loss(f, memory, idx, mask, hp, cfg.temperature,
                                                    cfg.hard_positive_weight)
            return {"loss": loss, "loss_inst": l_inst, "loss_aff": l_aff, "loss_hp": l_hp, "features": f}

        def gan_step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            """2. One discriminator step, then one generator step, on triplets of the frozen backbone."""
            a, p, neg = self._triplet(net, view(idx), idx, memory, aff, g_neg, dev)
            real = torch.cat([a, p, neg], 1)
            fake_p = gen_net(real)
            ones, zeros = torch.ones(idx.shape[0], device=dev), torch.zeros(idx.shape[0], device=dev)
            d_loss = (F.binary_cross_entropy(disc(real), ones)
                      + 0.5 * F.binary_cross_entropy(disc(torch.cat([a, p, fake_p.detach()], 1)), zeros)
                      + 0.5 * F.binary_cross_entropy(disc(torch.cat([a, fake_p.detach(), neg], 1)), zeros)) / 2
            rounds.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            rounds.opt_d.step()
            g_loss = (0.5 * F.binary_cross_entropy(disc(torch.cat([a, p, fake_p], 1)), ones)
                      + 0.5 * F.binary_cross_entropy(disc(torch.cat([a, fake_p, neg], 1)), ones))
            rounds.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            rounds.opt_g.step()
            return {"loss_d": d_loss.detach(), "loss_g": g_loss.detach()}

        @torch.no_grad()
        def mining_step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            """3. Confident proxy positives add their close memory entries as neighbours."""
            a, p, neg = self._triplet(net, view(idx), idx, memory, aff, g_neg, dev)
            fake_p = gen_net(torch.cat([a, p, neg], 1))
            self._mine(idx, fake_p, disc(torch.cat([a, fake_p, neg], 1)), memory, aff)
            return {}

        engine = Engine(ctx, cfg, modules={"net": net, "generator": gen_net, "discriminator": disc}, optimizer=opt,
                        streams={"augment": g_aug, "negatives": g_neg},
                        hooks=[rounds, MemoryBankHook(memory, cfg.memory_momentum)])
        # official DataLoader: shuffle, drop_last=False; one of the three passes per epoch, as Rounds says
        engine.add_pass("backbone", n, backbone_step, cfg.batch_size, drop_last=False,
                        active=lambda: rounds.stage == "backbone")
        engine.add_pass("gan", n, gan_step, cfg.batch_size, drop_last=False, active=lambda: rounds.stage == "gan",
                        train=False, optimize=False)
        engine.add_pass("mining", n, mining_step, cfg.batch_size, drop_last=False,
                        active=lambda: rounds.stage == "mining", train=False, optimize=False)
        engine.run(cfg.rounds * (cfg.backbone_epochs + cfg.gan_epochs + cfg.mining_epochs))  # Rounds stops it
        km = kmeans(memory, data.n_clusters, n_init=cfg.kmeans_n_init, generator=ctx.rng("kmeans"))
        labels = km.labels
        if not data.same_split:
            net.eval()
            f = eval_pass(net, data.x_eval, lambda xb: resize_eval(xb, cfg.image_size, mean, std),
                          cfg.eval_batch_size, dev, cfg.precision)
            labels = torch.cdist(F.normalize(f, dim=1), km.centers).argmin(1)
        return ClusterOutput(labels=labels, info={**engine.info(), **rounds.epochs,
                                                  "pairs_per_image": aff.pairs() / n})

    @torch.no_grad()
    def _triplet(self, net, v, idx, memory, aff: Affinity, gen: torch.Generator, dev):
        """(anchor feature, its memory entry, the most similar of ``sample_negatives`` non-neighbours)."""
        cfg = self.config
        with autocast(dev, cfg.precision):
            a = net(v)
        a = F.normalize(a.float(), dim=1)
        n = memory.shape[0]
        cand = torch.randint(n, (idx.shape[0], cfg.sample_negatives), generator=gen, device=gen.device).to(dev)
        mask = aff.mask(idx, n)
        bad = mask.gather(1, cand)  # a neighbour (or the image itself) is redrawn, as the official loop does
        while bool(bad.any()):
            cand[bad] = torch.randint(n, (int(bad.sum()),), generator=gen, device=gen.device).to(dev)
            bad = mask.gather(1, cand)
        negs = memory[cand]  # [B, S, d]
        hardest = torch.einsum("bsd,bd->bs", negs, a).argmax(1)
        return a, memory.index_select(0, idx), negs[torch.arange(idx.shape[0], device=dev), hardest]

    def _mine(self, idx, fake_p, score, memory, aff: Affinity) -> None:
        """Official ``mine_affinity`` + ``add_affinity``: confident proxies add their close memory entries."""
        cfg = self.config
        keep = score > cfg.pos_score_threshold
        if not bool(keep.any()):
            return
        r = cfg.affinity_radius + (1.0 - score) * (1.0 - cfg.affinity_radius)
        sim = fake_p[keep] @ memory.t()
        anchors = idx[keep]
        sim[torch.arange(anchors.shape[0], device=sim.device), anchors] = -1.0  # never itself
        top_sim, top_idx = sim.topk(min(cfg.topk, sim.shape[1]), dim=1)
        ok = top_sim > r[keep][:, None]
        found = [top_idx[i][ok[i]].tolist() for i in range(anchors.shape[0])]
        aff.add(anchors.tolist(), found)


class Rounds(Hook):
    """ISL's schedule on the engine: ``rounds`` x (backbone epochs, GAN epochs until ``stop_train_gan``, mining
    epochs until enough pairs), one engine epoch each. ``stage`` says which pass runs; after each epoch it logs
    the stage's row fields, steps the plateau rule (backbone), decides whether the stage ends, and stops the engine
    after the last round's mining. Its state (and the mined neighbours, the GAN optimizers, the plateau rule)
    goes into the checkpoint."""

    def __init__(self, cfg: ISL.Config, n: int, opt: torch.optim.Optimizer, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer):
        self.cfg, self.n, self.opt, self.opt_g, self.opt_d = cfg, n, opt, opt_g, opt_d
        # Deviation: the official plateau rule is stepped on kNN *test accuracy* (labels); here on the loss
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.plateau_factor,
                                                                  patience=cfg.plateau_patience)
        self.affinity = Affinity(n)
        self.round, self.stage, self.in_stage = 0, "backbone", 0
        self.window: list[float] = []    # backbone losses since the last plateau check
        self.g_losses: list[float] = []  # this round's generator losses per GAN epoch
        self.epochs = {"backbone_epochs": 0, "gan_epochs": 0, "mining_epochs": 0}

    def before_epoch(self, engine: Engine) -> None:
        engine.log.update(stage=self.stage, round=self.round + 1)

    def after_epoch(self, engine: Engine) -> None:
        cfg, log = self.cfg, engine.log
        self.in_stage += 1
        self.epochs[f"{self.stage}_epochs"] += 1
        done = False
        if self.stage == "backbone":
            self.window.append(float(log["loss"]))
            if len(self.window) == cfg.plateau_every:
                self.plateau.step(sum(self.window) / len(self.window))
                self.window = []
            log["lr"] = self.opt.param_groups[0]["lr"]
            done = self.in_stage == cfg.backbone_epochs
        elif self.stage == "gan":
            self.g_losses.append(float(log["loss_g"]))
            done = self.in_stage == cfg.gan_epochs or stop_train_gan(self.g_losses, is_round0=self.round == 0)
        else:
            pairs = self.affinity.pairs() / self.n
            log["pairs_per_image"] = pairs
            done = self.in_stage == cfg.mining_epochs or pairs > (self.round + 1) * cfg.per_round_affinity
        if done:
            self.in_stage = 0
            if self.stage == "backbone":
                self.stage, self.window, self.g_losses = "gan", [], []
            elif self.stage == "gan":
                self.stage = "mining"
            else:
                self.round, self.stage = self.round + 1, "backbone"
                engine.stop = self.round == cfg.rounds

    def state_dict(self) -> dict:
        return {"round": self.round, "stage": self.stage, "in_stage": self.in_stage, "window": list(self.window),
                "g_losses": list(self.g_losses), "epochs": dict(self.epochs), "plateau": self.plateau.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "affinity": [sorted(s) for s in self.affinity.sets]}

    def load_state_dict(self, state: dict) -> None:
        self.round, self.stage, self.in_stage = int(state["round"]), state["stage"], int(state["in_stage"])
        self.window, self.g_losses, self.epochs = list(state["window"]), list(state["g_losses"]), dict(state["epochs"])
        self.plateau.load_state_dict(state["plateau"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.affinity.sets = [set(s) for s in state["affinity"]]


__all__ = ["ISL", "Affinity", "Rounds", "hard_positives", "stop_train_gan"]

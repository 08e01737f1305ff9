"""DEPICT: Deep Embedded Regularized Clustering (Ghasedi Dizaji, Herandi, Deng, Cai & Huang, ICCV 2017).

Recipe from the official code (herandy/DEPICT, DEPICT.py + functions.py, Theano/Lasagne):

* Convolutional autoencoder with a noisy and a clean encoder path. Encoder: dropout 0.1 on the
  input -> Conv(50, k4, s2, p0) -> LeakyReLU(0.01) -> dropout 0.1 -> Conv(50, k5, s2, p2) ->
  LeakyReLU -> dropout 0.0 -> Dense(K, tanh): the embedding has as many units as clusters.
  Decoder mirrors it: Dense(LeakyReLU) -> Deconv(50, k5, s2, crop 2) -> LeakyReLU ->
  Deconv(C, k4, s2, crop 0) -> tanh. Glorot-uniform weights, zero biases. Pixels scaled to [-1, 1].
* Reconstruction loss (noisy path): pixel MSE + 0.1 x MSE of each decoder layer against the clean
  encoder layer it mirrors (the layer-wise terms; clustering and reconstruction are weighted 1:1).
* Stage 1, autoencoder: Adam lr 1e-4, batch 100, up to 4,000 epochs on a 90% split, early stop
  after 100 epochs without a better clean reconstruction loss on the held-out 10%, keep the best.
* Dropout masks: every loss term draws its own noisy encoder pass (the official code calls
  ``get_output`` once per term, and each call samples new masks): the pixel reconstruction, each
  layer-wise term and the clustering cross-entropy see differently corrupted inputs.
* Initial labels, per dataset as the official ``functions.clustering``: k-means (k-means++, 40
  restarts) on the clean embedding for MNIST-full (and FRGC, YTF, CMU-PIE), AC-PIC
  (methods.cluster.acpic) for every other dataset, USPS among them. The softmax head is initialised
  with the L2-normalised centroids (k-means centres, or the AC-PIC clusters' means; bias 0) and
  pre-fitted with cross-entropy to those labels plus reconstruction (fresh Adam 1e-4, <= 1,000
  epochs, stop after 5 epochs without a better NMI between the held-out predictions and their
  initial labels; label-free), keeping the best.
* Stage 2, joint training: loss = CE(soft target, noisy prediction) + reconstruction, fresh Adam
  1e-4, batch 100, on all images. The target of each image is its clean prediction q refreshed right
  after its minibatch step, normalised once per epoch by the cluster-frequency prior
  (q^2 / sum_i q, rows re-normalised: DEPICT's KL(Q || P~) with the balance term). Training stops
  when the targets change by a mean squared difference < 1e-7 between epochs, or at 4,000 epochs.
* Reported assignment: argmax of the clean head when training stops (no label is looked at).

Deviations are written next to the defaults they change.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from bench.errors import BenchError
from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, MethodConfig, TrialContext
from bench.registry import register_method
from bench.stages import StageRequest
from methods.cluster.acpic import acpic
from methods.cluster.kmeans import kmeans
from methods.engine import (
    CheckpointHook,
    CurveLogHook,
    EarlyStopHook,
    Engine,
    EngineConfig,
    MetricHook,
    TargetUpdateHook,
)
from methods.engine.steps import GraphedStep, adam, matmul_tf32


def _deconv_output_padding(n_out: int, n_in: int, k: int, s: int, p: int) -> int:
    op = n_out - ((n_in - 1) * s - 2 * p + k)
    if not 0 <= op < s:
        raise BenchError(f"depict: kernel {k}/stride {s}/padding {p} cannot map a {n_in}-pixel map back to {n_out} "
                         "pixels; set kernel_sizes/paddings for this image size")
    return op


class DepictAutoencoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], n_clusters: int, filters: list[int], kernels: list[int],
                 strides: list[int], paddings: list[int], dropouts: list[float], leak: float = 0.01):
        super().__init__()
        c, h, w = image_shape
        self.dropouts, self.leak = list(dropouts), leak
        self.conv1 = nn.Conv2d(c, filters[0], kernels[0], strides[0], paddings[0])
        self.conv2 = nn.Conv2d(filters[0], filters[1], kernels[1], strides[1], paddings[1])
        h1, w1 = [(n + 2 * paddings[0] - kernels[0]) // strides[0] + 1 for n in (h, w)]
        h2, w2 = [(n + 2 * paddings[1] - kernels[1]) // strides[1] + 1 for n in (h1, w1)]
        if min(h1, w1, h2, w2) < 1:
            raise BenchError(f"depict: images of {h}x{w} pixels are too small for kernels {kernels}")
        self.code_shape = (filters[1], h2, w2)
        flat = filters[1] * h2 * w2
        self.enc_fc = nn.Linear(flat, n_clusters)
        self.dec_fc = nn.Linear(n_clusters, flat)
        self.deconv1 = nn.ConvTranspose2d(filters[1], filters[0], kernels[1], strides[1], paddings[1],
                                          output_padding=_deconv_output_padding(h1, h2, kernels[1], strides[1],
                                                                                paddings[1]))
        self.deconv0 = nn.ConvTranspose2d(filters[0], c, kernels[0], strides[0], paddings[0],
                                          output_padding=_deconv_output_padding(h, h1, kernels[0], strides[0],
                                                                                paddings[0]))
        self.head = nn.Linear(n_clusters, n_clusters)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)  # Lasagne's GlorotUniform (same fans for conv/deconv)
                nn.init.zeros_(m.bias)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.leak)

    def encode(self, x: torch.Tensor, noisy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d0, d1, d2 = self.dropouts
        h = F.dropout(x, d0, training=noisy)
        e1 = self._act(self.conv1(h))
        e2 = self._act(self.conv2(F.dropout(e1, d1, training=noisy)))
        z = torch.tanh(self.enc_fc(F.dropout(e2, d2, training=noisy).flatten(1)))
        return e1, e2, z

    def decode(self, z: torch.Tensor, upto: int = 0) -> list[torch.Tensor]:
        """[r2, r1, r0] (the decoder's layers, innermost first), stopping at layer ``upto`` (2: r2 only)."""
        out = [self._act(self.dec_fc(z)).view(-1, *self.code_shape)]
        if upto <= 1:
            out.append(self._act(self.deconv1(out[-1])))
        if upto == 0:
            out.append(torch.tanh(self.deconv0(out[-1])))
        return out

    def noisy_losses(self, x: torch.Tensor, hidden_weight: float, masks: str = "per_term",
                     with_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(reconstruction loss of the noisy path, noisy head logits or None).

        The layer-wise targets are the clean encoder's layers; as in the Theano code they are not
        detached (gradients flow into both paths). ``masks="per_term"``: each term runs its own noisy
        encoder pass (own dropout masks), as the official code, whose every term is a separate
        ``lasagne.layers.get_output`` call; ``"shared"``: one noisy pass feeds all terms."""
        e1c, e2c, _ = self.encode(x, noisy=False)
        if masks == "shared":
            z = self.encode(x, noisy=True)[2]
            r2, r1, r0 = self.decode(z)
            rec = F.mse_loss(r0, x) + hidden_weight * (F.mse_loss(r1, e1c) + F.mse_loss(r2, e2c))
            return rec, self.head(z) if with_logits else None
        rec = F.mse_loss(self.decode(self.encode(x, noisy=True)[2])[-1], x)
        if hidden_weight:
            rec = rec + hidden_weight * (F.mse_loss(self.decode(self.encode(x, noisy=True)[2], upto=1)[-1], e1c)
                                         + F.mse_loss(self.decode(self.encode(x, noisy=True)[2], upto=2)[-1], e2c))
        return rec, self.head(self.encode(x, noisy=True)[2]) if with_logits else None

    @torch.no_grad()
    def clean_recon_loss(self, x: torch.Tensor, hidden_weight: float, chunk: int = 10000) -> float:
        tot = 0.0
        for s in range(0, x.shape[0], chunk):
            xb = x[s:s + chunk]
            e1, e2, z = self.encode(xb, noisy=False)
            r2, r1, r0 = self.decode(z)
            loss = F.mse_loss(r0, xb) + hidden_weight * (F.mse_loss(r1, e1) + F.mse_loss(r2, e2))
            tot += float(loss) * xb.shape[0]
        return tot / max(1, x.shape[0])

    @torch.no_grad()
    def clean_embed(self, x: torch.Tensor, chunk: int = 10000) -> torch.Tensor:
        return torch.cat([self.encode(x[s:s + chunk], noisy=False)[2] for s in range(0, x.shape[0], chunk)])

    @torch.no_grad()
    def clean_prob(self, x: torch.Tensor, chunk: int = 10000) -> torch.Tensor:
        return torch.softmax(self.head(self.clean_embed(x, chunk)), -1)


def frequency_normalised(q: torch.Tensor) -> torch.Tensor:
    """DEPICT's target: q_ik^2 / sum_i q_ik, then each row normalised to sum 1."""
    t = q.pow(2) / q.sum(0, keepdim=True)
    return t / t.sum(1, keepdim=True)


def holdout_split(n: int, val_fraction: float, batch_size: int, ctx: TrialContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(val_idx, train_idx) of the seeded held-out split the stage early stops use (stream "depict/holdout")."""
    perm = torch.randperm(n, generator=ctx.rng("depict/holdout", "cpu")).to(ctx.device)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < batch_size:
        raise BenchError(f"depict: {n - n_val} training images are fewer than one batch of {batch_size}; lower "
                         "batch_size")
    return perm[:n_val], perm[n_val:]


def pretrain_cae(data: ClusteringData, cfg: Any, ctx: TrialContext) -> dict[str, Any]:
    """DEPICT's autoencoder stage: the noisy/clean convolutional autoencoder trained on reconstruction (Adam), with
    an early stop on the held-out clean reconstruction loss; returns the best state (``cfg``: DepictCAE.Config)."""
    dev = ctx.device
    x = (data.float01(data.x_train) * 2.0 - 1.0).to(dev)  # official: (x - 127.5) / 127.5
    val_idx, train_idx = holdout_split(x.shape[0], cfg.val_fraction, cfg.batch_size, ctx)
    x_val = x.index_select(0, val_idx)
    gen = ctx.rng("depict_cae/data_order")
    with ctx.init_rng("depict/init"):  # the method builds its model on the same stream: same architecture, same init
        model = DepictAutoencoder(data.image_shape, data.n_clusters, list(cfg.filters), list(cfg.kernel_sizes),
                                  list(cfg.strides), list(cfg.paddings), list(cfg.dropouts), cfg.leak).to(dev)
    use_graph = cfg.cuda_graphs and dev.type == "cuda"
    hw = cfg.hidden_loss_weight
    ae_params = [p for name, p in model.named_parameters() if not name.startswith("head.")]

    def rec_loss(idx: torch.Tensor) -> torch.Tensor:
        return model.noisy_losses(x.index_select(0, idx), hw, cfg.dropout_masks, with_logits=False)[0]

    with matmul_tf32(cfg.tf32):
        step = GraphedStep(rec_loss, adam(ae_params, cfg.lr, dev, capturable=use_graph), cfg.batch_size, dev,
                           use_graph=use_graph)
        best, best_state, since, ep = math.inf, None, 0, 0
        nb = train_idx.numel() // cfg.batch_size
        for ep in range(1, cfg.pretrain_epochs + 1):
            order = train_idx.index_select(0, torch.randperm(train_idx.numel(), generator=gen,
                                                             device=gen.device).to(dev))
            for idx in order[:nb * cfg.batch_size].view(nb, cfg.batch_size):
                step.step(idx)
            train_loss = float(step.mean_loss())
            ctx.check_finite(train_loss, "DEPICT autoencoder loss")
            val = model.clean_recon_loss(x_val, hw)
            ctx.log_epoch(ep, stage="pretrain", loss=train_loss, val_loss=val)
            if cfg.diag_kmeans_every and ep % cfg.diag_kmeans_every == 0:
                probe = kmeans(model.clean_embed(x), data.n_clusters, n_init=10, generator=ctx.rng("depict/probe"))
                ctx.log_epoch(ep, stage="pretrain_kmeans_probe", inertia=probe.inertia, eval_pred=probe.labels)
            since += 1
            if val < best:
                best, since = val, 0
                best_state = {kk: v.detach().clone() for kk, v in model.state_dict().items()}
            if since > cfg.pretrain_patience:
                break
    state = best_state if best_state is not None else model.state_dict()
    return {"state": {kk: v.detach().cpu() for kk, v in state.items()}, "epochs": ep, "best_val": best}


@register_method
class DEPICT(ClusteringMethod):
    name = "depict"
    label = "DEPICT"
    paper = ("Ghasedi Dizaji, Herandi, Deng, Cai & Huang, Deep Clustering via Joint Convolutional Autoencoder "
             "Embedding and Relative Entropy Minimization, ICCV 2017")
    selection_rule = ("clean-path argmax when the targets change by MSE < stop_mse between epochs (else at the "
                      "epoch cap); stage early stops use held-out reconstruction loss and NMI against the initial "
                      "pseudo-labels, never ground truth")
    train_split = "all"
    eval_split = "all"
    gpu_share = 0.2
    # Initial clustering per dataset, as the official functions.clustering: k-means for 'MNIST-full' (and
    # FRGC, YTF, CMU-PIE), AC-PIC for every other dataset (USPS, MNIST-test, ...). Fashion-MNIST and digits
    # have no official setting: Fashion-MNIST (70,000 images, as MNIST-full) keeps k-means; digits
    # (1,797) takes the official rule's AC-PIC.
    dataset_defaults = {"usps": {"init": "acpic"}, "digits": {"init": "acpic"}}
    variants = {"default": {},
                # before 2026-12-02 (records without these keys): k-means everywhere, one noisy pass for all terms
                "kmeans_shared_masks": {"init": "kmeans", "dropout_masks": "shared"}}
    # records made before these keys existed ran with these values (bench.view)
    legacy_config = {"init": "kmeans", "dropout_masks": "shared"}

    class Config(MethodConfig):
        filters: list[int] = Field(default_factory=lambda: [50, 50])
        kernel_sizes: list[int] = Field(default_factory=lambda: [4, 5], description="MNIST/USPS: [4, 5]")
        strides: list[int] = Field(default_factory=lambda: [2, 2])
        paddings: list[int] = Field(default_factory=lambda: [0, 2], description="MNIST/USPS: [0, 2]")
        dropouts: list[float] = Field(default_factory=lambda: [0.1, 0.1, 0.0],
                                      description="noisy path: input, after conv1, after conv2")
        dropout_masks: Literal["per_term", "shared"] = Field(
            "per_term", description="per_term: each loss term its own noisy pass (official); shared: one for all")
        leak: float = Field(0.01, ge=0, description="LeakyReLU slope")
        hidden_loss_weight: float = Field(0.1, ge=0, description="weight of each layer-wise reconstruction term")
        reconstruction_weight: float = Field(1.0, ge=0)
        clustering_weight: float = Field(1.0, ge=0)
        lr: float = Field(1e-4, gt=0, description="Adam, all stages")
        batch_size: int = Field(100, ge=1)
        val_fraction: float = Field(0.1, gt=0, lt=1, description="held-out share for the stage early stops")
        pretrain_epochs: int = Field(4000, ge=0, description="autoencoder stage cap")
        pretrain_patience: int = Field(100, ge=1, description="epochs without a better held-out loss")
        init: Literal["kmeans", "acpic"] = Field("kmeans", description="initial clustering of the embedding "
                                                 "(official: k-means on MNIST-full, AC-PIC elsewhere)")
        init_n_init: int = Field(40, ge=1, description="k-means restarts for the initial labels")
        acpic_neighbours: int = Field(20, ge=1, description="AC-PIC's K-NN graph (official K = 20)")
        acpic_z: float = Field(0.01, gt=0, lt=1, description="AC-PIC's path weight z (official 0.01)")
        init_epochs: int = Field(1000, ge=0, description="head pre-fit cap (CE to the k-means labels)")
        init_patience: int = Field(5, ge=1, description="epochs without a better held-out NMI to the initial labels")
        epochs: int = Field(4000, ge=1, description="joint training cap")
        stop_mse: float = Field(1e-7, ge=0, description="stop when the targets' mean squared change is below this")
        diag_kmeans_every: int = Field(0, ge=0, description="diagnostics only: every this many autoencoder epochs, "
                                       "k-means (10 restarts) on the clean embedding, scored in the learning curve "
                                       "(as the official code's verbose mode); never selects anything; 0 = off")
        cuda_graphs: bool = Field(True, description="capture training steps as CUDA graphs (GPU only; same math)")
        # Deviation: Theano multiplied in full fp32; TF32 tensor cores on the GPU (no effect on a CPU).
        tf32: bool = True
        # Deviation: the official 90/10 split is stratified by the ground-truth classes
        # (train_test_split(..., stratify=y)); labels are not available here, so it is a seeded
        # random split of the same size.

    @classmethod
    def stages(cls, config):
        from methods.stages.depict_cae import DepictCAE

        fields = DepictCAE.Config.model_fields
        return {"cae": StageRequest("depict_cae", DepictCAE.Config(**{k: v for k, v in config.model_dump().items()
                                                                      if k in fields}))}

    @classmethod
    def protocol_fields(cls, config):
        return {"image_size": None, "stem": f"conv{config.filters[0]}-conv{config.filters[1]}-fcK",
                "epochs": config.epochs, "batch_size": config.batch_size,
                "pretrain_epochs": config.pretrain_epochs}

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        with matmul_tf32(cfg.tf32):
            return self._run(data, ctx, cfg, dev)

    # ------------------------------------------------------------------------------------------
    def _run(self, data: ClusteringData, ctx: TrialContext, cfg: DEPICT.Config, dev: torch.device) -> ClusterOutput:
        if len(data.image_shape) != 3:
            raise BenchError(f"depict needs images [N, C, H, W]; dataset {data.dataset} gives {data.image_shape}")
        x = (data.float01(data.x_train) * 2.0 - 1.0).to(dev)  # official: (x - 127.5) / 127.5
        n, k = x.shape[0], data.n_clusters
        gen = ctx.rng("depict/data_order")
        val_idx, train_idx = holdout_split(n, cfg.val_fraction, cfg.batch_size, ctx)
        x_val = x.index_select(0, val_idx)
        masks = cfg.dropout_masks
        with ctx.init_rng("depict/init"):
            model = DepictAutoencoder(data.image_shape, k, cfg.filters, cfg.kernel_sizes, cfg.strides, cfg.paddings,
                                      cfg.dropouts, cfg.leak).to(dev)
        use_graph = cfg.cuda_graphs and dev.type == "cuda"
        hw = cfg.hidden_loss_weight
        info: dict[str, Any] = {}

        def train(name: str, step, pool: torch.Tensor, hooks: list, epochs: int, after=None,
                  keep_checkpoint: bool = False) -> Engine:
            """``epochs`` shuffled passes over ``pool`` (the "depict/data_order" stream, last partial batch dropped),
            each stage with a fresh Adam (as the official code), checkpointed in its own file."""
            opt = adam(list(model.parameters()), cfg.lr, dev, capturable=use_graph)
            checkpoint = CheckpointHook(fingerprint=cfg.model_dump(mode="json"), keep=keep_checkpoint,
                                        checkpointer=ctx.checkpointer(f"depict_{name}"))
            engine = Engine(ctx, EngineConfig(eval_every=0, cuda_graph=cfg.cuda_graphs), modules={"model": model},
                            optimizer=opt, streams={"depict/data_order": gen},
                            hooks=[*hooks, CurveLogHook(stage=name), checkpoint])

            def order() -> torch.Tensor:
                return pool.index_select(0, torch.randperm(pool.numel(), generator=gen, device=gen.device).to(dev))

            engine.add_pass(name, pool.numel(), step, cfg.batch_size, order=order, graph=True, after=after)
            engine.run(epochs)
            return engine

        # ---- stage 1: autoencoder, early stop on held-out clean reconstruction (methods/stages/depict_cae.py) --
        stage = ctx.stage("cae")  # the pretrained autoencoder: built once per (config, data, seed), shared
        model.load_state_dict(stage["state"])
        info.update(pretrain_epochs_run=stage["epochs"], pretrain_best_val_loss=stage["best_val"])

        # ---- initial labels: k-means or AC-PIC on the clean embedding, head from the normalised centroids ----
        z = model.clean_embed(x)
        if cfg.init == "acpic":
            y_init = torch.as_tensor(acpic(z, k, cfg.acpic_neighbours, 1.0, cfg.acpic_z), device=dev)
            centers = torch.zeros(k, z.shape[1], device=dev).index_add_(0, y_init, z)
            centers /= torch.bincount(y_init, minlength=k).clamp_min(1)[:, None]
            # Deviation: the official AC-PIC branch divides the mean matrix by the centroids' norms along the
            # wrong axis and hands it over transposed (it runs only because the embedding has K units); the
            # head starts here from the normalised means, as the official k-means branch does.
            ctx.log_epoch(0, stage="init_acpic", n_clusters=int(torch.unique(y_init).numel()), eval_pred=y_init)
        else:
            km = kmeans(z, k, n_init=cfg.init_n_init, generator=ctx.rng("kmeans_init"))
            centers, y_init = km.centers, km.labels
            # Deviation: the official k-means branch then subtracts 1 from the labels (meant for MATLAB's
            # 1-based AC-PIC output), handing label -1 to the cross-entropy; here the labels stay 0..K-1.
            info["kmeans_init_inertia"] = km.inertia
            ctx.log_epoch(0, stage="init_kmeans", inertia=km.inertia, eval_pred=y_init)
        with torch.no_grad():
            model.head.weight.copy_(centers / centers.norm(dim=1, keepdim=True).clamp_min(1e-12))
            model.head.bias.zero_()

        # ---- head pre-fit: CE to the initial labels + reconstruction, patience on held-out NMI ----
        def init_loss(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            rec, logits = model.noisy_losses(x.index_select(0, idx), hw, masks)
            ce = F.cross_entropy(logits, y_init.index_select(0, idx))
            return {"loss": cfg.reconstruction_weight * rec + cfg.clustering_weight * ce}

        y_init_val = y_init.index_select(0, val_idx).cpu().numpy()

        def val_nmi(engine: Engine) -> float:
            from sklearn.metrics import normalized_mutual_info_score  # here: sklearn costs ~3 s of start-up

            pred = model.clean_prob(x_val).argmax(1).cpu().numpy()
            return float(normalized_mutual_info_score(y_init_val, pred))

        if cfg.init_epochs > 0:
            # stop after more than init_patience epochs without a better NMI than the best so far (the untrained
            # head's to start with); the best epoch's weights are kept
            patience = EarlyStopHook("val_nmi_to_init", patience=cfg.init_patience + 1, mode="max", baseline=val_nmi,
                                     restore_best=True)
            # its checkpoint is kept until the trial ends: a kill before joint training's first checkpoint
            # resumes the pre-fit instead of repeating it (README: a kill loses at most BENCH_CHECKPOINT_S of work)
            run = train("init_head", init_loss, train_idx, [MetricHook("val_nmi_to_init", val_nmi), patience],
                        cfg.init_epochs, keep_checkpoint=True)
            info.update(init_epochs_run=run.epoch, init_best_val_nmi=patience.best)

        # ---- joint training with frequency-normalised soft targets ----------------------------------
        targets = SoftTargets(model, x, k)

        def joint_loss(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            rec, logits = model.noisy_losses(x.index_select(0, idx), hw, masks)
            target = targets.y_prob.index_select(0, idx)
            ce = -(target * F.log_softmax(logits, -1)).sum(1).mean()
            return {"loss": cfg.reconstruction_weight * rec + cfg.clustering_weight * ce}

        stop = EarlyStopHook(criterion=lambda engine: targets.change < cfg.stop_mse)
        run = train("joint", joint_loss, torch.arange(n, device=dev), [targets, stop], cfg.epochs,
                    after=targets.refresh)
        eval_x = x if data.same_split else (data.float01(data.x_eval) * 2.0 - 1.0).to(dev)
        labels = model.clean_prob(eval_x).argmax(1)
        info.update(epochs=run.epoch, stop_reason="epochs" if stop.stopped_at is None else "stop_mse",
                    last_target_mse_change=targets.change)
        return ClusterOutput(labels=labels, info=info)


class SoftTargets(TargetUpdateHook):
    """DEPICT's targets ``y_prob [N, K]``: before the first epoch the clean prediction, frequency-normalised; each
    image's row is refreshed with its clean prediction right after its minibatch step (``refresh``, the pass's
    ``after``); after each epoch the rows are normalised by the cluster frequencies, and ``change`` (their mean
    squared change since the previous epoch) is logged with the labels (argmax) for the stop rule."""

    def __init__(self, model: DepictAutoencoder, x: torch.Tensor, k: int):
        super().__init__(after=True)
        self.model, self.x = model, x
        self.y_prob = torch.zeros(x.shape[0], k, device=x.device)  # read and refreshed in place (a CUDA graph)
        self.y_prev = torch.zeros_like(self.y_prob)
        self.change = float("nan")

    def refresh(self, idx: torch.Tensor) -> None:
        _, _, zc = self.model.encode(self.x.index_select(0, idx), noisy=False)
        self.y_prob.index_copy_(0, idx, torch.softmax(self.model.head(zc), -1))

    @torch.no_grad()
    def update(self, engine: Engine) -> None:
        if self.updates == 0:
            self.y_prob.copy_(frequency_normalised(self.model.clean_prob(self.x)))
            return
        self.y_prob.copy_(frequency_normalised(self.y_prob))
        self.change = float((self.y_prob - self.y_prev).pow(2).mean())
        self.y_prev.copy_(self.y_prob)
        engine.log.update(target_mse_change=self.change, eval_pred=self.y_prob.argmax(1))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "y_prob": self.y_prob.cpu(), "y_prev": self.y_prev.cpu(),
                "change": self.change}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.y_prob.copy_(state["y_prob"])
        self.y_prev.copy_(state["y_prev"])
        self.change = float(state["change"])


__all__ = ["DEPICT", "DepictAutoencoder", "frequency_normalised"]

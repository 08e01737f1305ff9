"""DEC: Deep Embedded Clustering (Xie, Girshick & Farhadi, ICML 2016).

Recipe from the official Caffe code (piiswrong/dec): stacked denoising autoencoder
d-500-500-2000-10 (methods.nn.autoencoder), k-means (20 restarts) on the embedding for the
initial centres, Student's t soft assignment (alpha = 1), target distribution p = q^2/f
(normalised), KL(P||Q) self-training of encoder and centres with SGD, the target recomputed on
the whole dataset every ``update_interval`` iterations, stop when fewer than ``tol`` of the
labels changed since the previous target update. Labels are never looked at. The Caffe solver's
details are the defaults (each commented at its field): encoder biases at twice the learning rate,
the momentum history reset at every target update (a fresh ``caffe train`` per interval), and the
data read in order, continuing across updates (the LevelDB ``seek``).

Several seeds run as one batched model (``run_seeds``; suites set ``seed_batch``), each with its own
pretrained autoencoder (one cached stage per seed), k-means start, minibatch order and stopping
rule. Deviations from the official code are noted next to the defaults they change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field

from bench.errors import NonFiniteLossError
from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.cluster.kmeans import KMeansResult, kmeans
from methods.engine import (
    CheckpointHook,
    Engine,
    EngineConfig,
    FaultInjectionHook,
    Hook,
    MomentumResetHook,
    Priority,
    StreamOrderHook,
    TargetUpdateHook,
)
from methods.engine.steps import index_streams, lr_groups, matmul_tf32, sgd
from methods.nn.autoencoder import (
    AutoencoderConfig,
    BatchedMLPAutoencoder,
    _gather,
    per_seed_mse,
    pretrained_autoencoders,
    scaled_input,
    with_ae_defaults,
)


def student_t(z: torch.Tensor, mu: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """q_ij proportional to (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha + 1) / 2), rows normalised.

    ``z [..., N, D]``, ``mu [..., K, D]`` (a leading seed axis batches seeds) -> ``[..., N, K]``.
    Computed as a softmax of -(alpha + 1) / 2 * log1p(d^2 / alpha): the same q, but a point far from
    every centre (every kernel value underflowing to 0 in the direct form) gets a finite row instead of
    0 / 0 = NaN.
    """
    d2 = (z.unsqueeze(-2) - mu.unsqueeze(-3)).pow(2).sum(-1)
    return torch.softmax(torch.log1p(d2 / alpha) * (-(alpha + 1.0) / 2.0), -1)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij (DEC eq. 3); ``[..., N, K]``.
    Guarded: an empty cluster (f_j = 0) or a row of underflowed squares divides by a tiny number, not 0."""
    tiny = torch.finfo(q.dtype).tiny
    w = q.pow(2) / q.sum(-2, keepdim=True).clamp_min(tiny)
    return w / w.sum(-1, keepdim=True).clamp_min(tiny)


def kl_pq(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) summed over clusters, averaged over the batch (per seed for ``[S, B, K]`` input)."""
    return (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(-1).mean(-1)


@register_method
class DEC(ClusteringMethod):
    name = "dec"
    label = "DEC"
    paper = "Xie, Girshick & Farhadi, Unsupervised Deep Embedding for Clustering Analysis, ICML 2016"
    selection_rule = "assignment at the first target update where < tol of labels changed (else at max_iters)"
    train_split = "all"
    eval_split = "all"
    gpu_share = 0.25
    supports_seed_batch = True
    # official code: target update every 160 iterations on MNIST, 40 on STL, 20 on Reuters; USPS (no
    # official DEC setting): 30, IDEC's DEC re-run (XifengGuo/IDEC README, `DEC.py usps --update_interval 30`).
    # Input scaling per dataset: methods.nn.autoencoder.AE_DATASET_DEFAULTS.
    dataset_defaults = with_ae_defaults({"mnist": {"update_interval": 160}, "stl10": {"update_interval": 40},
                                         "usps": {"update_interval": 30}})

    class Config(AutoencoderConfig):
        n_init: int = Field(20, ge=1, description="k-means restarts for the initial centres")
        alpha: float = Field(1.0, gt=0, description="Student's t degrees of freedom")
        lr: float = Field(0.01, gt=0)
        momentum: float = 0.9
        batch_size: int = Field(256, ge=1)
        update_interval: int = Field(160, ge=1, description="iterations between target updates")
        tol: float = Field(0.001, ge=0, description="stop when fewer than this fraction of labels change")
        # Deviation: the official code has no iteration cap; 20,000 is DEC-keras's maxiter, a safety net.
        max_iters: int = Field(20000, ge=0)
        optimizer: Literal["sgd"] = "sgd"
        # Official Caffe details of the self-training stage (piiswrong/dec, dec.py DisKmeans + make_net):
        # the encoder's INNER_PRODUCT layers keep "blobs_lr: 1, 2" (biases at twice the lr), the
        # MULTI_T_LOSS centres "blobs_lr: 1".
        bias_lr_mult: float = Field(2.0, gt=0, description="encoder bias lr = this x lr (Caffe blobs_lr 2)")
        # every target update writes a new solver and runs a fresh `caffe train` for update_interval
        # iterations: the momentum history starts from zero each time.
        momentum_reset_at_update: bool = Field(True, description="zero the momentum at each target update")
        # the data layer reads mnist_total in order from `seek`, which advances by batch x interval.
        data_order: Literal["sequential", "shuffled"] = Field(
            "sequential", description="minibatches in data order, continuing across updates (Caffe), or "
                                      "per-seed permutations")
        curve_eval_every: int = Field(1, ge=1, description="score the curve every this many target updates "
                                      "(plots only; never selects the result); the final one is always scored")

    @classmethod
    def protocol_fields(cls, config):
        return config.protocol(batch_size=config.batch_size)

    @classmethod
    def stages(cls, config):
        return {"autoencoder": config.sdae_request()}  # the stacked autoencoder AE + k-means and IDEC share

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        out = self.run_seeds(data, [ctx])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def run_seeds(self, data: ClusteringData, ctxs: list[TrialContext]) -> list[ClusterOutput]:
        cfg = self.config
        ae = pretrained_autoencoders(ctxs)
        x = scaled_input(data.x_train, cfg.input_scale, ctxs[0].device)
        return self.cluster(ae, x, data, ctxs)

    def cluster(self, ae: BatchedMLPAutoencoder, x: torch.Tensor, data: ClusteringData, ctxs: list[TrialContext],
                reconstruction_weight: float = 0.0, kl_weight: float = 1.0,
                make_optimizer: Callable[[list[torch.nn.Parameter], bool], torch.optim.Optimizer] | None = None,
                loss_name: str = "DEC loss") -> list[ClusterOutput | BaseException]:
        """DEC's self-training for every seed of ``ctxs`` at once; IDEC reuses it with a
        reconstruction term and its own optimiser (weights per its paper).

        Seeds train in lockstep (one batched model, one CUDA graph: an engine seed batch), but each keeps its own
        k-means initialisation, minibatch order, target distribution and stopping rule: a seed whose
        assignment changes by less than ``tol`` at a target update is finished, its labels frozen at
        that update; the rest continue. A seed whose loss turns non-finite (or that failed while
        pretraining) fails alone: ``ctx.fail`` masks it out, the others' numbers are unchanged.
        One engine epoch is one interval of ``update_interval`` iterations between target updates; progress is
        checkpointed (``ctx.batch_checkpointer``) and resumed from after a kill.
        """
        cfg = self.config
        dev = ctxs[0].device
        n, k = x.shape[0], data.n_clusters
        # the clustering layer on the pretrained encoder; its centres come from k-means at the first target update
        layer = ClusteringLayer(len(ctxs), k, ae.dims[-1], cfg.alpha).to(dev)
        params = ae.encoder_parameters() + [layer.mu]
        if reconstruction_weight > 0:
            params += ae.decoder_parameters()
        if make_optimizer:
            opt = make_optimizer(params, cfg.cuda_graphs and dev.type == "cuda")
        else:
            decoder = [*ae.dec_w, *ae.dec_b] if reconstruction_weight > 0 else []
            opt = sgd(lr_groups([*ae.enc_w, *decoder], list(ae.enc_b), cfg.bias_lr_mult, others=[layer.mu]), cfg.lr,
                      cfg.momentum, dev)
        targets = TargetDistribution(ae, layer, x, ctxs, k, cfg.n_init)

        # SGD on KL(P || Q) of each minibatch (IDEC: + reconstruction); idx [S, batch], one loss per seed
        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            xb = _gather(x, idx)
            zb = ae.encode(xb)
            loss = kl_weight * kl_pq(_gather(targets.p, idx), layer(zb))
            if reconstruction_weight > 0:
                loss = loss + reconstruction_weight * per_seed_mse(ae.decode(zb), xb)
            return {"loss": loss}

        # every update_interval iterations (an engine epoch): P from Q on all the data; stop once < tol of a
        # seed's labels changed; the minibatches walk each seed's stream on across the updates
        gens = [ctx.rng("dec/data_order") for ctx in ctxs]
        data_order = StreamOrderHook(index_streams(cfg.data_order, n, cfg.batch_size, gens, dev))
        eval_x = None if data.same_split else scaled_input(data.x_eval, cfg.input_scale, dev)
        stop = ToleranceStop(targets, cfg, loss_name, iters_per_epoch=max(1, -(-n // cfg.batch_size)),
                             predict=None if eval_x is None else lambda: self._predict(ae, layer, eval_x))
        hooks = [targets, stop, data_order, FaultInjectionHook("cluster", ae.encoder_parameters() + [layer.mu]),
                 CheckpointHook(fingerprint=cfg.model_dump(mode="json"),
                                checkpointer=TrialContext.batch_checkpointer(ctxs, "cluster"))]
        if cfg.momentum_reset_at_update:
            hooks.append(MomentumResetHook())
        knobs = EngineConfig(eval_every=0, cuda_graph=cfg.cuda_graphs)
        engine = Engine(ctxs, knobs, modules={"ae": ae, "clustering": layer}, optimizer=opt,
                        streams={f"dec/data_order/{s}": g for s, g in enumerate(gens)}, hooks=hooks)
        interval = cfg.update_interval
        engine.add_pass("self-training", n, step, data_order.stream.batch_size, graph=True,
                        order=lambda: data_order.order(min(interval, cfg.max_iters - engine.global_step)))
        with matmul_tf32(cfg.tf32):
            engine.run(-(-cfg.max_iters // interval))
        return stop.results  # type: ignore[return-value]

    @torch.no_grad()
    def _predict(self, ae: BatchedMLPAutoencoder, layer: ClusteringLayer, x: torch.Tensor) -> torch.Tensor:
        return layer(ae.encode_all(x)).argmax(-1)


class ClusteringLayer(torch.nn.Module):
    """DEC's clustering layer: K centres per seed, ``mu [S, K, D]``, and the Student's t soft assignment q."""

    def __init__(self, n_seeds: int, k: int, dim: int, alpha: float):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(n_seeds, k, dim))  # set by k-means at the first target update
        self.alpha = alpha

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return student_t(z, self.mu, self.alpha)


class TargetDistribution(TargetUpdateHook):
    """The target distribution P of every seed, from its soft assignment Q on the whole dataset, after each interval
    of ``update_interval`` iterations (an engine epoch) and before the first; ``labels`` (argmax Q) and ``deltas``
    (the share of labels changed since the previous update) feed the stopping rule. The first update first places
    the centres by k-means (``n_init`` restarts, stream "kmeans_init") on the embedding."""

    def __init__(self, ae: BatchedMLPAutoencoder, layer: ClusteringLayer, x: torch.Tensor, ctxs: list[TrialContext],
                 k: int, n_init: int):
        super().__init__(after=True)
        self.ae, self.layer, self.x, self.ctxs, self.k, self.n_init = ae, layer, x, ctxs, k, n_init
        self.p = torch.zeros(len(ctxs), x.shape[0], k, device=x.device)  # updated in place: a CUDA graph reads it
        self.labels: torch.Tensor | None = None
        self.deltas = [float("nan")] * len(ctxs)
        self.inertias: list[float] = []

    def _kmeans_init(self) -> torch.Tensor:
        z = self.ae.encode_all(self.x)
        n, dev = self.x.shape[0], self.x.device
        # k-means distances in full fp32 (outside the TF32 block); a seed already failed (masked out of the
        # batch while pretraining) gets placeholder centres: its slot computes on, never reported
        with matmul_tf32(False):
            kms = [kmeans(z[s], self.k, n_init=self.n_init, generator=ctx.rng("kmeans_init"))
                   if ctx.failure is None else
                   KMeansResult(labels=torch.zeros(n, dtype=torch.long, device=dev),
                                centers=torch.zeros(self.k, z.shape[-1], device=dev), inertia=float("nan"), n_iter=0)
                   for s, ctx in enumerate(self.ctxs)]
        self.inertias = [km.inertia for km in kms]
        self.layer.mu.copy_(torch.stack([km.centers for km in kms]))
        return torch.stack([km.labels for km in kms])

    @torch.no_grad()
    def update(self, engine: Engine) -> None:
        previous = self._kmeans_init() if self.updates == 0 else self.labels
        q = self.layer(self.ae.encode_all(self.x))
        self.p.copy_(target_distribution(q))
        self.labels = q.argmax(-1)
        self.deltas = (self.labels != previous).float().mean(-1).tolist()  # one sync per update

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "p": self.p.cpu(), "labels": self.labels.cpu(), "deltas": self.deltas,
                "inertias": self.inertias}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.p.copy_(state["p"])
        self.labels = state["labels"].to(self.p.device)
        self.deltas, self.inertias = list(state["deltas"]), list(state["inertias"])


class ToleranceStop(Hook):
    """DEC's stopping rule, per seed, at each target update (iteration ``it``): a seed whose loss over the interval
    is not finite fails alone (``ctx.fail``); otherwise its curve row is logged (the interval's mean loss, the label
    change, its labels scored every ``curve_eval_every`` updates and at its last) and it is done when fewer than
    ``tol`` of its labels changed (``it > 0``) or at ``max_iters``: ``results[s]`` then holds its labels from this
    update. The run stops when every seed is done or failed."""
    priority = Priority.BELOW_NORMAL

    def __init__(self, targets: TargetDistribution, cfg: Any, loss_name: str, iters_per_epoch: int,
                 predict: Callable[[], torch.Tensor] | None):
        self.targets, self.cfg, self.loss_name, self.iters_per_epoch = targets, cfg, loss_name, iters_per_epoch
        self.predict = predict  # the eval split's labels, when it is not the training split
        self.results: list[ClusterOutput | BaseException | None] = [ctx.failure for ctx in targets.ctxs]
        self.seen = 0  # target updates handled

    def _check(self, engine: Engine) -> None:
        if self.seen == self.targets.updates:
            return
        self.seen = self.targets.updates
        cfg, it, deltas = self.cfg, engine.global_step, self.targets.deltas
        losses = engine.log["loss"].tolist() if it > 0 else [float("nan")] * len(deltas)
        with_eval = (self.seen - 1) % cfg.curve_eval_every == 0
        labels = self.targets.labels if self.predict is None else self.predict()
        epoch = it / self.iters_per_epoch
        for s, ctx in enumerate(self.targets.ctxs):
            if self.results[s] is not None:
                continue
            if it > 0 and not math.isfinite(losses[s]):
                # masked out of the batch: its slice computes on in lockstep, isolated from the others
                ctx.fail(NonFiniteLossError(
                    f"{self.loss_name} became {losses[s]} by iteration {it} (epoch {epoch:.2f}; seed {ctx.seed}); "
                    "lower the learning rate or check the input scaling"), stage="cluster", iteration=it,
                    epoch=round(epoch, 3))
                self.results[s] = ctx.failure
                continue
            stop = it > 0 and deltas[s] < cfg.tol
            done = stop or it == cfg.max_iters
            ctx.log_epoch(epoch, iteration=it, loss=losses[s], delta_label=deltas[s],
                          eval_pred=labels[s] if (with_eval or done) else None)
            if done:
                self.results[s] = ClusterOutput(
                    labels=labels[s].clone(),
                    info={"iterations": it, "stop_reason": "tol" if stop else "max_iters",
                          "last_delta_label": deltas[s], "kmeans_init_inertia": self.targets.inertias[s],
                          "seeds_trained_together": len(self.results)})
        if all(r is not None for r in self.results):
            engine.stop = True

    # the target hook updates before the first epoch, after each one, and at the end of a run of no epochs
    def before_epoch(self, engine: Engine) -> None:
        self._check(engine)

    def after_epoch(self, engine: Engine) -> None:
        self._check(engine)

    def after_run(self, engine: Engine) -> None:
        self._check(engine)

    def state_dict(self) -> dict[str, Any]:
        return {"results": self.results, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.results, self.seen = list(state["results"]), int(state["seen"])

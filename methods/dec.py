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
from typing import Literal

import torch
from pydantic import Field

from bench.context import rng_state, set_rng_state
from bench.errors import NonFiniteLossError
from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.cluster.kmeans import KMeansResult, kmeans
from methods.engine.steps import GraphedStep, index_streams, lr_groups, matmul_tf32, sgd
from methods.nn.autoencoder import (
    AutoencoderConfig,
    BatchedMLPAutoencoder,
    _gather,
    per_seed_mse,
    poison_due_seeds,
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

        Seeds train in lockstep (one batched model, one CUDA graph), but each keeps its own k-means
        initialisation, minibatch order, target distribution and stopping rule: a seed whose
        assignment changes by less than ``tol`` at a target update is finished, its labels frozen at
        that update; the rest continue. A seed whose loss turns non-finite (or that failed while
        pretraining) fails alone: ``ctx.fail`` masks it out, the others' numbers are unchanged.
        Progress is checkpointed (``ctx.batch_checkpointer``) and resumed from after a kill.
        """
        cfg = self.config
        dev = ctxs[0].device
        n_seeds, n, k = len(ctxs), x.shape[0], data.n_clusters
        # progress checkpoint of this batch's self-training (resumed after a kill; removed once recorded)
        ckpt = TrialContext.batch_checkpointer(ctxs, "cluster")
        saved = ckpt.load()
        if saved is None:
            with matmul_tf32(cfg.tf32):
                z = ae.encode_all(x)
            # k-means distances in full fp32 (outside the TF32 block); a seed already failed (masked out of the
            # batch while pretraining) gets placeholder centres: its slot computes on, never reported
            kms = [kmeans(z[s], k, n_init=cfg.n_init, generator=ctx.rng("kmeans_init")) if ctx.failure is None else
                   KMeansResult(labels=torch.zeros(n, dtype=torch.long, device=dev),
                                centers=torch.zeros(k, z.shape[-1], device=dev), inertia=float("nan"), n_iter=0)
                   for s, ctx in enumerate(ctxs)]
            del z
            inertias = [km.inertia for km in kms]
            mu = torch.nn.Parameter(torch.stack([km.centers for km in kms]).clone())
            y_last = torch.stack([km.labels for km in kms])
        else:
            ae.load_state_dict(saved["ae"])
            inertias = saved["inertias"]
            mu = torch.nn.Parameter(saved["mu"].to(dev))
            y_last = saved["y_last"].to(dev)
        p_all = torch.zeros(n_seeds, n, k, device=dev)  # updated in place: a CUDA graph reads it
        params = ae.encoder_parameters() + [mu]
        if reconstruction_weight > 0:
            params += ae.decoder_parameters()
        use_graph = cfg.cuda_graphs and dev.type == "cuda"
        if make_optimizer:
            opt = make_optimizer(params, use_graph)
        else:
            decoder = [*ae.dec_w, *ae.dec_b] if reconstruction_weight > 0 else []
            opt = sgd(lr_groups([*ae.enc_w, *decoder], list(ae.enc_b), cfg.bias_lr_mult, others=[mu]), cfg.lr,
                      cfg.momentum, dev)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            xb = _gather(x, idx)
            zb = ae.encode(xb)
            loss = kl_weight * kl_pq(_gather(p_all, idx), student_t(zb, mu, cfg.alpha))
            if reconstruction_weight > 0:
                loss = loss + reconstruction_weight * per_seed_mse(ae.decode(zb), xb)
            return loss

        step = GraphedStep(loss_fn, opt, (n_seeds, cfg.batch_size), dev, use_graph=cfg.cuda_graphs, n_losses=n_seeds)
        gens = [ctx.rng("dec/data_order") for ctx in ctxs]
        stream = index_streams(cfg.data_order, n, cfg.batch_size, gens, dev)
        eval_x = None if data.same_split else scaled_input(data.x_eval, cfg.input_scale, dev)
        iters_per_epoch = max(1, -(-n // cfg.batch_size))
        results: list[ClusterOutput | BaseException | None] = [ctx.failure for ctx in ctxs]
        deltas = [float("nan")] * n_seeds
        n_updates, start = 0, 0
        if saved is not None:
            p_all.copy_(saved["p_all"])
            step.load_state(saved["step"])
            stream.load_state(saved["stream"])
            set_rng_state(saved["rng"], gens)
            results, deltas, n_updates, start = saved["results"], saved["deltas"], saved["n_updates"], saved["it"]
            for ctx, curve, failure in zip(ctxs, saved["curves"], saved["failures"]):
                ctx.curve = list(curve)
                if failure is not None:
                    ctx.fail(failure[0], **failure[1])
        trained = ae.encoder_parameters() + [mu]
        with matmul_tf32(cfg.tf32):
            for it in range(start, cfg.max_iters + 1):
                if it % cfg.update_interval == 0 or it == cfg.max_iters:
                    with torch.no_grad():
                        q_all = student_t(ae.encode_all(x), mu, cfg.alpha)
                        p_all.copy_(target_distribution(q_all))
                        y_pred = q_all.argmax(-1)
                        deltas = (y_pred != y_last).float().mean(-1).tolist()  # one sync per update
                        y_last = y_pred
                    losses = step.mean_loss().tolist() if it > 0 else [float("nan")] * n_seeds
                    with_eval = n_updates % cfg.curve_eval_every == 0
                    n_updates += 1
                    eval_all = self._predict(ae, mu, eval_x) if eval_x is not None else None
                    for s, ctx in enumerate(ctxs):
                        if results[s] is not None:
                            continue
                        if it > 0 and not math.isfinite(losses[s]):
                            # masked out of the batch: its slice computes on in lockstep, isolated from the others
                            ctx.fail(NonFiniteLossError(
                                f"{loss_name} became {losses[s]} by iteration {it} (epoch "
                                f"{it / iters_per_epoch:.2f}; seed {ctx.seed}); lower the learning rate or check "
                                "the input scaling"), stage="cluster", iteration=it,
                                epoch=round(it / iters_per_epoch, 3))
                            results[s] = ctx.failure
                            continue
                        stop = it > 0 and deltas[s] < cfg.tol
                        done = stop or it == cfg.max_iters
                        pred = y_pred[s] if eval_all is None else eval_all[s]
                        ctx.log_epoch(it / iters_per_epoch, iteration=it, loss=losses[s], delta_label=deltas[s],
                                      eval_pred=pred if (with_eval or done) else None)
                        if done:
                            results[s] = ClusterOutput(
                                labels=pred.clone(),
                                info={"iterations": it, "stop_reason": "tol" if stop else "max_iters",
                                      "last_delta_label": deltas[s], "kmeans_init_inertia": inertias[s],
                                      "seeds_trained_together": n_seeds})
                    if all(r is not None for r in results) or it == cfg.max_iters:
                        break
                    if cfg.momentum_reset_at_update and it > 0:
                        step.reset_momentum()
                step.step(stream.next())
                poison_due_seeds(ctxs, "cluster", it + 1, trained)
                if ckpt.due():
                    ckpt.save({"it": it + 1, "ae": ae.state_dict(), "mu": mu.detach().cpu(), "inertias": inertias,
                               "y_last": y_last.cpu(), "p_all": p_all.cpu(), "step": step.state(),
                               "stream": stream.state(), "rng": rng_state(gens), "results": results,
                               "deltas": deltas, "n_updates": n_updates, "curves": [list(c.curve) for c in ctxs],
                               "failures": [None if c.failure is None else (c.failure, c.failed_at) for c in ctxs]})
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _predict(self, ae: BatchedMLPAutoencoder, mu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return student_t(ae.encode_all(x), mu, self.config.alpha).argmax(-1)

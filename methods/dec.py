"""DEC: Deep Embedded Clustering (Xie, Girshick & Farhadi, ICML 2016).

Recipe from the official Caffe code (piiswrong/dec): stacked denoising autoencoder
d-500-500-2000-10 (methods.common.autoencoder), k-means (20 restarts) on the embedding for the
initial centres, Student's t soft assignment (alpha = 1), target distribution p = q^2/f
(normalised), KL(P||Q) self-training of encoder and centres with SGD, the target recomputed on
the whole dataset every ``update_interval`` iterations, stop when fewer than ``tol`` of the
labels changed since the previous target update. Labels are never looked at.

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

from bench.errors import NonFiniteLossError
from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.common.autoencoder import (
    AutoencoderConfig,
    BatchedMLPAutoencoder,
    _gather,
    per_seed_mse,
    pretrained_autoencoders,
)
from methods.common.kmeans import kmeans
from methods.common.train import GraphedStep, SeedIndexStreams, matmul_tf32, sgd


def student_t(z: torch.Tensor, mu: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """q_ij proportional to (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha + 1) / 2), rows normalised.

    ``z [..., N, D]``, ``mu [..., K, D]`` (a leading seed axis batches seeds) -> ``[..., N, K]``.
    """
    d2 = (z.unsqueeze(-2) - mu.unsqueeze(-3)).pow(2).sum(-1)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(-1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij (DEC eq. 3); ``[..., N, K]``."""
    w = q.pow(2) / q.sum(-2, keepdim=True)
    return w / w.sum(-1, keepdim=True)


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
    # official code: target update every 160 iterations on MNIST, 40 on STL, 20 on Reuters
    dataset_defaults = {"mnist": {"update_interval": 160}, "stl10": {"update_interval": 40}}

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
        curve_eval_every: int = Field(1, ge=1, description="score the curve every this many target updates "
                                      "(plots only; never selects the result); the final one is always scored")

    @classmethod
    def protocol_fields(cls, config):
        return config.protocol(batch_size=config.batch_size)

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        out = self.run_seeds(data, [ctx])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def run_seeds(self, data: ClusteringData, ctxs: list[TrialContext]) -> list[ClusterOutput]:
        cfg = self.config
        x = scaled_input(data.x_train, cfg.input_scale, ctxs[0].device)
        ae = pretrained_autoencoders(x, cfg.ae_cfg(x.shape[1], data.train_split), ctxs)
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
        that update; the rest continue. A seed whose loss turns non-finite fails alone.
        """
        cfg = self.config
        dev = ctxs[0].device
        n_seeds, n, k = len(ctxs), x.shape[0], data.n_clusters
        with matmul_tf32(cfg.tf32):
            z = ae.encode_all(x)
        # k-means distances in full fp32 (outside the TF32 block)
        kms = [kmeans(z[s], k, n_init=cfg.n_init, generator=ctx.generator(offset=7)) for s, ctx in enumerate(ctxs)]
        del z
        mu = torch.nn.Parameter(torch.stack([km.centers for km in kms]).clone())
        y_last = torch.stack([km.labels for km in kms])
        p_all = torch.zeros(n_seeds, n, k, device=dev)  # updated in place: a CUDA graph reads it
        params = ae.encoder_parameters() + [mu]
        if reconstruction_weight > 0:
            params += ae.decoder_parameters()
        use_graph = cfg.cuda_graphs and dev.type == "cuda"
        opt = make_optimizer(params, use_graph) if make_optimizer else \
            sgd(params, cfg.lr, cfg.momentum, dev)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            xb = _gather(x, idx)
            zb = ae.encode(xb)
            loss = kl_weight * kl_pq(_gather(p_all, idx), student_t(zb, mu, cfg.alpha))
            if reconstruction_weight > 0:
                loss = loss + reconstruction_weight * per_seed_mse(ae.decode(zb), xb)
            return loss

        step = GraphedStep(loss_fn, opt, (n_seeds, cfg.batch_size), dev, use_graph=cfg.cuda_graphs, n_losses=n_seeds)
        stream = SeedIndexStreams(n, cfg.batch_size, [ctx.generator(offset=13) for ctx in ctxs], dev)
        eval_x = None if data.same_split else scaled_input(data.x_eval, cfg.input_scale, dev)
        iters_per_epoch = max(1, -(-n // cfg.batch_size))
        results: list[ClusterOutput | BaseException | None] = [None] * n_seeds
        deltas = [float("nan")] * n_seeds
        n_updates = 0
        with matmul_tf32(cfg.tf32):
            for it in range(cfg.max_iters + 1):
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
                            results[s] = NonFiniteLossError(
                                f"{loss_name} became {losses[s]} (seed {ctx.seed}); lower the learning rate or "
                                "check the input scaling")
                            continue
                        stop = it > 0 and deltas[s] < cfg.tol
                        done = stop or it == cfg.max_iters
                        pred = y_pred[s] if eval_all is None else eval_all[s]
                        ctx.log_epoch(it / iters_per_epoch, iteration=it, loss=losses[s], delta_label=deltas[s],
                                      eval_pred=pred if (with_eval or done) else None)
                        if done:
                            results[s] = ClusterOutput(
                                labels=pred.clone(), embeddings=None,
                                info={"iterations": it, "stop_reason": "tol" if stop else "max_iters",
                                      "last_delta_label": deltas[s], "kmeans_init_inertia": kms[s].inertia,
                                      "seeds_trained_together": n_seeds})
                    if all(r is not None for r in results) or it == cfg.max_iters:
                        break
                step.step(stream.next())
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _predict(self, ae: BatchedMLPAutoencoder, mu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return student_t(ae.encode_all(x), mu, self.config.alpha).argmax(-1)


def scaled_input(images: torch.Tensor, input_scale: float, device: torch.device) -> torch.Tensor:
    """Flattened pixels on the 0..255 scale times ``input_scale`` (DEC: x 0.02), on ``device``."""
    return (ClusteringData.float01(images).flatten(1) * (255.0 * input_scale)).to(device)

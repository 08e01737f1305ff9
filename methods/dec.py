"""DEC: Deep Embedded Clustering (Xie, Girshick & Farhadi, ICML 2016).

Recipe from the official Caffe code (piiswrong/dec): stacked denoising autoencoder
d-500-500-2000-10 (methods.common.autoencoder), k-means (20 restarts) on the embedding for the
initial centres, Student's t soft assignment (alpha = 1), target distribution p = q^2/f
(normalised), KL(P||Q) self-training of encoder and centres with SGD, the target recomputed on
the whole dataset every ``update_interval`` iterations, stop when fewer than ``tol`` of the
labels changed since the previous target update. Labels are never looked at.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.common.autoencoder import AutoencoderConfig, encode_all, pretrained_autoencoder
from methods.common.kmeans import kmeans
from methods.common.train import GraphedStep, IndexStream


def student_t(z: torch.Tensor, mu: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """q_ij proportional to (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha + 1) / 2), rows normalised."""
    d2 = (z.unsqueeze(1) - mu.unsqueeze(0)).pow(2).sum(-1)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij (DEC eq. 3)."""
    w = q.pow(2) / q.sum(0, keepdim=True)
    return w / w.sum(1, keepdim=True)


def kl_pq(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) summed over clusters, averaged over the batch."""
    return (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(1).mean()


@register_method
class DEC(ClusteringMethod):
    name = "dec"
    paper = "Xie, Girshick & Farhadi, Unsupervised Deep Embedding for Clustering Analysis, ICML 2016"
    selection_rule = "assignment at the first target update where < tol of labels changed (else at max_iters)"
    train_split = "all"
    eval_split = "all"
    gpu_share = 0.25
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

    @classmethod
    def protocol_fields(cls, config):
        return {"image_size": None, "stem": "mlp " + "-".join(map(str, config.hidden_dims)),
                "epochs": None, "batch_size": config.batch_size,
                "pretrain_iters": f"{config.pretrain_iters_per_layer}/layer + {config.finetune_iters} finetune"}

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        x = (data.float01(data.x_train).flatten(1) * (255.0 * cfg.input_scale)).to(dev)
        ae = pretrained_autoencoder(x, cfg.ae_cfg(x.shape[1], data.train_split), ctx)
        return self.cluster(ae, x, data, ctx)

    def cluster(self, ae, x: torch.Tensor, data: ClusteringData, ctx: TrialContext,
                reconstruction_weight: float = 0.0, kl_weight: float = 1.0, optimizer=None) -> ClusterOutput:
        """DEC's self-training; IDEC reuses it with a reconstruction term (weights per its paper)."""
        cfg = self.config
        dev = ctx.device
        z = encode_all(ae, x)
        km = kmeans(z, data.n_clusters, n_init=cfg.n_init, generator=ctx.generator(offset=7))
        mu = torch.nn.Parameter(km.centers.clone())
        y_last = km.labels.clone()
        n = x.shape[0]
        p_all = torch.zeros(n, data.n_clusters, device=dev)  # updated in place: a CUDA graph reads it
        params = list(ae.encoder.parameters()) + [mu]
        if reconstruction_weight > 0:
            params += list(ae.decoder.parameters())
        opt = optimizer(params) if optimizer else torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            xb = x.index_select(0, idx)
            zb = ae.encode(xb)
            loss = kl_weight * kl_pq(p_all.index_select(0, idx), student_t(zb, mu, cfg.alpha))
            if reconstruction_weight > 0:
                loss = loss + reconstruction_weight * torch.nn.functional.mse_loss(ae.decode(zb), xb)
            return loss

        step = GraphedStep(loss_fn, opt, cfg.batch_size, dev, use_graph=cfg.cuda_graphs)
        stream = IndexStream(n, cfg.batch_size, ctx.generator(offset=13), dev)
        eval_x = None if data.same_split else \
            (data.float01(data.x_eval).flatten(1) * (255.0 * cfg.input_scale)).to(dev)
        stop_reason, it, delta = "max_iters", 0, float("nan")
        iters_per_epoch = max(1, -(-n // cfg.batch_size))
        y_pred = y_last
        for it in range(cfg.max_iters + 1):
            if it % cfg.update_interval == 0 or it == cfg.max_iters:
                with torch.no_grad():
                    q_all = student_t(encode_all(ae, x), mu, cfg.alpha)
                    p_all.copy_(target_distribution(q_all))
                    y_pred = q_all.argmax(1)
                    delta = float((y_pred != y_last).float().mean())
                    y_last = y_pred
                loss = step.mean_loss() if it > 0 else torch.tensor(float("nan"))
                if it > 0:
                    ctx.check_finite(loss, "DEC loss")
                ctx.log_epoch(it / iters_per_epoch, iteration=it, loss=loss, delta_label=delta,
                              eval_pred=y_pred if eval_x is None else self._predict(ae, mu, eval_x))
                if it > 0 and delta < cfg.tol:
                    stop_reason = "tol"
                    break
                if it == cfg.max_iters:
                    break
            step.step(stream.next())
        labels = y_pred if eval_x is None else self._predict(ae, mu, eval_x)
        return ClusterOutput(labels=labels, embeddings=None,
                             info={"iterations": it, "stop_reason": stop_reason, "last_delta_label": delta,
                                   "kmeans_init_inertia": km.inertia})

    @torch.no_grad()
    def _predict(self, ae, mu, x: torch.Tensor) -> torch.Tensor:
        return student_t(encode_all(ae, x), mu, self.config.alpha).argmax(1)

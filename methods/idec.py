"""IDEC: Improved Deep Embedded Clustering with local structure preservation (Guo, Gao, Liu & Yin,
IJCAI 2017).

Recipe from the official code (XifengGuo/IDEC, IDEC.py): DEC's clustering layer (Student's t,
alpha = 1, k-means with 20 restarts on the embedding for the centres) on the d-500-500-2000-10
autoencoder, with the decoder kept: loss = gamma * KL(P || Q) + MSE reconstruction, gamma = 0.1.
The target distribution is recomputed on the whole dataset every ``update_interval`` iterations;
training stops when fewer than ``tol`` of the labels changed since the previous update, or at
``max_iters``. MNIST: Adam (Keras defaults, lr 1e-3), update interval 140; USPS: SGD lr 0.1,
momentum 0.99, interval 30. Batch 256, tol 0.001, max 20,000 iterations.

The official code loads DEC's Caffe-pretrained stacked autoencoder; here it is the shared cached
stage (methods.nn.autoencoder), the same recipe and, for the same seed, the same weights DEC
and AE + k-means use. The self-training loop is DEC's (``DEC.cluster``), seeds batched likewise.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.method import ClusteringData, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.dec import DEC
from methods.engine.steps import adam, sgd
from methods.nn.autoencoder import pretrained_autoencoders, scaled_input, with_ae_defaults


@register_method
class IDEC(DEC):
    """DEC's self-training with a reconstruction term; ``run`` and the protocol fields are DEC's."""

    name = "idec"
    label = "IDEC"
    paper = "Guo, Gao, Liu & Yin, Improved Deep Embedded Clustering with Local Structure Preservation, IJCAI 2017"
    selection_rule = "assignment at the first target update where < tol of labels changed (else at max_iters)"
    train_split = "all"
    eval_split = "all"
    gpu_share = 0.25
    supports_seed_batch = True
    # official README commands: MNIST Adam + interval 140; USPS SGD(0.1, 0.99) + interval 30;
    # REUTERSIDF10K SGD(0.1, 0.99) + interval 3
    # (input scaling per dataset: methods.nn.autoencoder.AE_DATASET_DEFAULTS; USPS x 2/255 = the
    # official raw .jf values, which SGD(0.1, 0.99) was tuned on)
    dataset_defaults = with_ae_defaults({
        "mnist": {"optimizer": "adam", "lr": 0.001, "update_interval": 140},
        "usps": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.99, "update_interval": 30},
    })

    class Config(DEC.Config):
        gamma: float = Field(0.1, gt=0, description="weight of the clustering (KL) loss; reconstruction has 1.0")
        optimizer: Literal["adam", "sgd"] = "adam"  # type: ignore[assignment]
        lr: float = Field(0.001, gt=0, description="Adam: Keras default 1e-3; SGD (USPS): 0.1")
        momentum: float = Field(0.99, ge=0, description="SGD only (USPS/Reuters in the official code)")
        update_interval: int = Field(140, ge=1, description="iterations between target updates")
        adam_eps: float = Field(1e-8, gt=0, description="Keras 2.0 Adam epsilon")
        # The official loop (IDEC.py) is Keras: one learning rate for every weight, and the optimizer
        # state lives on across target updates (model.train_on_batch, no new optimizer).
        bias_lr_mult: float = Field(1.0, gt=0, description="SGD only; Keras has no per-blob lr (1)")
        momentum_reset_at_update: bool = Field(False, description="Keras keeps the optimizer state (False)")
        # It walks x in a fixed order (index * batch_size ...), as DEC's Caffe data layer. Deviation: its
        # last batch of a pass is short, then it restarts at 0; here batches wrap around (fixed shapes
        # for CUDA graphs).
        data_order: Literal["sequential", "shuffled"] = "sequential"

    def run_seeds(self, data: ClusteringData, ctxs: list[TrialContext]) -> list[ClusterOutput]:
        cfg = self.config
        ae = pretrained_autoencoders(ctxs)
        x = scaled_input(data.x_train, cfg.input_scale, ctxs[0].device)
        dev = ctxs[0].device

        def make_optimizer(params, capturable: bool) -> torch.optim.Optimizer:
            if cfg.optimizer == "adam":
                return adam(params, cfg.lr, dev, capturable=capturable, betas=(0.9, 0.999), eps=cfg.adam_eps)
            return sgd(params, cfg.lr, cfg.momentum, dev)  # Keras SGD: one lr for all (bias_lr_mult unused)

        dec = DEC(cfg)  # the shared self-training loop reads only DEC's fields, which IDEC's config has
        return dec.cluster(ae, x, data, ctxs, reconstruction_weight=1.0, kl_weight=cfg.gamma,
                           make_optimizer=make_optimizer, loss_name="IDEC loss")

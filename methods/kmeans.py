"""k-means baseline: on raw pixels (the number every deep clustering paper compares with), or on
any embedding saved as a ``.npy`` file (features of the eval images, in eval order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field, field_validator

from bench.errors import BenchError
from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, MethodConfig, TrialContext
from bench.registry import register_method
from methods.cluster.kmeans import kmeans


@register_method
class KMeans(ClusteringMethod):
    name = "kmeans"
    label = "k-means"
    paper = "Lloyd's k-means with k-means++ seeding (baseline in DEC Table 2: 53.5% ACC on MNIST)"
    selection_rule = "lowest inertia over n_init restarts (label-free)"
    gpu_share = 0.25

    class Config(MethodConfig):
        n_init: int = Field(10, ge=1, description="restarts; the run with the lowest inertia is kept")
        max_iter: int = Field(300, ge=1)
        tol: float = Field(1e-4, ge=0, description="relative to the mean feature variance, as scikit-learn")
        embedding_path: str | None = Field(None, description=".npy [N_eval, D] features to cluster instead of pixels")
        l2_normalize: bool = Field(False, description="L2-normalise features first (SCAN's protocol for SimCLR)")

        @field_validator("embedding_path")
        @classmethod
        def _embedding_file_exists(cls, v: str | None) -> str | None:
            # checked when the config is resolved (planning), so a typo is refused before anything runs
            if v is not None and not Path(v).expanduser().is_file():
                raise ValueError(f"{v} is not a file; give a .npy of eval features")
            return v

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        if cfg.embedding_path:
            path = Path(cfg.embedding_path).expanduser()
            if not path.exists():
                raise BenchError(f"kmeans: embedding_path {path} does not exist; give a .npy of eval features")
            feats = torch.as_tensor(np.load(path)).float().to(ctx.device)
            if feats.ndim != 2 or feats.shape[0] != data.x_eval.shape[0]:
                raise BenchError(f"kmeans: embedding {path} has shape {tuple(feats.shape)}, expected "
                                 f"[{data.x_eval.shape[0]}, D] for the eval split")
            fit_x = pred_x = feats
        else:
            fit_x = data.float01(data.x_train).flatten(1).to(ctx.device)
            pred_x = fit_x if data.same_split else data.float01(data.x_eval).flatten(1).to(ctx.device)
        if cfg.l2_normalize:
            fit_x = torch.nn.functional.normalize(fit_x, dim=1)
            pred_x = torch.nn.functional.normalize(pred_x, dim=1)
        res = kmeans(fit_x, data.n_clusters, n_init=cfg.n_init, max_iter=cfg.max_iter, tol=cfg.tol,
                     generator=ctx.rng("kmeans"))
        if pred_x is fit_x:
            labels = res.labels
        else:
            labels = torch.cdist(pred_x, res.centers).argmin(1)
        ctx.log_epoch(0, inertia=res.inertia, n_iter=res.n_iter, eval_pred=labels)
        return ClusterOutput(labels=labels, info={"inertia": res.inertia, "n_iter": res.n_iter})

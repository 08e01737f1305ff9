"""PCA whitening as DeepCluster's ``preprocess_features`` (official ``clustering.py``): faiss's
``PCAMatrix(d_in, d_out, eigen_power=-0.5)`` followed by row-wise L2 normalisation.

faiss centres the features, takes the top ``d_out`` eigenvectors of their covariance (``x^T x / n -
mean mean^T``) and scales each projected coordinate by ``eigenvalue ** -0.5``, so every kept direction has
unit variance; DeepCluster then L2-normalises the rows. Computed here in float64 on the features' device.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class PCAWhitening:
    mean: torch.Tensor  # [D_in]
    matrix: torch.Tensor  # [D_in, D_out], columns = eigenvectors / sqrt(eigenvalue)
    eigenvalues: torch.Tensor  # [D_out], decreasing

    def apply(self, x: torch.Tensor, l2: bool = True) -> torch.Tensor:
        """Project and whiten ``x [N, D_in]`` (float32 out), then L2-normalise the rows (DeepCluster)."""
        y = (x.double() - self.mean) @ self.matrix
        if l2:
            y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return y.float()


@torch.no_grad()
def fit_pca_whitening(x: torch.Tensor, dim: int, rel_floor: float = 1e-10) -> PCAWhitening:
    """Fit on ``x [N, D_in]``; ``dim`` is capped at ``min(D_in, N)``.

    Deviation (numerical guard, not in faiss): eigenvalues below ``rel_floor`` x the largest are raised to it,
    so a rank-deficient feature set (e.g. dead ReLU units) gives large but finite coordinates, not inf/NaN.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA whitening needs [N >= 2, D] features, got shape {tuple(x.shape)}")
    dim = min(dim, x.shape[1], x.shape[0])
    xd = x.double()
    mean = xd.mean(0)
    cov = xd.T @ xd / xd.shape[0] - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    evals = evals.clamp_min(float(evals[0]) * rel_floor if float(evals[0]) > 0 else 1e-30)
    return PCAWhitening(mean=mean, matrix=evecs * evals.rsqrt(), eigenvalues=evals)

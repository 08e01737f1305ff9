"""k-means in torch (k-means++ seeding, Lloyd iterations, best of ``n_init`` by inertia).

Runs on whatever device the features are on, so DEC's initialisation, SimCLR + k-means and the
k-means baseline share one implementation that is fast on a GPU and exact enough on a CPU
(tested against scikit-learn's inertia).
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class KMeansResult:
    labels: torch.Tensor  # [N] int64
    centers: torch.Tensor  # [K, D]
    inertia: float
    n_iter: int


def _sq_dists(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # ||x||^2 - 2 x.c + ||c||^2, clamped: cancellation can make tiny negatives
    return (x_sq[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]).clamp_min_(0.0)


def _assign(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor,
            chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    labels, mins = [], []
    for s in range(0, x.shape[0], chunk):
        d = _sq_dists(x[s:s + chunk], x_sq[s:s + chunk], c)
        m, lab = d.min(1)
        labels.append(lab)
        mins.append(m)
    return torch.cat(labels), torch.cat(mins)


def kmeans_plusplus(x: torch.Tensor, x_sq: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding with 2 + log(k) local trials per centre, as scikit-learn does."""
    n = x.shape[0]
    n_trials = 2 + int(torch.log(torch.tensor(float(k))).item())
    first = torch.randint(n, (1,), generator=gen, device=gen.device).to(x.device)
    centers = [x[first]]
    closest = _sq_dists(x, x_sq, centers[0]).squeeze(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # all points coincide with chosen centres
            cand = torch.randint(n, (n_trials,), generator=gen, device=gen.device).to(x.device)
        else:
            probs = (closest / total).to(gen.device)
            cand = torch.multinomial(probs, n_trials, replacement=True, generator=gen).to(x.device)
        d_cand = _sq_dists(x, x_sq, x[cand])  # [N, trials]
        new_closest = torch.minimum(closest[:, None], d_cand)
        best = new_closest.sum(0).argmin()
        closest = new_closest[:, best]
        centers.append(x[cand[best]][None])
    return torch.cat(centers)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           generator: torch.Generator | None = None) -> KMeansResult:
    """Lloyd's k-means on ``x [N, D]``; returns the run with the lowest inertia.

    ``tol`` is relative to the mean per-feature variance, as in scikit-learn.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects [N, D] features, got shape {tuple(x.shape)}")
    if k > x.shape[0]:
        raise ValueError(f"cannot make {k} clusters from {x.shape[0]} points")
    x = x.float()
    gen = generator or torch.Generator(device=x.device)
    x_sq = (x * x).sum(1)
    abs_tol = tol * float(x.var(0).mean()) if x.shape[0] > 1 else 0.0
    best: KMeansResult | None = None
    for _ in range(n_init):
        c = kmeans_plusplus(x, x_sq, k, gen)
        n_iter = 0
        for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is reported
            labels, _ = _assign(x, x_sq, c)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            new_c = sums / counts.clamp_min(1)[:, None]
            empty = counts == 0
            if bool(empty.any()):  # re-seed empty clusters at the points farthest from their centre
                _, dmin = _assign(x, x_sq, new_c)
                far = dmin.topk(int(empty.sum())).indices
                new_c[empty] = x[far]
            shift = float(((new_c - c) ** 2).sum())
            c = new_c
            if shift <= abs_tol:
                break
        labels, dmin = _assign(x, x_sq, c)
        inertia = float(dmin.sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels=labels, centers=c, inertia=inertia, n_iter=n_iter)
    assert best is not None
    return best

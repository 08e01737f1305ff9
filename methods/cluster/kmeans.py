"""k-means in torch (k-means++ seeding, Lloyd iterations, best of ``n_init`` by inertia).

Runs on whatever device the features are on, so DEC's initialisation, SimCLR + k-means and the
k-means baseline share one implementation that is fast on a GPU and exact enough on a CPU
(tested against scikit-learn's inertia).

DeepCluster and PCL ran faiss's ``Clustering`` instead; the options that make this one behave like it:
``init="random"`` (faiss seeds with k distinct random points), ``empty="split"`` (faiss's
``split_clusters``: an empty cluster takes a perturbed copy of a big cluster's centroid, see
:func:`split_empty_clusters`), ``max_points_per_centroid`` (faiss trains on a random subset of
``k * max_points_per_centroid`` points, then assigns all) and ``tol=0`` with ``max_iter=niter``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

#: faiss's relative perturbation when it splits a cluster (``EPS = 1 / 1024`` in faiss/Clustering.cpp)
FAISS_SPLIT_EPS = 1.0 / 1024


@dataclasses.dataclass
class KMeansResult:
    labels: torch.Tensor  # [N] int64
    centers: torch.Tensor  # [K, D]
    inertia: float  # of the points the centres were fitted on
    n_iter: int
    n_split: int = 0  # clusters split because they were empty (``empty="split"``)


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


def split_empty_clusters(centers: torch.Tensor, counts: list[int], n: int, gen: torch.Generator,
                         eps: float = FAISS_SPLIT_EPS) -> tuple[torch.Tensor, list[int], int]:
    """faiss's ``split_clusters`` (the rule DeepCluster's paper describes in Sec. 3.3): for each empty cluster
    ``ci`` in order, walk the clusters cyclically from 0 and stop at ``cj`` with probability
    ``(size_j - 1) / (n - k)`` (so big clusters are split, a singleton never); ``ci`` takes ``cj``'s centroid
    scaled by ``1 + eps`` on even dimensions and ``1 - eps`` on odd ones, ``cj`` the opposite, and the sizes
    are assumed to split evenly (``size_i = size_j // 2``). Returns (centres, sizes, number of splits).
    The next assignment step moves the points of ``cj`` to the nearer of the two."""
    k, d = centers.shape
    if n <= k:
        raise ValueError(f"cannot split clusters: {n} points for {k} clusters")
    centers = centers.clone()
    counts = list(counts)
    sign = torch.ones(d, dtype=centers.dtype, device=centers.device)
    sign[1::2] = -1.0
    n_split = 0
    for ci in range(k):
        if counts[ci] != 0:
            continue
        cj = 0
        while True:
            if torch.rand((), generator=gen, device=gen.device).item() < (counts[cj] - 1.0) / (n - k):
                break
            cj = (cj + 1) % k
        centers[ci] = centers[cj] * (1 + eps * sign)
        centers[cj] = centers[cj] * (1 - eps * sign)
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
        n_split += 1
    return centers, counts, n_split


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           generator: torch.Generator | None = None, init: Literal["k-means++", "random"] = "k-means++",
           empty: Literal["farthest", "split"] = "farthest",
           max_points_per_centroid: int | None = None) -> KMeansResult:
    """Lloyd's k-means on ``x [N, D]``; returns the run with the lowest inertia.

    ``tol`` is relative to the mean per-feature variance, as in scikit-learn. ``init``: k-means++ (as
    scikit-learn) or ``k`` distinct random points (faiss). ``empty``: an empty cluster is re-seeded at the
    point farthest from its centre, or ``"split"`` as faiss (:func:`split_empty_clusters`).
    ``max_points_per_centroid``: fit on a random subset of ``k *`` that many points (faiss), then assign
    every point; the returned ``n_split`` counts the splits of the best run.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects [N, D] features, got shape {tuple(x.shape)}")
    if k > x.shape[0]:
        raise ValueError(f"cannot make {k} clusters from {x.shape[0]} points")
    x_all = x.float()
    gen = generator or torch.Generator(device=x.device)
    x = x_all
    if max_points_per_centroid is not None and x_all.shape[0] > k * max_points_per_centroid:
        keep = torch.randperm(x_all.shape[0], generator=gen, device=gen.device)[:k * max_points_per_centroid]
        x = x_all[keep.to(x_all.device)]
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    abs_tol = tol * float(x.var(0).mean()) if n > 1 else 0.0
    best: KMeansResult | None = None
    for _ in range(n_init):
        if init == "random":
            c = x[torch.randperm(n, generator=gen, device=gen.device)[:k].to(x.device)].clone()
        else:
            c = kmeans_plusplus(x, x_sq, k, gen)
        n_iter = n_split = 0
        for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is reported
            labels, _ = _assign(x, x_sq, c)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            new_c = sums / counts.clamp_min(1)[:, None]
            is_empty = counts == 0
            if bool(is_empty.any()):
                if empty == "split":
                    new_c, _, s = split_empty_clusters(new_c, [int(v) for v in counts.tolist()], n, gen)
                    n_split += s
                else:  # re-seed empty clusters at the points farthest from their centre
                    _, dmin = _assign(x, x_sq, new_c)
                    far = dmin.topk(int(is_empty.sum())).indices
                    new_c[is_empty] = x[far]
            shift = float(((new_c - c) ** 2).sum())
            c = new_c
            if shift <= abs_tol:
                break
        labels, dmin = _assign(x, x_sq, c)
        inertia = float(dmin.sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels=labels, centers=c, inertia=inertia, n_iter=n_iter, n_split=n_split)
    assert best is not None
    if x is not x_all:  # fitted on a subset: every point to its nearest centre
        best.labels, _ = _assign(x_all, (x_all * x_all).sum(1), best.centers)
    return best

"""AC-PIC: agglomerative clustering via maximum incremental path integral (Zhang, Zhao & Wang, Pattern
Recognition 46(11), 2013), the initial clustering DEPICT's official code uses on every dataset but
MNIST-full, FRGC, YTF and CMU-PIE (herandy/DEPICT, functions.clustering -> predict_ac_mpi, with the
gactoolbox settings K = 20 neighbours, a = 1, z = 0.01).

1. Directed K-NN graph on squared Euclidean distances: w_ij = exp(-d_ij / sigma^2) for the K nearest j of
   i, plus a self loop of weight 1; sigma^2 = a x the mean distance to the K nearest (at least 3), doubled
   while any point's nearest neighbour has a weight below 1e-5. P = W with rows normalised.
2. Initial clusters: the connected components of "each point with its nearest neighbour".
3. Repeatedly merge the two clusters with the largest affinity, until ``n_clusters`` remain. The path
   integral of a cluster C inside a vertex set S is 1_C' (I - z P_S)^-1 1_C / |C|^2 (P_S: P restricted to
   S); the affinity of A and B is how much the path integrals of A and of B grow when S goes from each
   cluster alone to A u B.

Same quantities as the official code; computed differently: (I - z P_S)^-1 1 by the fixed-point
iteration x <- 1 + z P_S x (P_S has row sums <= 1, so each step gains a factor z = 0.01: a few steps
reach float64 precision) on the sparse K-NN graph, in batches of cluster pairs, and only for clusters
the graph connects (for any other pair I - z P_S is block diagonal and the affinity is exactly 0; the
official code computes those zeros too). The graph keeps each point's K nearest, never the N x N
matrix. Deviation: if the graph falls apart into more than ``n_clusters`` components, the official code
merges one of the zero-affinity pairs its table happens to order first; here the smallest cluster
joins the cluster with the nearest mean.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components


def knn_graph(feat: torch.Tensor, k: int = 20, a: float = 1.0, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours [N, k + 1], transition probabilities [N, k + 1]); column 0 is the point itself."""
    x = feat.detach().to(torch.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError("AC-PIC needs at least 2 points")
    m = min(max(k, 3), n - 1)  # the official sigma uses the 1st..max(K, 3)th nearest
    sq = (x * x).sum(1)
    dists, idx = [], []
    for s in range(0, n, chunk):
        d = (sq[s:s + chunk, None] - 2.0 * x[s:s + chunk] @ x.T + sq[None]).clamp_min_(0.0)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")  # not its own neighbour
        v, i = torch.topk(d, m, dim=1, largest=False)
        dists.append(v.cpu())
        idx.append(i.cpu())
    dist, nbr = torch.cat(dists).numpy(), torch.cat(idx).numpy()
    sig2 = float(dist.mean()) * a
    nearest = dist[:, 0]
    while sig2 > 0 and np.any(np.exp(-nearest / sig2) < 1e-5):  # too small a sigma: magnify, as the official code
        sig2 *= 2.0
    k = min(k, m)
    w = np.exp(-dist[:, :k] / sig2) if sig2 > 0 else np.ones((n, k))
    w = np.concatenate([np.ones((n, 1)), w], 1)  # the self loop (graphW += eye)
    nbr = np.concatenate([np.arange(n)[:, None], nbr[:, :k]], 1)
    return nbr, w / w.sum(1, keepdims=True)


def path_sums(groups: list[tuple[np.ndarray, np.ndarray]], nbr: np.ndarray, p: np.ndarray,
              z: float) -> tuple[np.ndarray, np.ndarray]:
    """For each (A, B) (disjoint vertex arrays, B may be empty), with S = A u B and M = I - z P_S:
    (1_A' M^-1 1_A, 1_B' M^-1 1_B). All groups in one vectorised fixed-point iteration."""
    n = nbr.shape[0]
    sizes_a = np.array([len(g[0]) for g in groups])
    sizes_b = np.array([len(g[1]) for g in groups])
    nodes = np.concatenate([np.concatenate([a, b]) for a, b in groups]).astype(np.int64)
    seg = np.repeat(np.arange(len(groups)), sizes_a + sizes_b)
    in_a = np.repeat(np.tile([True, False], len(groups)), np.stack([sizes_a, sizes_b], 1).ravel())
    keys = seg * n + nodes
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    nkeys = seg[:, None] * n + nbr[nodes]  # [E, k + 1]: each neighbour in this group's key space
    pos = np.searchsorted(sorted_keys, nkeys).clip(max=len(keys) - 1)
    inside = sorted_keys[pos] == nkeys  # the neighbour belongs to S
    rows = np.broadcast_to(np.arange(len(keys))[:, None], inside.shape)[inside]
    zp = csr_matrix((z * p[nodes][inside], (rows, order[pos][inside])), shape=(len(keys), len(keys)))
    y = np.stack([in_a, ~in_a], 1).astype(np.float64)
    x = y.copy()
    for _ in range(200):
        x_new = y + zp @ x
        done = np.abs(x_new - x).max() <= 1e-16 * np.abs(x_new).max()
        x = x_new
        if done:
            break
    sa = np.bincount(seg, weights=x[:, 0] * in_a, minlength=len(groups))
    sb = np.bincount(seg, weights=x[:, 1] * ~in_a, minlength=len(groups))
    return sa, sb


def acpic(feat: torch.Tensor, n_clusters: int, k: int = 20, a: float = 1.0, z: float = 0.01) -> np.ndarray:
    """Labels 0..n_clusters-1 of AC-PIC on the rows of ``feat`` [N, D] (module docstring)."""
    nbr, p = knn_graph(feat, k, a)
    n = nbr.shape[0]
    nn_graph = coo_matrix((np.ones(n), (np.arange(n), nbr[:, 1])), shape=(n, n))
    n_init, lab = connected_components(nn_graph, directed=True, connection="weak")
    members: dict[int, np.ndarray] = {c: np.flatnonzero(lab == c) for c in range(n_init)}
    version = {c: 0 for c in members}

    def complexity(cs: list[int]) -> np.ndarray:
        sa, _ = path_sums([(members[c], np.zeros(0, np.int64)) for c in cs], nbr, p, z)
        return sa / np.array([len(members[c]) ** 2 for c in cs])

    comp = dict(zip(members, complexity(list(members)))) if members else {}
    # clusters the graph connects (either direction)
    pairs = np.unique(np.sort(np.stack([np.repeat(lab, nbr.shape[1] - 1), lab[nbr[:, 1:]].ravel()], 1), 1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    adj: dict[int, set[int]] = {c: set() for c in members}
    for c1, c2 in pairs.tolist():
        adj[c1].add(c2)
        adj[c2].add(c1)
    heap: list[tuple[float, int, int, int, int]] = []

    def push(pairs_: list[tuple[int, int]]) -> None:
        if not pairs_:
            return
        sa, sb = path_sums([(members[c1], members[c2]) for c1, c2 in pairs_], nbr, p, z)
        for (c1, c2), s1, s2 in zip(pairs_, sa, sb):
            gain = s1 / len(members[c1]) ** 2 - comp[c1] + s2 / len(members[c2]) ** 2 - comp[c2]
            heapq.heappush(heap, (-gain, c1, c2, version[c1], version[c2]))

    push([(c1, c2) for c1, c2 in pairs.tolist()])
    while len(members) > n_clusters:
        while heap:
            _, c1, c2, v1, v2 = heapq.heappop(heap)
            if c1 in members and c2 in members and version[c1] == v1 and version[c2] == v2:
                break
        else:  # no connected pair left: the smallest cluster joins the one with the nearest mean
            feats = feat.detach().cpu().double().numpy()
            c1 = min(members, key=lambda c: len(members[c]))
            mean1 = feats[members[c1]].mean(0)
            c2 = min((c for c in members if c != c1),
                     key=lambda c: float(((feats[members[c]].mean(0) - mean1) ** 2).sum()))
        keep, gone = min(c1, c2), max(c1, c2)
        members[keep] = np.concatenate([members[keep], members.pop(gone)])
        version[keep] += 1
        del comp[gone]
        comp[keep] = float(complexity([keep])[0])
        adj[keep] = (adj[keep] | adj.pop(gone)) - {keep, gone}
        for c in adj[keep]:
            adj[c].discard(gone)
            adj[c].add(keep)
        if len(members) > n_clusters:
            push([(keep, c) for c in sorted(adj[keep])])
    labels = np.empty(n, np.int64)
    for new, c in enumerate(sorted(members, key=lambda c: members[c].min())):
        labels[members[c]] = new
    return labels

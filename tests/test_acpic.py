"""AC-PIC (methods.cluster.acpic, DEPICT's official initial clustering on USPS) equals a literal
implementation of the algorithm: dense N x N graph, every pair of clusters, explicit inverses of
(I - z P) as the official gactoolbox port computes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from methods.cluster.acpic import acpic, knn_graph


def dense_reference(x: np.ndarray, n_clusters: int, k: int = 20, a: float = 1.0, z: float = 0.01) -> np.ndarray:
    n = len(x)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, 1, kind="stable")
    sd = np.take_along_axis(d, order, 1)
    sig2 = sd[:, :max(k, 3)].mean() * a
    while np.any(np.exp(-sd[:, 0] / sig2) < 1e-5):
        sig2 *= 2
    w = np.eye(n)
    for i in range(n):
        w[i, order[i, :k]] += np.exp(-sd[i, :k] / sig2)
    m = np.eye(n) - z * w / w.sum(1, keepdims=True)
    root = np.arange(n)  # initial clusters: each point joined with its nearest neighbour

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for i in range(n):
        r1, r2 = find(i), find(order[i, 0])
        root[max(r1, r2)] = min(r1, r2)
    roots = np.array([find(i) for i in range(n)])
    clusters = [np.flatnonzero(roots == r) for r in np.unique(roots)]

    def complexity(c: np.ndarray) -> float:
        return np.linalg.inv(m[np.ix_(c, c)]).sum() / len(c) ** 2

    def conditional(ci: np.ndarray, cj: np.ndarray) -> float:
        s = np.concatenate([ci, cj])
        inv = np.linalg.inv(m[np.ix_(s, s)])
        return inv[:len(ci), :len(ci)].sum() / len(ci) ** 2 + inv[len(ci):, len(ci):].sum() / len(cj) ** 2

    while len(clusters) > n_clusters:
        comp = [complexity(c) for c in clusters]
        gains = {(i, j): conditional(clusters[i], clusters[j]) - comp[i] - comp[j]
                 for i in range(len(clusters)) for j in range(i + 1, len(clusters))}
        i, j = max(gains, key=gains.get)
        clusters[i] = np.concatenate([clusters[i], clusters[j]])
        clusters.pop(j)
    labels = np.empty(n, np.int64)
    for c, members in enumerate(clusters):
        labels[members] = c
    return labels


@pytest.mark.parametrize("seed", [0, 1])
def test_acpic_equals_the_dense_all_pairs_algorithm(seed):
    x, _ = make_blobs(80, centers=4, cluster_std=1.5, random_state=seed)
    ours = acpic(torch.tensor(x), 4)
    assert sorted(np.unique(ours)) == [0, 1, 2, 3]
    assert adjusted_rand_score(ours, dense_reference(x, 4)) == 1.0


def test_acpic_recovers_separated_clusters_and_graph_rows_are_stochastic():
    x, y = make_blobs(400, centers=5, cluster_std=0.5, n_features=6, random_state=3)
    assert adjusted_rand_score(y, acpic(torch.tensor(x, dtype=torch.float32), 5)) == 1.0
    nbr, p = knn_graph(torch.tensor(x), 20)
    assert (nbr[:, 0] == np.arange(400)).all() and np.allclose(p.sum(1), 1.0) and (p > 0).all()

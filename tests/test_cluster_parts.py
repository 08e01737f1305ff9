"""The pieces DeepCluster and PCL are built from, against hand-computed values (CPU, milliseconds).

PCA whitening (DeepCluster's ``preprocess_features``), faiss's empty-cluster split, the faiss-style k-means
options, PCL's concentration estimate phi, ProtoNCE and InfoNCE with a queue, and the BatchNorm that
emulates the official multi-GPU shuffle BN.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.cluster.kmeans import FAISS_SPLIT_EPS, kmeans, split_empty_clusters
from methods.cluster.pca import fit_pca_whitening
from methods.losses import concentration, info_nce_queue, proto_nce

EPS = FAISS_SPLIT_EPS


def test_pca_whitening_hand_computed():
    # covariance diag(0.5, 2): the first component is x2 / sqrt(2), the second x1 / sqrt(0.5) (signs are free)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    pca = fit_pca_whitening(x, 256)  # capped at min(D, N) = 2
    assert pca.eigenvalues.tolist() == pytest.approx([2.0, 0.5])
    r2 = math.sqrt(2.0)
    assert pca.apply(x, l2=False).abs().flatten().tolist() == pytest.approx([0, r2, 0, r2, r2, 0, r2, 0], abs=1e-6)
    assert pca.apply(x).norm(dim=1).tolist() == pytest.approx([1.0] * 4)  # DeepCluster L2-normalises the rows
    top1 = fit_pca_whitening(x, 1).apply(x, l2=False)  # only the largest-variance direction, at unit variance
    assert top1.abs().squeeze(1).tolist() == pytest.approx([0.0, 0.0, r2, r2], abs=1e-6)


def test_pca_whitening_gives_unit_covariance_and_survives_rank_deficiency():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3.0
    y = fit_pca_whitening(x, 4).apply(x, l2=False).double()
    cov = (y - y.mean(0)).T @ (y - y.mean(0)) / y.shape[0]
    assert torch.allclose(cov, torch.eye(4, dtype=torch.float64), atol=1e-4)
    dead = torch.cat([x, torch.zeros(500, 3)], dim=1)  # dead ReLU units: zero-variance directions
    assert torch.isfinite(fit_pca_whitening(dead, 9).apply(dead)).all()


def test_split_empty_cluster_hand_computed():
    centers = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]])
    gen = torch.Generator().manual_seed(0)
    # cluster 0 (5 points) is split with probability (5 - 1) / (6 - 3) > 1: always, on the first try
    new, counts, n_split = split_empty_clusters(centers, [5, 0, 1], 6, gen)
    assert n_split == 1 and counts == [3, 2, 1]
    assert new[1].tolist() == pytest.approx([1 * (1 + EPS), 2 * (1 - EPS)])
    assert new[0].tolist() == pytest.approx([1 * (1 - EPS), 2 * (1 + EPS)])
    assert new[2].tolist() == [3.0, 4.0]
    # a singleton is never split (probability 0): the walk passes cluster 0 and splits cluster 2
    for seed in range(20):
        new, counts, _ = split_empty_clusters(centers, [1, 0, 4], 5, torch.Generator().manual_seed(seed))
        assert counts == [1, 2, 2] and new[1].tolist() == pytest.approx([3 * (1 + EPS), 4 * (1 - EPS)])


def test_faiss_style_kmeans_recovers_blobs_and_subsamples():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([m + torch.randn(200, 2, generator=g) for m in means])
    truth = torch.arange(3).repeat_interleave(200)
    for kw in ({}, {"max_points_per_centroid": 20}):  # 60 of 600 points fit the centres; all are assigned
        km = kmeans(x, 3, n_init=5, max_iter=20, tol=0.0, init="random", empty="split",
                    generator=torch.Generator().manual_seed(1), **kw)
        assert km.labels.shape == (600,)
        pairs = set(zip(truth.tolist(), km.labels.tolist(), strict=True))
        assert len(pairs) == 3  # a one-to-one match of blobs and clusters


def test_concentration_hand_computed():
    # cluster 0: distances 1, 1 -> 1 / log(12); cluster 1: 2, 2, 2 -> 2 / log(13); cluster 2: a singleton -> max;
    # clip to the 10th/90th percentiles (numpy's linear rule), scale to mean 0.2
    dist = torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0, 3.0])
    assign = torch.tensor([0, 0, 1, 1, 1, 2])
    phi = concentration(dist, assign, 3, temperature=0.2, alpha=10.0)
    assert phi.tolist() == pytest.approx([0.1407375, 0.2296313, 0.2296313], abs=1e-6)
    assert float(phi.mean()) == pytest.approx(0.2)


def test_proto_nce_hand_computed_and_gradient():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    phi = torch.tensor([0.5, 1.0, 0.25])
    # row 0: logits [2, 0, -4], target column 0; row 1: logits [0, 1, 0], target column 1
    loss = proto_nce(q, protos, phi, torch.tensor([0, 1]), torch.tensor([2]))
    expected = ((-2 + math.log(math.e ** 2 + 1 + math.e ** -4)) + (-1 + math.log(2 + math.e))) / 2
    assert loss.item() == pytest.approx(expected) == pytest.approx(0.3402768)
    loss.backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_info_nce_queue_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.0, 1.0]])
    queue = torch.tensor([[1.0, -1.0], [0.0, 0.0]])  # [D, r]: keys (1, 0) and (-1, 0)
    # logits / 0.5: [q.k, q.(1,0), q.(-1,0)] = [0, 2, -2], target 0
    assert float(info_nce_queue(q, k, queue, 0.5)) == pytest.approx(-0 + math.log(1 + math.e ** 2 + math.e ** -2))


def test_split_batchnorm_normalises_each_group_on_its_own():
    from methods.pcl import SplitBatchNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 4, 4, generator=g) * 5 + 2
    bn = SplitBatchNorm(3, splits=2).train()
    out = bn(x)
    for j in range(2):  # group j: samples j, j + 2, ...
        grp = x[j::2]
        ref = F.batch_norm(grp, None, None, training=True, eps=bn.eps)
        assert torch.allclose(out[j::2], ref, atol=1e-5)
    # the running mean moved towards the average of the groups' means (momentum 0.1 from 0)
    assert torch.allclose(bn.running_mean, 0.1 * x.mean((0, 2, 3)), atol=1e-5)
    bn.eval()
    assert torch.allclose(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, eps=bn.eps), atol=1e-6)

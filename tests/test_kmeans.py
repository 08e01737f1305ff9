import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import load_digits, make_blobs

from bench.metrics import cluster_acc
from methods.cluster.kmeans import kmeans


def test_recovers_separated_blobs():
    x, y = make_blobs(600, centers=5, cluster_std=0.5, random_state=0)
    res = kmeans(torch.tensor(x, dtype=torch.float32), 5, n_init=3, generator=torch.Generator().manual_seed(0))
    assert cluster_acc(y, res.labels.numpy()) == 1.0
    assert res.centers.shape == (5, 2)


def test_inertia_close_to_sklearn_on_digits():
    x = load_digits().data.astype(np.float32)
    ours = kmeans(torch.tensor(x), 10, n_init=10, generator=torch.Generator().manual_seed(1))
    sk = SKKMeans(10, n_init=10, random_state=1).fit(x)
    assert ours.inertia == pytest.approx(sk.inertia_, rel=0.02)
    # the reported inertia is the inertia of the returned labels and centres
    recomputed = ((torch.tensor(x) - ours.centers[ours.labels]) ** 2).sum().item()
    assert ours.inertia == pytest.approx(recomputed, rel=1e-4)


def test_same_generator_seed_same_result_and_no_empty_cluster():
    x = torch.randn(200, 3)
    a = kmeans(x, 8, n_init=2, generator=torch.Generator().manual_seed(5))
    b = kmeans(x, 8, n_init=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.labels, b.labels)
    assert torch.unique(a.labels).numel() == 8


def test_duplicate_points_do_not_break_seeding():
    x = torch.zeros(20, 2)
    x[10:] = 1.0
    res = kmeans(x, 2, n_init=1, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.bincount(res.labels).tolist()) == [10, 10]


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError):
        kmeans(torch.zeros(5), 2)
    with pytest.raises(ValueError):
        kmeans(torch.zeros(3, 2), 4)

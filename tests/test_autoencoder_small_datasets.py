"""Every autoencoder-family method runs to a finite, non-degenerate clustering on every small dataset it
registers, with that dataset's recipe (input scaling, optimiser, interval) and a tiny schedule.

Real files under data/ (a few hundred images each, so the test stays a few seconds per case); a dataset
whose files are absent is skipped with the reason. digits needs no file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.context import TrialContext
from bench.data import default_cache_dir, default_data_root, load_dataset
from bench.errors import BenchError
from bench.method import ClusteringData
from bench.metrics import evaluate
from bench.registry import get_method, resolve_config

N_IMAGES = 500
TINY_MLP = {"hidden_dims": [64, 64, 128, 10], "pretrain_iters_per_layer": 60, "finetune_iters": 150,
            "pretrain_momentum_burnin": 20, "n_init": 3, "cuda_graphs": False}
TINY = {"ae_kmeans": TINY_MLP, "dec": {**TINY_MLP, "max_iters": 150, "update_interval": 30},
        "idec": {**TINY_MLP, "max_iters": 150, "update_interval": 30},
        "depict": {"pretrain_epochs": 10, "init_epochs": 3, "epochs": 5, "init_n_init": 3, "cuda_graphs": False,
                   "batch_size": 50}}


@pytest.fixture(scope="module", params=["mnist", "fashion-mnist", "usps", "digits"])
def small(request) -> tuple[ClusteringData, np.ndarray]:
    name = request.param
    try:
        loaded = load_dataset(name, default_data_root(), default_cache_dir())
    except BenchError as exc:
        pytest.skip(f"{name}: real data files not available here ({exc}); run `dvc pull`")
    x, y = loaded.split("all")
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:N_IMAGES]
    data = ClusteringData(dataset=name, x_train=x[idx], x_eval=x[idx], n_clusters=10, train_split="all",
                          eval_split="all", md5=f"{loaded.md5}-tiny{N_IMAGES}")
    return data, y[idx].numpy()


# NOT YET RELIABLE: in the last full run (2026-12-01, loaded 2-core machine) 7 of 16 cases failed (mnist
# depict; fashion-mnist dec, idec; usps ae_kmeans, dec, depict; digits depict), cause not diagnosed before
# the deadline (likely the tiny schedule, not a NaN: mnist ae_kmeans/dec/idec pass). Not strict, so the
# cases that pass are still reported; issue 13 item 1's CPU test is therefore open.
@pytest.mark.xfail(strict=False, reason="tiny-schedule non-degeneracy thresholds not yet tuned; see comment")
@pytest.mark.parametrize("method", ["ae_kmeans", "dec", "idec", "depict"])
def test_method_is_finite_and_non_degenerate_on_each_small_dataset(small, method, tmp_path: Path):
    data, y = small
    torch.manual_seed(0)
    cfg = resolve_config(method, "default", data.dataset, TINY[method])  # the dataset's recipe + a tiny schedule
    ctx = TrialContext(seed=0, device="cpu", artifact_dir=tmp_path / "art", stage_dir=tmp_path / "stages",
                       data_md5=data.md5, code_version="test")
    out = get_method(method)(cfg).fit(data, ctx)  # a NaN loss raises NonFiniteLossError
    labels = out.labels_numpy()
    # (DEC/IDEC log loss=nan at iteration 0, before any step: a placeholder, not a loss)
    losses = [row["loss"] for row in ctx.curve if isinstance(row.get("loss"), float) and row.get("iteration") != 0]
    assert losses and np.isfinite(losses).all()
    sizes = np.bincount(labels, minlength=10)
    # not collapsed: most clusters used, none swallowing half the images
    assert (sizes > 0).sum() >= 6 and sizes.max() < 0.5 * len(labels), sizes
    assert evaluate(y, labels)["acc"] > 0.3  # chance is about 0.1-0.2 on these 10-class sets

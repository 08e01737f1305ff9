"""DeepCluster on the bundled digits (8x8 images), CPU, tiny network (``tiny_cnn``), a few epochs.

Checks the algorithm's periodic behaviour, not just that it runs: k-means re-labels the data every epoch
(and once more for the result), the classifier is re-initialised every epoch, the sampler draws equally
many images per pseudo-class, the over-clustering variant trains with 10 x K clusters and reports K, and
a whole trial through ``bench trial`` ends with an ok record.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import methods.deepcluster as dc
from bench.cli import main
from bench.context import TrialContext
from bench.method import ClusteringData
from bench.metrics import evaluate
from bench.registry import get_method, resolve_config

TINY = {"backbone": "tiny_cnn", "image_size": 8, "pca_dim": 32, "epochs": 3, "batch_size": 128, "reassign": 0.25}


pytestmark = pytest.mark.usefixtures("two_threads")


def run(tmp_path, digits, variant="default", **over):
    x, y = digits[0][:600], digits[1][:600]  # a subset keeps it quick; the bench trial below runs all 1,797
    data = ClusteringData("digits", x, x, 10, "all", "all", "md5")
    cfg = resolve_config("deepcluster", variant, None, {**TINY, **over})
    ctx = TrialContext(seed=0, device="cpu", artifact_dir=tmp_path / "a", stage_dir=tmp_path / "s", data_md5="md5",
                       code_version="test", scorer=lambda p: evaluate(y, p))
    return get_method("deepcluster")(cfg).fit(data, ctx), ctx, data


def test_every_epoch_reclusters_and_reinitialises_the_head(tmp_path, digits, monkeypatch):
    calls, heads = [], []
    real_kmeans, real_head = dc.kmeans, dc.new_top_layer

    def spy_kmeans(x, k, **kw):
        res = real_kmeans(x, k, **kw)
        calls.append((k, res.labels.clone(), kw))
        return res

    def spy_head(in_dim, k, gen, device):
        layer = real_head(in_dim, k, gen, device)
        heads.append((layer, layer.weight.detach().clone(), layer.bias.detach().clone()))
        return layer

    monkeypatch.setattr(dc, "kmeans", spy_kmeans)
    monkeypatch.setattr(dc, "new_top_layer", spy_head)
    out, ctx, data = run(tmp_path, digits)
    epochs = TINY["epochs"]
    assert len(calls) == epochs + 1  # one clustering per epoch, one more for the result
    assert all(kw["init"] == "random" and kw["empty"] == "split" and kw["max_iter"] == 20 for _, _, kw in calls)
    # the pseudo-labels really change: training moved the features between clusterings
    assert any(not torch.equal(calls[i][1], calls[i + 1][1]) for i in range(epochs - 1))
    assert [row["nmi_prev"] for row in ctx.curve[1:]] and all(row["nmi_prev"] < 1.0 for row in ctx.curve[1:])
    # a fresh head each epoch: a new module, N(0, 0.01) weights and zero bias at creation, then trained
    assert len(heads) == epochs and len({id(h[0]) for h in heads}) == epochs
    for layer, w0, b0 in heads:
        assert layer.out_features == 10 and float(b0.abs().max()) == 0.0
        assert 0.005 < float(w0.std()) < 0.015
        assert not torch.equal(layer.weight.detach(), w0)  # the epoch trained it
    assert not torch.equal(heads[0][1], heads[1][1])  # a new draw, not a reset to the same values
    labels = out.labels_numpy()
    assert labels.shape == (data.x_eval.shape[0],) and labels.min() >= 0 and labels.max() < 10
    assert np.array_equal(labels, calls[-1][1].numpy())  # the result is the final clustering
    assert out.info["kmeans_calls"] == epochs and out.info["head_inits"] == epochs
    assert [row["epoch"] for row in ctx.curve] == list(range(1, epochs + 1))
    assert all(0.0 <= row["eval_acc"] <= 1.0 for row in ctx.curve)  # K = 10 pseudo-labels are scored


def test_overcluster_trains_with_ten_times_k_and_reports_k(tmp_path, digits, monkeypatch):
    ks = []
    real = dc.kmeans
    monkeypatch.setattr(dc, "kmeans", lambda x, k, **kw: (ks.append(k), real(x, k, **kw))[1])
    out, ctx, _ = run(tmp_path, digits, variant="overcluster", epochs=2)
    assert ks == [100, 100, 10]
    assert out.info["k_train"] == 100 and out.info["k_eval"] == 10
    assert out.labels_numpy().max() < 10
    assert "eval_acc" not in ctx.curve[0]  # 100 pseudo-classes are not a K-clustering: not scored


def test_uniform_sampler_draws_equally_per_pseudo_class():
    labels = torch.tensor([0] * 100 + [1] * 10 + [2] * 1 + [4] * 50)  # cluster 3 is empty
    gen = torch.Generator().manual_seed(0)
    n = 160
    idx = dc.uniform_pseudolabel_indices(labels, 5, n, gen)
    per = int(n / 4) + 1  # 41 per non-empty cluster, 164 drawn, shuffled, cut to 160
    assert idx.shape == (n,)
    counts = torch.bincount(labels[idx], minlength=5).tolist()
    assert counts[3] == 0 and sum(counts) == n
    assert all(per - 4 <= c <= per for i, c in enumerate(counts) if i != 3)
    big = idx[labels[idx] == 0]
    assert big.unique().numel() == big.numel()  # 100 members > 41: drawn without replacement
    assert set(idx[labels[idx] == 2].tolist()) == {110}  # a singleton is drawn again and again
    # the same generator state gives the same draw (checkpoint/resume relies on it)
    again = dc.uniform_pseudolabel_indices(labels, 5, n, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_bench_trial_on_digits_gives_an_ok_record(tmp_path, capsys):
    sets = [f"{k}={v}" for k, v in {**TINY, "epochs": 2}.items()]
    args = ["trial", "deepcluster", "digits", "--store", str(tmp_path / "st")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["status"] == "ok" and rec["method"] == "deepcluster"
    assert 0.0 < rec["metrics"]["acc"] <= 1.0


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, digits):
    """Stopped after epoch 1 (time budget 0) and run again, the trial resumes at epoch 2 and ends with the labels
    of a run never interrupted (network, optimizer, k-means / sampler / augmentation / head streams restored)."""
    from methods.engine import TimeBudgetExceeded

    full, ctx_full, _ = run(tmp_path / "full", digits, epochs=2)
    with pytest.raises(TimeBudgetExceeded):
        run(tmp_path / "cut", digits, epochs=2, max_minutes=0)
    resumed, ctx_res, _ = run(tmp_path / "cut", digits, epochs=2)
    assert resumed.info["resumed_from_epoch"] == 1
    np.testing.assert_array_equal(resumed.labels_numpy(), full.labels_numpy())
    assert ctx_res.curve[1]["loss"] == pytest.approx(ctx_full.curve[1]["loss"], rel=1e-5)

"""PCL on the bundled digits (8x8 images), CPU, tiny network (``tiny_cnn``), a few epochs.

Checks the EM schedule (InfoNCE only during warm-up, then an E-step at every epoch: k-means at each
granularity, concentrations scaled to the temperature, ProtoNCE in the loss), the momentum encoder and
the queue, the evaluated assignment (granularity k = number of classes on the final momentum encoder),
a whole ``bench trial`` ending with an ok record, and the one-line refusal of a config without that
granularity.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import methods.pcl as pcl
from bench.cli import main
from bench.context import TrialContext
from bench.method import ClusteringData
from bench.metrics import evaluate
from bench.registry import get_method, resolve_config

TINY = {"backbone": "tiny_cnn", "image_size": 8, "epochs": 3, "warmup_epochs": 1, "batch_size": 64,
        "queue_size": 256, "kmeans_restarts": 2}


pytestmark = pytest.mark.usefixtures("two_threads")


def test_em_schedule_and_prototypes(tmp_path, digits, monkeypatch):
    x, y = digits[0][:512], digits[1][:512]  # a subset keeps it quick; the bench trial below runs all 1,797
    ks, phis = [], []
    real_kmeans, real_conc = pcl.kmeans, pcl.concentration

    def spy_kmeans(f, k, **kw):
        ks.append(k)
        assert torch.allclose(f.norm(dim=1), torch.ones(f.shape[0]), atol=1e-4)  # normalised momentum features
        return real_kmeans(f, k, **kw)

    def spy_conc(*a, **kw):
        phi = real_conc(*a, **kw)
        phis.append(phi)
        return phi

    monkeypatch.setattr(pcl, "kmeans", spy_kmeans)
    monkeypatch.setattr(pcl, "concentration", spy_conc)
    data = ClusteringData("digits", x, x, 10, "all", "all", "md5")
    cfg = resolve_config("pcl", "default", None, TINY)
    ctx = TrialContext(seed=0, device="cpu", artifact_dir=tmp_path / "a", stage_dir=tmp_path / "s", data_md5="md5",
                       code_version="test", scorer=lambda p: evaluate(y, p))
    method = get_method("pcl")(cfg)
    out = method.fit(data, ctx)
    # epoch 1: warm-up (InfoNCE only); epochs 2 and 3: an E-step over the three granularities; then the result's
    assert ks == [10, 50, 100, 10, 50, 100, 10]
    assert out.info["e_steps"] == 2 and out.info["granularities"] == [10, 50, 100]
    for phi in phis:
        assert float(phi.mean()) == pytest.approx(0.2, rel=1e-5) and bool((phi > 0).all())
    curve = ctx.curve
    assert curve[0]["loss_proto"] == 0.0 and "eval_acc" not in curve[0]
    for row in curve[1:]:
        assert row["loss_proto"] > 0 and math.isfinite(row["loss_proto"])
        assert row["loss"] == pytest.approx(row["loss_instance"] + row["loss_proto"], rel=1e-5)
        assert 0.0 <= row["eval_acc"] <= 1.0  # the k = 10 E-step assignment, scored by the harness
    assert curve[-1]["lr"] < curve[0]["lr"] == pytest.approx(0.03)  # cosine
    labels = out.labels_numpy()
    assert labels.shape == (512,) and labels.min() >= 0 and labels.max() < 10
    assert len(np.unique(labels)) > 1


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, digits):
    """Stopped after epoch 1 (time budget 0) and run again, the trial resumes at epoch 2 (its first E-step) and
    ends with the labels of a run never interrupted (both encoders, queue and pointer, optimizer, streams)."""
    from methods.engine import TimeBudgetExceeded

    x, y = digits[0][:512], digits[1][:512]
    data = ClusteringData("digits", x, x, 10, "all", "all", "md5")
    cfg = resolve_config("pcl", "default", None, {**TINY, "epochs": 2, "cluster_multiples": [1, 2]})

    def fit(where, cfg):
        ctx = TrialContext(seed=0, device="cpu", artifact_dir=where / "a", stage_dir=where / "s", data_md5="md5",
                           code_version="test", scorer=lambda p: evaluate(y, p))
        return get_method("pcl")(cfg).fit(data, ctx), ctx

    full, ctx_full = fit(tmp_path / "full", cfg)
    with pytest.raises(TimeBudgetExceeded):
        fit(tmp_path / "cut", cfg.model_copy(update={"max_minutes": 0.0}))
    resumed, ctx_res = fit(tmp_path / "cut", cfg)
    assert resumed.info["resumed_from_epoch"] == 1
    np.testing.assert_array_equal(resumed.labels_numpy(), full.labels_numpy())
    assert ctx_res.curve[1]["loss"] == pytest.approx(ctx_full.curve[1]["loss"], rel=1e-5)


def test_momentum_update_and_queue():
    g = torch.Generator().manual_seed(0)
    q = pcl.Encoder("tiny_cnn", "cifar", 1, 8, True)
    k = pcl.Encoder("tiny_cnn", "cifar", 1, 8, True)
    before = [p.detach().clone() for p in k.parameters()]
    pcl.momentum_update(k, q, 0.9)
    for pk, pq, b in zip(k.parameters(), q.parameters(), before, strict=True):
        assert torch.allclose(pk, 0.9 * b + 0.1 * pq.detach(), atol=1e-6)
    hook = pcl.KeyQueue(torch.zeros(4, 6))
    keys = torch.randn(3, 4, generator=g)
    hook.after_step(None, torch.arange(3), {"keys": keys})
    assert torch.equal(hook.queue[:, :3], keys.t()) and hook.ptr == 3
    hook.after_step(None, torch.arange(3), {"keys": keys * 2})
    assert torch.equal(hook.queue[:, 3:], 2 * keys.t()) and hook.ptr == 0  # wraps around (queue % batch == 0)
    restored = pcl.KeyQueue(torch.zeros(4, 6))
    restored.load_state_dict(hook.state_dict())  # the checkpoint round trip keeps queue and pointer
    assert torch.equal(restored.queue, hook.queue) and restored.ptr == 0


def test_bench_trial_on_digits_gives_an_ok_record(tmp_path, capsys):
    args = ["trial", "pcl", "digits", "--store", str(tmp_path / "st")]
    for key, val in {**TINY, "epochs": 2}.items():
        args += ["--set", f"{key}={val}"]
    assert main(args) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["status"] == "ok" and rec["method"] == "pcl"
    assert 0.0 < rec["metrics"]["acc"] <= 1.0


def test_config_without_the_class_count_granularity_is_refused(tmp_path, capsys):
    args = ["trial", "pcl", "digits", "--store", str(tmp_path / "st"), "--set", "cluster_multiples=[5, 10]"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "cluster_multiples must contain 1" in err[0]
    assert not (tmp_path / "st" / "records").exists() or not any((tmp_path / "st" / "records").iterdir())

"""DEC on tiny data, its pieces, and the shared pretraining stage cache."""


import numpy as np
import pytest
import torch

from bench.context import TrialContext
from bench.data import load_dataset
from bench.method import ClusteringData
from bench.metrics import cluster_acc
from bench.registry import resolve_config
from methods.dec import DEC, kl_pq, student_t, target_distribution

TINY = {"pretrain_iters_per_layer": 60, "finetune_iters": 120, "pretrain_lr_step": 1000, "update_interval": 20,
        "max_iters": 200, "hidden_dims": [64, 64, 128, 10], "n_init": 3, "pretrain_momentum_burnin": 20}


def _data(n=600):
    ds = load_dataset("digits")
    x, _ = ds.split("all")
    return ClusteringData("digits", x[:n], x[:n], 10, "all", "all", ds.md5), ds.split("all")[1][:n].numpy()


def _ctx(tmp_path, seed=0, y=None):
    from bench.metrics import evaluate

    scorer = (lambda pred: evaluate(y, pred)) if y is not None else None
    return TrialContext(seed=seed, device="cpu", artifact_dir=tmp_path / "art", stage_dir=tmp_path / "stages",
                        data_md5="m", code_version="c", scorer=scorer)


def test_student_t_and_target_distribution():
    z, mu = torch.randn(50, 4), torch.randn(3, 4)
    q = student_t(z, mu)
    assert torch.allclose(q.sum(1), torch.ones(50)) and (q > 0).all()
    i = 7
    d = ((z[i] - mu) ** 2).sum(1)
    ref = 1 / (1 + d)
    assert torch.allclose(q[i], ref / ref.sum(), atol=1e-6)
    p = target_distribution(q)
    assert torch.allclose(p.sum(1), torch.ones(50), atol=1e-6)
    f = q.sum(0)
    ref_p = (q[i] ** 2 / f) / (q[i] ** 2 / f).sum()
    assert torch.allclose(p[i], ref_p, atol=1e-6)
    # the target sharpens on the whole: the mean largest share grows
    assert p.max(1).values.mean() > q.max(1).values.mean()
    assert kl_pq(q, q).abs() < 1e-6 and kl_pq(p, q) > 0


def test_dec_runs_label_free_and_stops_by_its_own_rule(tmp_path):
    data, y = _data()
    method = DEC(resolve_config("dec", overrides=TINY))
    ctx = _ctx(tmp_path, y=y)
    out = method.fit(data, ctx)
    labels = out.labels_numpy()
    assert labels.shape == (600,) and labels.max() < 10
    assert out.info["stop_reason"] in ("tol", "max_iters") and out.info["iterations"] <= 200
    assert cluster_acc(y, labels) > 0.5  # far above chance (0.1) even with this tiny schedule
    stages = [row["stage"] for row in ctx.curve if "stage" in row]
    assert stages[0] == "pretrain_layer1" and "finetune" in stages
    dec_rows = [row for row in ctx.curve if "delta_label" in row]
    assert dec_rows and all("eval_acc" in row for row in dec_rows)  # curve scored by the harness
    if out.info["stop_reason"] == "tol":
        assert dec_rows[-1]["delta_label"] < 0.001


def test_pretrained_stage_is_shared_across_methods_and_runs(tmp_path):
    data, _ = _data(300)
    cfg = resolve_config("dec", overrides=TINY)
    ctx1 = _ctx(tmp_path)
    out1 = DEC(cfg).fit(data, ctx1)
    assert [(u["name"], u["reused"]) for u in ctx1.stages_used] == [("sdae", False)]
    ctx2 = _ctx(tmp_path)
    out2 = DEC(cfg).fit(data, ctx2)
    assert [(u["name"], u["reused"]) for u in ctx2.stages_used] == [("sdae", True)]
    assert ctx2.stages_used[0]["key"] == ctx1.stages_used[0]["key"]
    assert np.array_equal(out1.labels_numpy(), out2.labels_numpy())  # same weights, same seed, same result
    ctx3 = _ctx(tmp_path, seed=1)
    DEC(cfg).fit(data, ctx3)
    assert ctx3.stages_used[0]["reused"] is False  # another seed gets its own autoencoder
    assert len([p for p in (tmp_path / "stages" / "sdae").iterdir() if not p.name.startswith(".")]) == 2


def test_nan_during_pretraining_is_caught(tmp_path):
    data, _ = _data(100)  # fewer images than one batch of 256: the batch shrinks to the dataset
    cfg = resolve_config("dec", overrides={**TINY, "pretrain_lr": 1e6})
    from bench.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="loss became"):
        DEC(cfg).fit(data, _ctx(tmp_path))

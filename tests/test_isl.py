"""ISL on CPU: its loss against hand-computed values, the neighbour bookkeeping, the official GAN stopping
rule and mining rule, and a tiny run through all three stages on the bundled digits ending with an ok
record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import methods.isl as isl
from bench.cli import main
from bench.context import TrialContext
from bench.data import load_dataset
from bench.method import ClusteringData
from bench.metrics import evaluate
from bench.registry import get_method, resolve_config
from methods.losses import isl_loss

TINY = {"backbone": "tiny_cnn", "image_size": 8, "rounds": 1, "backbone_epochs": 2, "gan_epochs": 3,
        "mining_epochs": 2, "sample_negatives": 64, "batch_size": 128, "kmeans_n_init": 2}


def test_isl_loss_hand_computed():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    idx = torch.tensor([0, 1])
    nbrs = torch.tensor([[True, False, False], [False, True, True]])  # image 1 has mined image 2
    hp = torch.tensor([-1, 2])
    total, (l_inst, l_aff, l_hp) = isl_loss(f, memory, idx, nbrs, hp, temperature=1.0, hp_weight=0.5)
    e = math.e
    nll0 = -(1 - math.log(e + 1 + 1 / e))  # row 0: logits [1, 0, -1], A = {0}
    nll1 = -math.log((e + 1) / (2 + e))  # row 1: logits [0, 1, 0], A = {1, 2}
    p1 = [1 / (2 + e), e / (2 + e), 1 / (2 + e)]
    q1 = [math.exp(v) / (math.exp(-1) + 1 + e) for v in (-1.0, 0.0, 1.0)]  # softmax of v_2 . v_j
    kl = sum(p * (math.log(p) - math.log(q)) for p, q in zip(p1, q1, strict=True))
    assert float(l_inst) == pytest.approx(nll0 / 2)
    assert float(l_aff) == pytest.approx(nll1 / 2)
    assert float(l_hp) == pytest.approx(0.5 * kl / 2)
    assert float(total.detach()) == pytest.approx((nll0 + nll1 + 0.5 * kl) / 2)
    total.backward()
    assert torch.isfinite(f.grad).all()


def test_affinity_mask_pairs_and_hard_positive():
    aff = isl.Affinity(4)
    aff.add([0], [[2, 3]])
    assert aff.sets[2] == {2, 0} and aff.sets[0] == {0, 2, 3}  # symmetric, self kept
    assert aff.pairs() == 4  # the official count: both directions
    idx = torch.tensor([0, 1])
    mask = aff.mask(idx, 4)
    assert mask.tolist() == [[True, False, True, True], [False, True, False, False]]
    memory = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.1]]), dim=1)
    assert isl.hard_positives(memory, idx, mask).tolist() == [3, -1]  # 3 is closer to 0 than 2 is


def test_official_gan_stopping_rule():
    assert not isl.stop_train_gan([0.5, 0.4, 0.6], is_round0=True)  # round 0: at least 10 epochs
    assert not isl.stop_train_gan([1.5, 1.2, 1.3, 1.4], is_round0=False)  # G never below 1
    assert not isl.stop_train_gan([0.9, 0.8, 0.7], is_round0=False)  # still decreasing
    assert isl.stop_train_gan([0.5, 0.9, 0.8, 0.85], is_round0=False)  # best epoch older than the last three
    assert not isl.stop_train_gan([0.9, 0.5, 0.8, 0.7], is_round0=False)  # best within the last three


def test_mining_adds_close_memory_entries_of_confident_proxies():
    cfg = resolve_config("isl", "default", None, {"topk": 2})
    method = get_method("isl")(cfg)
    memory = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]), dim=1)
    aff = isl.Affinity(4)
    fake_p = torch.stack([memory[2], memory[1]])
    # anchor 0: score 0.9 -> r = 0.6 + 0.1 x 0.4 = 0.64; cos to 2 is 1, to 1 is 0.8: both added.
    # anchor 3: score 0.4 <= 0.5: not confident, nothing added.
    method._mine(torch.tensor([0, 3]), fake_p, torch.tensor([0.9, 0.4]), memory, aff)
    assert aff.sets[0] == {0, 1, 2} and aff.sets[1] == {1, 0} and aff.sets[3] == {3}
    # a stricter radius (score 0.55 -> r = 0.6 + 0.45 x 0.4 = 0.78) keeps only cos > 0.78
    aff2 = isl.Affinity(4)
    method._mine(torch.tensor([0]), torch.stack([memory[1]]), torch.tensor([0.55]), memory, aff2)
    assert aff2.sets[0] == {0, 1, 2}  # cos(1, 1) = 1 and cos(1, 2) = 0.8 > 0.78; anchor 0 itself never


def test_three_stages_run_in_order_on_digits(tmp_path, monkeypatch):
    x, y = load_dataset("digits").split("all")
    x, y = x[:384], np.asarray(y[:384])
    data = ClusteringData("digits", x, x, 10, "train", "train", "md5")
    cfg = resolve_config("isl", "default", None, TINY)
    ctx = TrialContext(seed=0, device="cpu", artifact_dir=tmp_path / "a", stage_dir=tmp_path / "s", data_md5="md5",
                       code_version="test", scorer=lambda p: evaluate(y, p))
    stops = []
    monkeypatch.setattr(isl, "stop_train_gan", lambda losses, is_round0: stops.append(len(losses)) or len(losses) == 2)
    out = get_method("isl")(cfg).fit(data, ctx)
    stages = [row["stage"] for row in ctx.curve]
    assert stages[:2] == ["backbone", "backbone"] and stages[2:4] == ["gan", "gan"]  # the rule stopped G at 2
    assert stops == [1, 2] and set(stages[4:]) == {"mining"} and 1 <= len(stages[4:]) <= 2
    assert out.info["backbone_epochs"] == 2 and out.info["gan_epochs"] == 2
    assert all(math.isfinite(row["loss"]) for row in ctx.curve if row["stage"] == "backbone")
    labels = out.labels_numpy()
    assert labels.shape == (384,) and labels.min() >= 0 and labels.max() < 10


def test_bench_trial_on_digits_gives_an_ok_record(tmp_path, capsys):
    args = ["trial", "isl", "digits", "--store", str(tmp_path / "st")]
    for key, val in {**TINY, "gan_epochs": 1, "mining_epochs": 1, "backbone_epochs": 1}.items():
        args += ["--set", f"{key}={val}"]
    assert main(args) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["status"] == "ok" and rec["method"] == "isl"


def test_resume_after_every_epoch_matches_the_uncut_run(tmp_path):
    """max_minutes=0: each command stops after one epoch (backbone, GAN, mining; two rounds) with a checkpoint
    and the next resumes it: the round/stage schedule, the mined neighbours, the memory bank, the GAN's and the
    backbone's optimizers and the plateau rule carry over, so the labels and the curve equal an uncut run's."""
    from methods.engine import TimeBudgetExceeded

    x = torch.randint(0, 256, (32, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = np.arange(32) % 3
    data = ClusteringData("synthetic", x, x, 3, "train", "train", "md5")
    cfg = resolve_config("isl", "default", None, {**TINY, "rounds": 2, "backbone_epochs": 1, "gan_epochs": 1,
                                                  "mining_epochs": 1, "sample_negatives": 8, "batch_size": 16,
                                                  "plateau_every": 1, "per_round_affinity": 0.01,
                                                  # mine generously, so round 2 trains on mined neighbours
                                                  "pos_score_threshold": 0.0, "affinity_radius": -1.0, "topk": 1})

    def fit(where, cfg):
        ctx = TrialContext(seed=0, device="cpu", artifact_dir=where / "a", stage_dir=where / "s", data_md5="md5",
                           code_version="test", scorer=lambda p: evaluate(y, p))
        return get_method("isl")(cfg).fit(data, ctx), ctx

    full, ctx_full = fit(tmp_path / "full", cfg)
    cuts = 0
    while True:
        try:
            out, ctx = fit(tmp_path / "cut", cfg.model_copy(update={"max_minutes": 0.0}))
            break
        except TimeBudgetExceeded:
            cuts += 1
    stages = [r["stage"] for r in ctx_full.curve]
    assert stages == ["backbone", "gan", "mining"] * 2 and cuts == len(stages) - 1
    np.testing.assert_array_equal(out.labels_numpy(), full.labels_numpy())
    drop = {"elapsed_s", "epoch_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in ctx.curve] == \
        [{k: v for k, v in r.items() if k not in drop} for r in ctx_full.curve]
    assert out.info["resumed_from_epoch"] == len(stages) - 1 and out.info["pairs_per_image"] > 0

"""SimCLR + k-means, CC (and its ablations), PICA and IDFD on tiny synthetic images, CPU only.

Each method trains for 1-2 epochs (2 steps each) on 16 random 8x8 images with a ResNet-18 CIFAR stem; the tests
check the method contract (one label per eval image in range, a finite loss curve, the eval
metrics logged on the curve), the ablation switches, checkpoint/resume (a run interrupted after
epoch 1 and resumed ends with exactly the labels of an uninterrupted run), the time budget, the
paper-table suites and their rendering.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.context import TrialContext
from bench.errors import BenchError
from bench.method import ClusteringData
from bench.metrics import evaluate
from bench.records import ResultRecord
from bench.registry import get_method, resolve_config
from bench.report import write_report
from bench.suite import load_suite
from methods.engine import TimeBudgetExceeded, cosine_lr, epoch_batches, multistep_lr

ROOT = Path(__file__).resolve().parent.parent
N, K = 16, 3
TINY = {"backbone": "resnet18", "stem": "cifar", "image_size": 8, "epochs": 1, "batch_size": 8, "eval_every": 1,
        "eval_batch_size": 16}


pytestmark = pytest.mark.usefixtures("two_threads")


def tiny_data(same_split: bool = True) -> tuple[ClusteringData, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = np.arange(N) % K
    if same_split:
        return ClusteringData("synthetic", x, x, K, "all", "all", "md5"), y
    x_eval = torch.randint(0, 256, (10, 3, 8, 8), generator=g, dtype=torch.uint8)
    return ClusteringData("synthetic", x, x_eval, K, "train", "test", "md5"), np.arange(10) % K


def make_ctx(tmp: Path, y: np.ndarray, seed: int = 0) -> TrialContext:
    return TrialContext(seed=seed, device="cpu", artifact_dir=tmp / "artifact", stage_dir=tmp / "stages",
                        data_md5="md5", code_version="test", scorer=lambda p: evaluate(y, p))


def run_method(name: str, variant: str, tmp: Path, *, same_split: bool = True, seed: int = 0, n_unlabeled: int = 0,
               base: dict | None = None, **overrides):
    data, y = tiny_data(same_split)
    if n_unlabeled:  # STL-10-like: images for training only, never scored
        g = torch.Generator().manual_seed(1)
        data.x_unlabeled = torch.randint(0, 256, (n_unlabeled, 3, 8, 8), generator=g, dtype=torch.uint8)
    cfg = resolve_config(name, variant, None, {**(TINY if base is None else base), **overrides})
    ctx = make_ctx(tmp, y, seed)
    torch.manual_seed(seed)
    out = get_method(name)(cfg).fit(data, ctx)
    return out, ctx, data


def assert_contract(out, ctx, data, epochs: int = 1) -> np.ndarray:
    labels = out.labels_numpy()
    assert labels.shape == (data.x_eval.shape[0],)
    assert labels.min() >= 0 and labels.max() < data.n_clusters
    assert [row["epoch"] for row in ctx.curve] == list(range(1, epochs + 1))
    for row in ctx.curve:
        assert math.isfinite(row["loss"]) and row["epoch_s"] >= 0
        assert 0.0 <= row["eval_acc"] <= 1.0  # scored on the harness side, every epoch (eval_every=1)
    assert out.info["epochs_run"] == epochs and out.info["resumed_from_epoch"] is None
    assert not ctx.checkpoint_path.exists(), "a finished trial must not leave a checkpoint to resume"
    return labels


@pytest.mark.parametrize("variant,heads,pair", [("default", "ich+cch", "ta+tb"), ("ich_only", "ich", "ta+tb"),
                                                ("cch_only", "cch", "ta+tb"), ("aug_x_x", "ich+cch", "x+x")])
def test_cc_variants_train_and_cluster(tmp_path, variant, heads, pair):
    out, ctx, data = run_method("cc", variant, tmp_path, kmeans_n_init=2)
    assert (out.info["heads"], out.info["aug_pair"]) == (heads, pair)
    assert_contract(out, ctx, data)
    keys = set(ctx.curve[-1])
    assert ("loss_instance" in keys) == (heads != "cch")
    assert ("loss_cluster" in keys) == (heads != "ich")
    if heads == "ich":  # k-means on the ICH outputs uses every cluster; argmax of a fresh head may not
        assert len(np.unique(out.labels_numpy())) == K


SIMCLR_TINY = {k: v for k, v in TINY.items() if k != "eval_every"}  # the pretext stage evaluates nothing


def run_simclr(tmp: Path, **overrides):
    return run_method("simclr_kmeans", "default", tmp, same_split=False, base=SIMCLR_TINY, **overrides)


def test_simclr_kmeans_train_test_protocol(tmp_path):
    """The pretext is the `simclr_pretext` stage: its per-epoch rows are on the curve (marked with the stage);
    the method's own row is the k-means result, scored on the test split."""
    out, ctx, data = run_simclr(tmp_path, epochs=2, kmeans_n_init=1)
    labels = out.labels_numpy()
    assert labels.shape == (data.x_eval.shape[0],) and labels.min() >= 0 and labels.max() < data.n_clusters
    pre = [row for row in ctx.curve if row.get("stage") == "simclr_pretext"]
    assert [row["epoch"] for row in pre] == [1, 2] and all(math.isfinite(r["loss"]) for r in pre)
    lrs = [row["lr"] for row in pre]
    assert lrs[0] == pytest.approx(0.4) and lrs[1] < lrs[0]  # SCAN's cosine, set at the start of each epoch
    assert 0.0 <= ctx.curve[-1]["eval_acc"] <= 1.0 and "stage" not in ctx.curve[-1]
    assert out.info["kmeans_features"] == "head" and out.info["pretext_epochs_run"] == 2
    assert [(u["name"], u["reused"]) for u in ctx.stages_used] == [("simclr_pretext", False)]
    cls = get_method("simclr_kmeans")
    assert (cls.train_split, cls.eval_split) == ("train", "test")
    # the same trial again finds the stored pretext network: no training, same labels
    out2, ctx2, _ = run_simclr(tmp_path, epochs=2, kmeans_n_init=1)
    assert ctx2.stages_used[0]["reused"] and np.array_equal(out2.labels_numpy(), labels)


@pytest.mark.parametrize("variant,loss", [("default", "idfd"), ("id", "id"), ("idfo", "idfo")])
def test_idfd_variants(tmp_path, variant, loss):
    out, ctx, data = run_method("idfd", variant, tmp_path, kmeans_n_init=1)
    assert_contract(out, ctx, data)
    assert out.info["loss"] == loss
    feat = [row["loss_feature"] for row in ctx.curve]
    assert all(f == 0.0 for f in feat) if loss == "id" else all(f > 0 for f in feat)


def test_pica_heads_and_sobel(tmp_path):
    out, ctx, data = run_method("pica", "default", tmp_path, overclustering=5, data_nrepeat=2)
    assert_contract(out, ctx, data)
    assert out.info["heads"] == [5, K]
    assert {"loss_head5", f"loss_head{K}"} <= set(ctx.curve[-1])
    from methods.pica import Sobel

    flat = torch.full((1, 3, 6, 6), 0.5)
    assert torch.allclose(Sobel()(flat)[..., 1:-1, 1:-1], torch.zeros(1, 2, 4, 4))  # no edges in a flat image


def test_pica_normalises_each_dataset_with_its_own_mean_std(tmp_path):
    """Official configs set tfm_means/tfm_stds per dataset; other datasets use their training images' own."""
    from methods.augment.gpu import NORMALIZATION, channel_mean_std

    assert resolve_config("pica", dataset="cifar100-20").normalization == "cifar100_pica"
    assert resolve_config("pica", dataset="stl10").normalization == "imagenet"
    assert resolve_config("pica", dataset="cifar10").normalization == "cifar10"
    assert resolve_config("pica", dataset="mnist").normalization == "dataset"
    assert NORMALIZATION["cifar100_pica"] == ((0.5071, 0.4866, 0.4409), (0.2009, 0.1984, 0.2023))
    assert NORMALIZATION["cifar10"][0] != NORMALIZATION["cifar100_pica"][0]
    out, ctx, data = run_method("pica", "default", tmp_path, overclustering=0, data_nrepeat=1)
    x = data.x_train.double().numpy() / 255.0
    norm = out.info["normalization"]
    assert norm["name"] == "dataset"
    np.testing.assert_allclose(norm["mean"], x.mean((0, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(norm["std"], x.std((0, 2, 3)), atol=1e-4)
    mean, std = channel_mean_std(data.x_train, chunk=3)  # chunked sums agree with the one-pass numbers
    np.testing.assert_allclose(mean, x.mean((0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, x.std((0, 2, 3)), rtol=1e-9)
    grey = torch.full((2, 1, 4, 4), 0.5)  # a constant float image: std floored, no division by zero
    assert channel_mean_std(grey) == ((0.5,), (1e-6,))


def test_cc_batchnorm_per_view_as_the_official_network(tmp_path):
    """Official Network.forward runs the trunk once per view: view 1's BatchNorm statistics (and so its
    outputs) must not depend on view 2; with ``batchnorm: joint`` they do (statistics over both views)."""
    from methods.cc import CCNet, forward_views

    assert resolve_config("cc").batchnorm == "per_view"
    torch.manual_seed(0)
    net = CCNet("resnet18", "cifar", 3, 8, K, "ich+cch").train()
    g = torch.Generator().manual_seed(2)
    v1, v2a, v2b = (torch.randn(6, 3, 8, 8, generator=g) for _ in range(3))
    v2b = v2b * 3 + 1  # a second view with other batch statistics
    dev = torch.device("cpu")
    with torch.no_grad():
        per_a = forward_views(net, v1, v2a, dev, "fp32", per_view=True)
        per_b = forward_views(net, v1, v2b, dev, "fp32", per_view=True)
        joint_a = forward_views(net, v1, v2a, dev, "fp32", per_view=False)
        joint_b = forward_views(net, v1, v2b, dev, "fp32", per_view=False)
        alone = net(v1)
    torch.testing.assert_close(per_a[0], per_b[0])  # z1 ignores view 2
    torch.testing.assert_close(per_a[2], per_b[2])  # p1 too
    torch.testing.assert_close(per_a[0], alone[0])  # = view 1 through the network on its own
    assert (joint_a[0] - joint_b[0]).abs().max() > 1e-3  # shared statistics: view 2 moves view 1's outputs
    assert (joint_a[0] - per_a[0]).abs().max() > 1e-3
    out, ctx, data = run_method("cc", "default", tmp_path, batchnorm="joint")  # the documented option still runs
    assert out.info["batchnorm"] == "joint"
    assert_contract(out, ctx, data)


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_cc_stl10_recipe_trains_the_instance_head_on_unlabeled_images_first(tmp_path, monkeypatch):
    """train_STL10.py: per epoch, an instance-loss-only pass over the unlabeled images, then both losses
    over train + test. 24 unlabeled and 16 labelled images at batch 8: 3 + 2 instance steps, 2 cluster steps."""
    import methods.cc as cc

    inst, clus = _count_calls(monkeypatch, cc, "nt_xent"), _count_calls(monkeypatch, cc, "cluster_contrastive")
    out, ctx, data = run_method("cc", "default", tmp_path / "with", n_unlabeled=24)
    assert_contract(out, ctx, data)  # labels only for the 16 evaluated images
    assert (len(inst), len(clus), out.info["unlabeled_images"]) == (5, 2, 24)
    inst.clear(), clus.clear()
    out, _, _ = run_method("cc", "default", tmp_path / "without", n_unlabeled=24, unlabeled=False)
    assert (len(inst), len(clus), out.info["unlabeled_images"]) == (2, 2, 0)


def test_simclr_stl10_recipe_pretrains_on_train_plus_unlabeled(tmp_path, monkeypatch):
    """SCAN's simclr.py: split='train+unlabeled' for the pretext; k-means is fit on the train split.
    16 + 24 images at batch 8, drop_last: 5 steps (2 without the unlabeled ones); SCAN's one-sided loss."""
    import methods.stages.simclr_pretext as sp

    assert resolve_config("simclr_kmeans").anchors == "first"
    calls = _count_calls(monkeypatch, sp, "nt_xent")
    out, ctx, data = run_simclr(tmp_path / "with", n_unlabeled=24, kmeans_n_init=1)
    assert out.labels_numpy().shape == (data.x_eval.shape[0],)
    assert (len(calls), out.info["unlabeled_images"]) == (5, 24)
    calls.clear()
    run_simclr(tmp_path / "without", kmeans_n_init=1)
    assert len(calls) == 2


def test_pica_stl10_recipe_adds_unlabeled_images_to_the_overclustering_head(tmp_path, monkeypatch):
    """PICA main.py train_splits for STL-10: head 0 (over-clustering) on train+unlabeled+test, the K head on
    train+test. 16 + 24 images at batch 8, no drop_last: 5 steps for head 0, 2 for the K head."""
    import methods.pica as pica

    calls = _count_calls(monkeypatch, pica, "pica_pui")
    out, ctx, data = run_method("pica", "default", tmp_path, overclustering=5, data_nrepeat=1, n_unlabeled=24)
    assert_contract(out, ctx, data)
    assert (len(calls), out.info["unlabeled_images"]) == (7, 24)


@pytest.mark.parametrize("method,variant", [("cc", "default"), ("idfd", "default")])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, method, variant):
    """Kill after epoch 1 (time budget 0), re-run the same trial: it resumes at epoch 2 and ends with the
    labels of a run that was never interrupted (model, optimizer, RNG streams, memory bank restored)."""
    full, ctx_full, _ = run_method(method, variant, tmp_path / "full", epochs=2)
    with pytest.raises(TimeBudgetExceeded, match="run the same command again to resume from epoch 2"):
        run_method(method, variant, tmp_path / "cut", epochs=2, max_minutes=0)
    assert (tmp_path / "cut" / "artifact" / "checkpoint.pt").exists()
    resumed, ctx_res, _ = run_method(method, variant, tmp_path / "cut", epochs=2)
    assert resumed.info["resumed_from_epoch"] == 1 and resumed.info["epochs_run"] == 2
    np.testing.assert_array_equal(resumed.labels_numpy(), full.labels_numpy())
    assert [r["epoch"] for r in ctx_res.curve] == [1, 2]  # the curve before the kill is kept
    assert ctx_res.curve[1]["loss"] == pytest.approx(ctx_full.curve[1]["loss"], rel=1e-5)


def test_checkpoint_of_another_config_is_ignored(tmp_path):
    with pytest.raises(TimeBudgetExceeded):
        run_method("cc", "ich_only", tmp_path, epochs=2, max_minutes=0)
    out, ctx, _ = run_method("cc", "ich_only", tmp_path, epochs=2, lr=1e-3)  # other arithmetic: must not resume
    assert out.info["resumed_from_epoch"] is None and [r["epoch"] for r in ctx.curve] == [1, 2]


def test_epoch_helpers():
    g = torch.Generator().manual_seed(0)
    batches = list(epoch_batches(10, 4, g, torch.device("cpu")))
    assert [len(b) for b in batches] == [4, 4]  # drop_last
    assert len(set(torch.cat(batches).tolist())) == 8
    assert [len(b) for b in epoch_batches(10, 4, g, torch.device("cpu"), drop_last=False)] == [4, 4, 2]
    assert [len(b) for b in epoch_batches(3, 8, g, torch.device("cpu"))] == [3]  # tiny data: one batch of all
    assert cosine_lr(0.4, 0, 500, 1e-3) == pytest.approx(0.4)
    assert cosine_lr(0.4, 500, 500, 1e-3) == pytest.approx(0.4e-3)
    assert multistep_lr(0.03, 599, [600, 950], 0.1) == pytest.approx(0.03)
    assert multistep_lr(0.03, 950, [600, 950], 0.1) == pytest.approx(0.0003)


def test_paper_recipes_are_the_defaults():
    cc = resolve_config("cc")
    assert (cc.backbone, cc.stem, cc.image_size, cc.epochs, cc.batch_size, cc.lr, cc.weight_decay) == \
        ("resnet34", "imagenet", 224, 1000, 256, 3e-4, 0.0)
    assert (cc.instance_temperature, cc.cluster_temperature, cc.jitter_strength) == (0.5, 1.0, 0.5)
    assert resolve_config("cc", dataset="stl10").jitter_strength == 1.0
    s = resolve_config("simclr_kmeans")
    assert (s.backbone, s.stem, s.image_size, s.epochs, s.batch_size, s.lr, s.temperature) == \
        ("resnet18", "cifar", 32, 500, 512, 0.4, 0.1)
    i = resolve_config("idfd")
    assert (i.epochs, i.batch_size, i.lr, i.lr_milestones, i.temperature, i.fd_temperature, i.kmeans_n_init) == \
        (2000, 128, 0.03, [600, 950, 1300, 1650], 1.0, 2.0, 20)
    p = resolve_config("pica")
    assert (p.backbone, p.sobel, p.overclustering, p.epochs, p.batch_size, p.data_nrepeat, p.entropy_weight) == \
        ("resnet34", True, 70, 200, 256, 3, 2.0)
    proto = get_method("cc").protocol_fields(cc)
    assert proto == {"image_size": 224, "stem": "imagenet", "backbone": "resnet34", "epochs": 1000,
                     "batch_size": 256}
    assert resolve_config("cc", "cifar32").image_size == 32


def test_bad_config_is_one_clear_error():
    with pytest.raises(BenchError, match="heads"):
        resolve_config("cc", overrides={"heads": "both"})
    with pytest.raises(BenchError, match="no variant"):
        resolve_config("idfd", "idfd_plus")


def _record(method, variant, dataset, acc, seed=0):
    return ResultRecord(key=f"{method}-{variant}-{dataset}-{seed}", method=method, variant=variant, dataset=dataset,
                        seed=seed, config={}, protocol={"train_split": "all", "eval_split": "all"}, data_md5="m",
                        status="ok", metrics={"acc": acc, "nmi": acc / 2, "ari": acc / 3})


@pytest.mark.parametrize("suite,rows", [
    ("cc_table", ["CC"]),
    ("cc_heads_ablation", ["ICH + CCH", "ICH only", "CCH only"]),
    ("cc_aug_ablation", ["Ta(x) + Tb(x)", "Ta(x) + x", "x + x"]),
    ("idfd_variants", ["ID", "IDFO", "IDFD"]),
])
def test_paper_table_suites_render(tmp_path, suite, rows):
    spec = load_suite(ROOT / "suites" / f"{suite}.yaml")
    table = spec.tables[0]
    assert [r.label for r in table.rows] == rows
    for r in table.rows:  # every row names a registered method and variant
        resolve_config(r.method, r.variant)
    records = [_record(r.method, r.variant, ds, 0.5 + 0.1 * i)
               for i, r in enumerate(table.rows) for ds in (table.datasets or spec.datasets)]
    paths = write_report(records, tmp_path, title=suite, tables=[table.model_dump()])
    md, tex = paths["markdown"].read_text(), paths["latex"].read_text()
    for i, label in enumerate(rows):
        line = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        assert f"{(0.5 + 0.1 * i) * 100:.1f}" in line
        assert label.replace("_", "\\_") in tex
    starts = [md.index(f"| {label} |") for label in rows]
    assert starts == sorted(starts)  # the paper's row order


def test_short_gpu_suites_state_their_schedule():
    cc = load_suite(ROOT / "suites" / "cc_cifar10_short.yaml")
    by_variant = {m.variants[0]: m.config for m in cc.methods}
    assert by_variant["default"]["epochs"] < 1000 and by_variant["cifar32"]["epochs"] < 1000
    assert all(c["max_minutes"] for c in by_variant.values())  # stops cleanly inside a 10-minute command
    simclr = load_suite(ROOT / "suites" / "simclr_cifar10_short.yaml")
    assert simclr.methods[0].name == "simclr_kmeans" and simclr.methods[0].config["epochs"] < 500

"""SCAN and SPICE on the stage graph (CPU, tiny): each method runs to a result with its label-free selection,
and SimCLR + k-means, SCAN and SPICE on one seed build the SimCLR pretext stage once (issue 15 item 8).

Data: 50 of scikit-learn's 8x8 digits, the zeros and ones (40 train, 10 test), so that a one-epoch pretext and a
few SPICE-Self epochs already separate two clusters; ResNet-18 with the CIFAR stem at 8 px, one CPU thread
(two threads are several times slower on the shared 2-core CI machine).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import checkpointed_epoch, sigkill_after_checkpoint

from bench.context import TrialContext
from bench.data import DATASETS, DatasetSpec, Splits
from bench.method import ClusteringData
from bench.metrics import evaluate
from bench.registry import get_method, resolve_config
from bench.runner import run_suite
from bench.stages import StageStore
from bench.suite import parse_suite
from tests.conftest import Cut, count_and_cut

PRETEXT = {"image_size": 8, "pretext_epochs": 1, "pretext_batch_size": 16, "pretext_lr": 0.01, "eval_batch_size": 64}
SCAN_TINY = {**PRETEXT, "scan_epochs": 2, "scan_batch_size": 8, "n_neighbors": 3, "eval_neighbors": 2,
             "num_heads": 3, "selflabel_epochs": 2, "selflabel_batch_size": 10, "confidence_threshold": 0.5}
SPICE_TINY = {**PRETEXT, "self_epochs": 6, "self_batch_size": 20, "train_sub_batch_size": 5, "num_repeat": 2,
              "num_heads": 2, "self_lr": 0.05, "ce_on_probabilities": False, "reliable_neighbors": 3,
              "reliable_agree": 0.6, "reliable_confidence": 0.5, "semi_iterations": 3, "semi_batch_size": 4,
              "semi_uratio": 2}
KMEANS_TINY = {"image_size": 8, "epochs": 1, "batch_size": 16, "lr": 0.01, "eval_batch_size": 64, "kmeans_n_init": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _digits01() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.flatnonzero(d.target < 2)[:50]
    x = torch.from_numpy(np.clip(np.rint(d.images[keep] * (255 / 16)), 0, 255).astype(np.uint8))[:, None]
    return x, d.target[keep]


def _fit(name: str, variant: str, overrides: dict, root: Path, key: str | None = None):
    x, y = _digits01()
    data = ClusteringData("digits01", x[:40], x[40:], 2, "train", "test", "md5-digits01")
    ctx = TrialContext(seed=0, device="cpu", artifact_dir=root / (key or name), stage_dir=root / "stages",
                       data_md5=data.md5, code_version="test", scorer=lambda p: evaluate(y[40:], p), key=key or name,
                       run_id="r")
    torch.manual_seed(0)
    out = get_method(name)(resolve_config(name, variant, None, overrides)).fit(data, ctx)
    labels = out.labels_numpy()
    assert labels.shape == (10,) and 0 <= labels.min() and labels.max() < 2
    return out, ctx


def test_scan_selects_the_lowest_loss_head_and_self_labels(tmp_path):
    out, ctx = _fit("scan", "default", SCAN_TINY, tmp_path)
    scan_rows = [r for r in ctx.curve if r.get("phase") == "scan"]
    self_rows = [r for r in ctx.curve if r.get("phase") == "selflabel"]
    assert [r["epoch"] for r in scan_rows] == [1, 2] and [r["epoch"] for r in self_rows] == [3, 4]
    for r in scan_rows:  # total = consistency - 5 x entropy, each summed over the heads
        assert r["loss"] == pytest.approx(r["loss_consistency"] - 5.0 * r["loss_entropy"], abs=1e-4)
        assert 0 <= r["select_head"] < 3 and 0.0 <= r["eval_acc"] <= 1.0
    # the kept (epoch, head) is the lowest label-free selection score over all epochs
    best = min(scan_rows, key=lambda r: r["select_loss"])
    assert out.info["scan_select_loss"] == pytest.approx(best["select_loss"])
    assert (out.info["scan_best_epoch"], out.info["scan_best_head"]) == (best["epoch"], best["select_head"])
    assert all(math.isfinite(r["loss"]) and 0.0 <= r["confident_frac"] <= 1.0 for r in self_rows)
    assert [u["name"] for u in ctx.stages_used] == ["simclr_pretext", "neighbours", "scan_clustering"]
    assert get_method("scan").train_split == "train" and get_method("scan").eval_split == "test"


def test_scan_only_variant_stops_after_the_scan_step(tmp_path):
    out, ctx = _fit("scan", "scan_only", SCAN_TINY, tmp_path)
    assert out.info["selflabel_epochs"] == 0
    # the SCAN step's epochs are the scan_clustering stage's curve; the trial itself only reports
    assert {r.get("phase") for r in ctx.curve if r.get("stage") == "scan_clustering"} == {"scan"}
    assert {r.get("phase") for r in ctx.curve if "stage" not in r} == {"selected"}


def test_scan_recipe_defaults():
    c = resolve_config("scan")
    assert (c.pretext_epochs, c.n_neighbors, c.entropy_weight, c.scan_epochs, c.scan_batch_size, c.scan_lr) == \
        (500, 20, 5.0, 50, 128, 1e-4)
    assert (c.selflabel_epochs, c.selflabel_batch_size, c.confidence_threshold, c.class_balancing, c.cutout) == \
        (200, 1000, 0.99, True, 16)
    c20 = resolve_config("scan", dataset="cifar100-20")
    assert (c20.scan_epochs, c20.scan_batch_size, c20.normalization) == (100, 512, "cifar20")
    s = resolve_config("spice")
    assert (s.num_heads, s.self_epochs, s.self_batch_size, s.self_lr, s.center_ratio, s.num_repeat) == \
        (10, 30, 5000, 0.005, 0.5, 8)
    assert (s.reliable_neighbors, s.reliable_agree, s.reliable_confidence, s.semi_threshold, s.semi_iterations) == \
        (100, 0.9, 0.99, 0.95, 2 ** 20)


def test_spice_self_then_semi(tmp_path):
    out, ctx = _fit("spice", "default", SPICE_TINY, tmp_path)
    self_rows = [r for r in ctx.curve if r.get("phase") == "self"]
    semi_rows = [r for r in ctx.curve if r.get("phase") == "semi"]
    assert len(self_rows) == 6 and [r["iteration"] for r in semi_rows] == [1, 2, 3]
    best = min(self_rows, key=lambda r: r["select_loss"])
    assert out.info["self_select_loss"] == pytest.approx(best["select_loss"])
    assert out.info["reliable_labels"] >= 2 and out.info["reliable_labels"] % 2 == 0  # balanced over 2 clusters
    assert all(math.isfinite(r["loss"]) for r in semi_rows)
    names = [u["name"] for u in ctx.stages_used]
    assert names == ["simclr_pretext", "spice_self", "neighbours"]
    assert {r.get("stage") for r in self_rows} == {"spice_self"}  # SPICE-Self's epochs are its stage's curve
    # SPICE's 100-NN (here 3) in the 512-d backbone embedding: another neighbours node than SCAN's
    nb_key = ctx.stages_used[2]["key"]
    _, scan_ctx = _fit("scan", "scan_only", SCAN_TINY, tmp_path, key="scan")
    assert scan_ctx.stages_used[0] == {**ctx.stages_used[0], "reused": True}  # the same pretext network
    assert scan_ctx.stages_used[1]["key"] != nb_key


def test_spice_self_variant_has_no_semi_step(tmp_path):
    out, ctx = _fit("spice", "self", SPICE_TINY, tmp_path)
    assert "reliable_labels" not in out.info and not [r for r in ctx.curve if r.get("phase") == "semi"]
    assert [u["name"] for u in ctx.stages_used] == ["simclr_pretext", "spice_self"]  # no neighbours needed


def test_spice_variants_share_one_spice_self_build(tmp_path):
    """SPICE-Self is a stage: the variant ``self`` reads the heads the ``default`` trial of the same seed built
    (same selection, same labels), without training them again."""
    import methods.stages.spice_self as self_mod

    default, d_ctx = _fit("spice", "default", SPICE_TINY, tmp_path, key="default")
    calls = []
    real = self_mod.spice_self_loss
    self_mod.spice_self_loss = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    try:
        only, o_ctx = _fit("spice", "self", SPICE_TINY, tmp_path, key="self")
    finally:
        self_mod.spice_self_loss = real
    assert calls == [], "the self variant trained SPICE-Self again instead of reusing the stage"
    used = {u["name"]: u for u in o_ctx.stages_used}
    assert used["spice_self"]["reused"] and used["spice_self"]["key"] == \
        {u["name"]: u for u in d_ctx.stages_used}["spice_self"]["key"]
    for k in ("self_best_epoch", "self_best_head", "self_select_loss"):
        assert only.info[k] == default.info[k]


def test_spice_self_cut_and_run_again_ends_like_an_uncut_run(tmp_path, monkeypatch):
    """SPICE-Self cut in its third epoch (inside a round's sub-batch steps): the same trial run again resumes from the
    stage build's checkpoint after epoch 2 (not from scratch) and ends with the uncut run's labels, selection and
    curve."""
    import methods.stages.spice_self as self_mod

    calls = count_and_cut(monkeypatch, self_mod, "spice_self_loss")
    uncut, uncut_ctx = _fit("spice", "self", SPICE_TINY, tmp_path / "uncut")
    per_epoch = calls["n"] // SPICE_TINY["self_epochs"]
    assert per_epoch * SPICE_TINY["self_epochs"] == calls["n"] and per_epoch >= 2
    calls.update(n=0, cut_at=2 * per_epoch + 2)  # the second step of epoch 3
    with pytest.raises(Cut):
        _fit("spice", "self", SPICE_TINY, tmp_path / "cut")
    assert list((tmp_path / "cut" / "stages").rglob("checkpoint.pt")), "the cut build left no checkpoint"
    calls.update(n=0, cut_at=None)
    again, again_ctx = _fit("spice", "self", SPICE_TINY, tmp_path / "cut")
    assert calls["n"] == (SPICE_TINY["self_epochs"] - 2) * per_epoch  # resumed after epoch 2
    assert np.array_equal(again.labels_numpy(), uncut.labels_numpy())
    assert again.info == uncut.info

    def untimed(curve):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "epoch_s")} for r in curve]

    assert untimed(again_ctx.curve) == untimed(uncut_ctx.curve)


def test_spice_semi_cut_and_run_again_ends_like_an_uncut_run(tmp_path, monkeypatch):
    """SPICE-Semi cut in its fourth iteration (one iteration per evaluation period here): the same trial run again
    reuses the SPICE-Self stage, resumes FixMatch from the trial's checkpoint after iteration 3 and ends with the
    uncut run's labels, info and curve."""
    import methods.spice as spice_mod

    cfg = {**SPICE_TINY, "semi_iterations": 6}
    calls = count_and_cut(monkeypatch, spice_mod, "fixmatch_loss")
    uncut, uncut_ctx = _fit("spice", "default", cfg, tmp_path / "uncut")
    assert calls["n"] == 6
    calls.update(n=0, cut_at=4)
    with pytest.raises(Cut):
        _fit("spice", "default", cfg, tmp_path / "cut")
    assert (tmp_path / "cut" / "spice" / "checkpoint.pt").exists(), "the cut run left no checkpoint"
    calls.update(n=0, cut_at=None)
    again, again_ctx = _fit("spice", "default", cfg, tmp_path / "cut")
    assert calls["n"] == 3  # iterations 4-6 only
    assert np.array_equal(again.labels_numpy(), uncut.labels_numpy())
    assert again.info == uncut.info
    assert not (tmp_path / "cut" / "spice" / "checkpoint.pt").exists()

    def untimed(curve):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "epoch_s")} for r in curve]

    assert untimed(again_ctx.curve) == untimed(uncut_ctx.curve)


@pytest.fixture
def digits01_dataset():
    from bench.data import _digits_file

    def read(root, cache, md5s):
        x, y = _digits01()
        t = torch.as_tensor(y).long()
        return Splits(x[:40], t[:40], x[40:], t[40:])

    DATASETS["digits01"] = DatasetSpec("digits01", 2, {}, read, "zeros and ones of the bundled digits (test only)",
                                       bundled_file=_digits_file)
    yield "digits01"
    DATASETS.pop("digits01", None)


def test_suite_builds_the_shared_pretext_once(store, digits01_dataset):
    """Issue 15 item 8: SimCLR + k-means, SCAN (+ self-label and SCAN-only) and SPICE (Self and Semi) on one seed:
    one `simclr_pretext` node in the store, named by every record, built for one trial and reused by the others."""
    spec = parse_suite({
        "name": "shared_pretext", "seeds": [0], "datasets": [digits01_dataset], "device": "cpu",
        "methods": [{"name": "simclr_kmeans", "config": KMEANS_TINY},
                    {"name": "scan", "variants": ["default", "scan_only"], "config": SCAN_TINY},
                    {"name": "spice", "variants": ["default", "self"], "config": SPICE_TINY}]})
    man = run_suite(spec, store=store, data_root=store.root, inline=True)
    recs = store.run_records(man)
    assert len(recs) == 5 and all(r.ok for r in recs), [(r.method, r.variant, r.error) for r in recs]
    pretext = [[u for u in r.stages if u["name"] == "simclr_pretext"] for r in recs]
    assert all(len(p) == 1 for p in pretext)
    keys = {p[0]["key"] for p in pretext}
    assert len(keys) == 1, "all five trials must read the same pretext network"
    stored = [e for e in StageStore(store.stage_dir).entries() if e["name"] == "simclr_pretext"]
    assert [e["key"] for e in stored] == list(keys)  # built once
    assert sum(not p[0]["reused"] for p in pretext) <= 1 and sum(p[0]["reused"] for p in pretext) >= 4
    nb = {u["key"] for r in recs for u in r.stages if u["name"] == "neighbours"}
    assert len(nb) == 2  # SCAN's top-20 (here 3) on the projection; SPICE's 100 (here 3) on the backbone


@pytest.mark.parametrize("cut_kind,cut_call", [("scan", 7), ("self", 3)])
def test_scan_killed_and_run_again_ends_like_an_uncut_run(tmp_path, monkeypatch, cut_kind, cut_call):
    """40 train images: a SCAN epoch is 5 steps (one SCAN-loss call each, all heads at once), a self-labelling
    epoch 2 steps. Cut in SCAN epoch 2 (call 7) or in self-labelling epoch 2 (call 3), with a checkpoint at every
    epoch end; the same trial run again resumes after the last finished epoch and ends exactly as an uncut run."""
    import methods.scan as scan_mod
    import methods.stages.scan_clustering as step_mod

    cfg = {**SCAN_TINY, "scan_epochs": 2, "selflabel_epochs": 2, "selflabel_batch_size": 20}
    uncut, uncut_ctx = _fit("scan", "default", cfg, tmp_path / "uncut")
    # checkpoint at every epoch end (harness knobs: not in the stage or trial keys)
    monkeypatch.setattr(step_mod, "CHECKPOINT_EVERY", 1)
    monkeypatch.setattr(scan_mod, "SELFLABEL_CHECKPOINT_EVERY", 1)
    calls = {"scan": 0, "self": 0}
    cut = {"kind": cut_kind, "call": cut_call}

    def counting(real, kind):
        def f(*a, **k):
            calls[kind] += 1
            if kind == cut["kind"] and calls[kind] == cut["call"]:
                raise Cut
            return real(*a, **k)
        return f

    monkeypatch.setattr(step_mod, "scan_loss", counting(step_mod.scan_loss, "scan"))
    monkeypatch.setattr(scan_mod, "confidence_ce", counting(scan_mod.confidence_ce, "self"))
    with pytest.raises(Cut):
        _fit("scan", "default", cfg, tmp_path / "cut")
    # the SCAN step checkpoints in its stage's partial folder, self-labelling in the trial's artifact folder
    left = (list((tmp_path / "cut" / "stages" / "scan_clustering").glob(".partial-*/checkpoint.pt"))
            if cut_kind == "scan" else list((tmp_path / "cut" / "scan").glob("checkpoint.pt")))
    assert left, "the cut run left no checkpoint"
    calls.update(scan=0, self=0)
    cut["kind"] = None
    again, again_ctx = _fit("scan", "default", cfg, tmp_path / "cut")
    # resumed, not restarted: only what was left after the last finished epoch ran again
    assert calls == ({"scan": 5, "self": 4} if cut_kind == "scan" else {"scan": 0, "self": 2})
    assert np.array_equal(again.labels_numpy(), uncut.labels_numpy())
    assert untimed(again_ctx.curve) == untimed(uncut_ctx.curve)
    assert again.info == uncut.info
    assert not list((tmp_path / "cut").rglob("checkpoint.pt"))  # a finished run leaves none behind


def untimed(curve: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "epoch_s")} for r in curve]


# a real SCAN trial in a child process, checkpointing at every epoch end of the SCAN step and of self-labelling; each
# epoch ends 0.5 s later (the kill lands mid-run) and the epoch of each phase's last checkpoint goes to a small file
SCAN_KILLED_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import methods.scan as scan_mod
import methods.stages.scan_clustering as step_mod
from methods.engine import CheckpointHook, CurveLogHook
step_mod.CHECKPOINT_EVERY = scan_mod.SELFLABEL_CHECKPOINT_EVERY = 1
_save = CheckpointHook.after_epoch
def _slow(self, engine):
    _save(self, engine)
    if self.saved_epochs:
        phase = engine.hook(CurveLogHook).tags.get("phase", "other")
        Path({tmp!r}, "saved-" + phase).write_text(str(self.saved_epochs[-1]))
    time.sleep(0.5)
CheckpointHook.after_epoch = _slow
from test_scan_spice import _fit, SCAN_KILL_CFG
_fit("scan", "default", SCAN_KILL_CFG, Path({tmp!r}))
print("finished", flush=True)
"""
SCAN_KILL_CFG = {**SCAN_TINY, "scan_epochs": 4, "selflabel_epochs": 4, "selflabel_batch_size": 20}


def _saved(root: Path, phase: str) -> int:
    try:
        return int((root / f"saved-{phase}").read_text())
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_sigkilled_scan_step_and_selflabelling_resume_to_the_uncut_labels(tmp_path, caplog):
    """The real thing, twice: a process running a SCAN trial is SIGKILLed once the SCAN step (a stage, checkpointing
    in its partial folder) has checkpointed epoch 2 of 4; a second process resumes it there, finishes it, and is
    SIGKILLed once self-labelling (checkpointing in the trial's folder) has checkpointed epoch 2 of 4; the trial run
    a third time resumes self-labelling and ends with the uncut run's labels, curve and info."""
    uncut, uncut_ctx = _fit("scan", "default", SCAN_KILL_CFG, tmp_path / "uncut")
    cut = tmp_path / "cut"
    cut.mkdir()
    child = SCAN_KILLED_CHILD.format(tests=str(Path(__file__).parent), tmp=str(cut))
    sigkill_after_checkpoint(child, lambda: _saved(cut, "scan"))
    assert _saved(cut, "selflabel") == 0 and _saved(cut, "scan") < 4
    assert checkpointed_epoch("stages/scan_clustering/.partial-*/checkpoint.pt", cut) >= 2
    sigkill_after_checkpoint(child, lambda: _saved(cut, "selflabel"))
    assert checkpointed_epoch("scan/checkpoint.pt", cut) >= 2
    assert not list(cut.glob("stages/scan_clustering/.partial-*/checkpoint.pt"))  # the SCAN step was finished
    with caplog.at_level("INFO", logger="bench.trial"):
        again, again_ctx = _fit("scan", "default", SCAN_KILL_CFG, cut)
    assert any("resuming from the checkpoint after epoch" in r.getMessage() for r in caplog.records)
    assert np.array_equal(again.labels_numpy(), uncut.labels_numpy())
    assert untimed(again_ctx.curve) == untimed(uncut_ctx.curve)
    assert again.info == uncut.info


def test_suite_builds_the_scan_step_once_per_seed_for_both_variants(store, digits01_dataset):
    """SCAN-only and SCAN + self-label on two seeds: one `scan_clustering` node per seed, planned and built once,
    named by both variants' records (built for one, reused by the other), both reporting the same (epoch, head)
    selection."""
    from bench.plan import plan_suite

    spec = parse_suite({
        "name": "scan_step", "seeds": [0, 1], "datasets": [digits01_dataset], "device": "cpu",
        "methods": [{"name": "scan", "variants": ["default", "scan_only"], "config": SCAN_TINY}]})
    plan = plan_suite(spec, store, store.root, code={"code_version": "c1"})
    assert sorted((u.name, tuple(u.seeds)) for u in plan.stage_units if u.name == "scan_clustering") == \
        [("scan_clustering", (0,)), ("scan_clustering", (1,))]
    man = run_suite(spec, store=store, data_root=store.root, inline=True, code={"code_version": "c1"})
    recs = store.run_records(man)
    assert len(recs) == 4 and all(r.ok for r in recs), [(r.method, r.variant, r.error) for r in recs]
    stored = [e for e in StageStore(store.stage_dir).entries() if e["name"] == "scan_clustering"]
    assert len(stored) == 2  # one per seed, not one per variant
    for seed in (0, 1):
        uses = [[u for u in r.stages if u["name"] == "scan_clustering"] for r in recs if r.seed == seed]
        assert all(len(u) == 1 for u in uses) and len({u[0]["key"] for u in uses}) == 1
        assert sorted(u[0]["reused"] for u in uses) == [False, True]
        # both variants also name the pretext and neighbours the step was trained from
        assert all({"simclr_pretext", "neighbours"} <= {u["name"] for u in r.stages} for r in recs if r.seed == seed)
        by_variant = {r.variant: r for r in recs if r.seed == seed}
        assert by_variant["default"].info["scan_best_head"] == by_variant["scan_only"].info["scan_best_head"]
        assert by_variant["default"].info["scan_select_loss"] == by_variant["scan_only"].info["scan_select_loss"]
        assert (by_variant["default"].info["selflabel_epochs"], by_variant["scan_only"].info["selflabel_epochs"]) == \
            (2, 0)

"""methods/engine: the epoch engine and each hook on a toy model (CPU, fast), named RNG streams, and the ported
methods' determinism (same seed -> same labels twice, CPU, deterministic mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import Field

from bench.context import TrialContext
from bench.errors import NonFiniteLossError
from methods.engine import (
    CheckpointHook,
    EarlyStopHook,
    Engine,
    EngineConfig,
    EvalHook,
    Hook,
    LrScheduleHook,
    Priority,
    TargetUpdateHook,
    TimeBudgetExceeded,
)

ROOT = Path(__file__).resolve().parent.parent


class ToyConfig(EngineConfig):
    epochs: int = Field(6, ge=1)
    lr: float = 0.1
    batch_size: int = 4


class Centroids(TargetUpdateHook):
    """A re-clustering hook in miniature: targets = the current outputs' mean, recomputed every ``every`` epochs."""

    def __init__(self, net, x, targets, every):
        super().__init__(every)
        self.net, self.x, self.targets, self.at = net, x, targets, []

    def update(self, engine):
        self.at.append(engine.epoch)
        with torch.no_grad():
            self.targets.copy_(self.net(self.x).mean(0))

    def state_dict(self):
        return {**super().state_dict(), "targets": self.targets.clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.targets.copy_(state["targets"])


def make_ctx(tmp: Path, seed: int = 0) -> TrialContext:
    return TrialContext(seed=seed, device="cpu", artifact_dir=tmp / "artifact", stage_dir=tmp / "stages",
                        data_md5="md5", code_version="test", scorer=lambda p: {"n_clusters": float(len(set(p)))})


def toy_engine(tmp: Path, cfg: ToyConfig, *, hooks=(), evaluate=None, every_update: int = 2, seed: int = 0,
               loss_scale: float = 1.0):
    """A linear model pulled towards targets that a TargetUpdateHook refreshes; noise from an "augment" stream."""
    ctx = make_ctx(tmp, seed)
    x = torch.randn(18, 4, generator=torch.Generator().manual_seed(1))
    with ctx.init_rng("init"):
        net = torch.nn.Linear(4, 3)
    targets = torch.zeros(3)
    g_aug = ctx.rng("augment")

    def step(idx):
        out = net(x.index_select(0, idx) + 0.1 * torch.randn(len(idx), 4, generator=g_aug))
        loss = ((out - targets - 1.0) ** 2).mean() * loss_scale
        return {"loss": loss, "loss_abs": out.abs().mean(), "outputs": out.detach()}

    centroids = Centroids(net, x, targets, every_update)
    all_hooks = [centroids, *hooks]
    if evaluate is not None:
        all_hooks.append(EvalHook(lambda e: evaluate(net, x, ctx), cfg.eval_every))
    engine = Engine(ctx, cfg, modules={"net": net}, optimizer=torch.optim.SGD(net.parameters(), lr=cfg.lr,
                                                                             momentum=0.9),
                    streams={"augment": g_aug}, hooks=all_hooks)
    engine.add_pass("train", x.shape[0], step, cfg.batch_size, drop_last=False)
    return engine, net, ctx, centroids


def weights(net) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_checkpoint_every_n_epochs_saves_at_those_epochs_and_is_removed_at_the_end(tmp_path, monkeypatch):
    cfg = ToyConfig(epochs=7, checkpoint_every=3)
    engine, _, ctx, _ = toy_engine(tmp_path, cfg)
    saved: list[int] = []
    real = ctx.save_checkpoint
    monkeypatch.setattr(ctx, "save_checkpoint", lambda st: (saved.append(st["engine"]["epoch"]), real(st)))
    engine.run(cfg.epochs)
    assert saved == [3, 6] == engine.hook(CheckpointHook).saved_epochs  # never after the last epoch
    assert not ctx.checkpoint_path.exists()
    assert [r["epoch"] for r in ctx.curve] == list(range(1, 8))
    assert engine.info()["epochs_run"] == 7 and engine.info()["resumed_from_epoch"] is None


def test_time_budget_cut_and_resume_again_and_again_equals_an_uncut_run(tmp_path):
    """max_minutes=0: every command stops after one epoch with a checkpoint; re-running resumes. Weights, the
    targets of the update hook, RNG streams and the curve end exactly as in one uninterrupted run."""
    cfg = ToyConfig(epochs=5, checkpoint_every=2)
    full, net_full, ctx_full, cent_full = toy_engine(tmp_path / "full", cfg)
    full.run(cfg.epochs)
    cuts = 0
    while True:
        engine, net, ctx, cent = toy_engine(tmp_path / "cut", cfg.model_copy(update={"max_minutes": 0.0}))
        try:
            engine.run(cfg.epochs)
            break
        except TimeBudgetExceeded as exc:
            cuts += 1
            assert f"resume from epoch {engine.epoch + 1}" in str(exc)
            assert ctx.checkpoint_path.exists()
    assert cuts == 4 and engine.resumed_from == 4
    assert torch.equal(weights(net), weights(net_full))
    assert torch.equal(cent.targets, cent_full.targets) and cent.updates == cent_full.updates == 3
    assert [r["loss"] for r in ctx.curve] == [r["loss"] for r in ctx_full.curve]
    assert not ctx.checkpoint_path.exists()


def test_checkpoint_of_another_config_is_not_resumed(tmp_path):
    cfg = ToyConfig(epochs=3, max_minutes=0.0)
    with pytest.raises(TimeBudgetExceeded):
        toy_engine(tmp_path, cfg)[0].run(cfg.epochs)
    engine, *_ = toy_engine(tmp_path, cfg.model_copy(update={"lr": 0.05, "max_minutes": None}))
    engine.run(cfg.epochs)
    assert engine.resumed_from is None and engine.info()["epochs_run"] == 3
    # harness knobs (eval cadence, checkpoint interval, budget) are not part of the fingerprint
    assert ToyConfig(eval_every=1, checkpoint_every=5).fingerprint() == ToyConfig().fingerprint()


KILLED_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_engine import ToyConfig, Hook, toy_engine

class Slow(Hook):
    def after_epoch(self, engine):
        time.sleep(0.4)

cfg = ToyConfig(epochs=8)
engine, *_ = toy_engine(Path({tmp!r}), cfg, hooks=[Slow()])
print("started", flush=True)
engine.run(cfg.epochs)
print("finished", flush=True)
"""


def checkpointed_epoch(ckpt_glob: str, root: Path) -> int:
    """The epoch of the checkpoint matching ``root/ckpt_glob`` (0: none yet)."""
    for ckpt in root.glob(ckpt_glob):
        try:
            return torch.load(ckpt, weights_only=False)["engine"]["epoch"]
        except Exception:  # noqa: BLE001 - read while being replaced: try again
            return 0
    return 0


def sigkill_after_checkpoint(child: str, progress, min_epoch: int = 2) -> None:
    """Run ``child`` (Python source) in a real subprocess and SIGKILL it once ``progress()`` (the epoch of its
    last checkpoint) is >= ``min_epoch``; asserts it was killed mid-run (never finished)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # the child computes with this process's thread count: float sums (and so the weights) depend on it
    child = f"import torch; torch.set_num_threads({torch.get_num_threads()})\n" + child
    proc = subprocess.Popen([sys.executable, "-c", child], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if progress() >= min_epoch:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the child ended before the kill: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "finished" not in out, err


def test_sigkilled_run_resumes_to_the_uncut_result(tmp_path):
    """The real thing: a process training the toy model is SIGKILLed once its checkpoint holds epoch >= 2; the
    next run of the same trial resumes from that checkpoint and ends with the uncut run's weights."""
    cfg = ToyConfig(epochs=8)
    full, net_full, _, _ = toy_engine(tmp_path / "full", cfg)
    full.run(cfg.epochs)
    cut = tmp_path / "cut"
    sigkill_after_checkpoint(KILLED_CHILD.format(tests=str(ROOT / "tests"), tmp=str(cut)),
                             lambda: checkpointed_epoch("artifact/checkpoint.pt", cut))
    engine, net, ctx, _ = toy_engine(cut, cfg)
    engine.run(cfg.epochs)
    assert engine.resumed_from is not None and 2 <= engine.resumed_from < 8
    assert torch.equal(weights(net), weights(net_full))
    assert [r["epoch"] for r in ctx.curve] == list(range(1, 9))


# the ported methods' children: every engine epoch ends 0.5 s later (after its checkpoint), so the kill lands
# mid-run; the epoch of the last checkpoint goes to a small file (polling a ResNet checkpoint is slow)
SLOW_ENGINE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from methods.engine import CheckpointHook
_save = CheckpointHook.after_epoch
def _slow(self, engine):
    _save(self, engine)
    if self.saved_epochs:
        Path({tmp!r}, "saved_epoch").write_text(str(self.saved_epochs[-1]))
    time.sleep(0.5)
CheckpointHook.after_epoch = _slow
"""


def saved_epoch(root: Path) -> int:
    try:
        return int((root / "saved_epoch").read_text())
    except (OSError, ValueError):
        return 0

PRETEXT_CHILD = SLOW_ENGINE + """
from pathlib import Path
from test_engine import pretext_build
pretext_build(Path({tmp!r}))
print("finished", flush=True)
"""


def pretext_build(tmp: Path, seed: int = 0):
    """The ``simclr_pretext`` stage built through the stage store (as a trial asks for it): 6 epochs on 8 random
    8x8 images (one step each), a checkpoint every epoch into the stage's partial folder. -> (artifacts, ctx)."""
    import methods.stages.simclr_pretext as sp
    from bench.method import ClusteringData
    from bench.stages import StageRequest

    sp.CHECKPOINT_EVERY = 1  # a harness knob: not in the stage key
    x = torch.randint(0, 256, (8, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ClusteringData("synthetic", x, x, 3, "all", "all", "md5")
    cfg = sp.SimCLRPretext.Config(image_size=8, epochs=6, batch_size=8, lr=0.01, precision="fp32")
    ctx = make_ctx(tmp, seed).bind(data, {"pretext": StageRequest("simclr_pretext", cfg)})
    return ctx.stage("pretext"), ctx


def test_sigkilled_pretext_stage_build_resumes_to_the_uncut_weights(tmp_path, caplog):
    """A process building the SimCLR pretext stage is SIGKILLed mid-build; the next build of the same stage key
    resumes from the partial folder's checkpoint and stores exactly the weights (and curve) of an uncut build."""
    full, _ = pretext_build(tmp_path / "full")
    cut = tmp_path / "cut"
    cut.mkdir()
    sigkill_after_checkpoint(PRETEXT_CHILD.format(tests=str(ROOT / "tests"), tmp=str(cut)), lambda: saved_epoch(cut))
    assert checkpointed_epoch("stages/simclr_pretext/.partial-*/checkpoint.pt", cut) >= 2
    with caplog.at_level("INFO", logger="bench.trial"):
        resumed, ctx = pretext_build(cut)
    assert any("resuming from the checkpoint after epoch" in r.getMessage() for r in caplog.records)
    assert ctx.stages_used[0]["reused"] is False  # built (resumed) now, not read from the store
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    assert all(torch.equal(full["state_dict"][k], resumed["state_dict"][k]) for k in full["state_dict"])
    assert len(resumed["epoch_s"]) == 6
    assert not list(cut.glob("stages/simclr_pretext/.partial-*/checkpoint.pt"))


DEEPCLUSTER_CHILD = SLOW_ENGINE + """
from pathlib import Path
from test_engine import deepcluster_fit
deepcluster_fit(Path({tmp!r}))
print("finished", flush=True)
"""


def deepcluster_fit(tmp: Path):
    """DeepCluster (tiny CNN) for 8 epochs on 48 random 8x8 images, a checkpoint every epoch. -> (output, ctx)."""
    from bench.method import ClusteringData
    from bench.metrics import evaluate
    from bench.registry import get_method, resolve_config

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (48, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = np.arange(48) % 3
    data = ClusteringData("synthetic", x, x, 3, "all", "all", "md5")
    cfg = resolve_config("deepcluster", "default", None, {"backbone": "tiny_cnn", "image_size": 8, "pca_dim": 8,
                                                          "epochs": 8, "batch_size": 16, "checkpoint_every": 1})
    ctx = TrialContext(seed=0, device="cpu", artifact_dir=tmp / "artifact", stage_dir=tmp / "stages",
                       data_md5="md5", code_version="test", scorer=lambda p: evaluate(y, p))
    return get_method("deepcluster")(cfg).fit(data, ctx), ctx


def test_sigkilled_deepcluster_resumes_to_the_uncut_labels(tmp_path):
    """DeepCluster's per-epoch state (previous pseudo-labels, counts; the k-means, head-init and sampler streams)
    survives a SIGKILL: the re-run resumes and ends with the uncut run's labels, metrics and curve."""
    full, ctx_full = deepcluster_fit(tmp_path / "full")
    cut = tmp_path / "cut"
    cut.mkdir()
    sigkill_after_checkpoint(DEEPCLUSTER_CHILD.format(tests=str(ROOT / "tests"), tmp=str(cut)),
                             lambda: saved_epoch(cut))
    out, ctx = deepcluster_fit(cut)
    assert out.info["resumed_from_epoch"] is not None and 2 <= out.info["resumed_from_epoch"] < 8
    np.testing.assert_array_equal(out.labels_numpy(), full.labels_numpy())
    assert {k: v for k, v in out.info.items() if not k.endswith("_s") and k not in ("epoch_s_first",
            "resumed_from_epoch")} == {k: v for k, v in full.info.items() if not k.endswith("_s") and
                                       k not in ("epoch_s_first", "resumed_from_epoch")}
    drop = {"elapsed_s", "epoch_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in ctx.curve] == \
        [{k: v for k, v in r.items() if k not in drop} for r in ctx_full.curve]
    assert "nmi_prev" in ctx.curve[out.info["resumed_from_epoch"]]  # the previous pseudo-labels were restored


def _labels_from_kmeans_stream(net, x, ctx):
    """An eval pass like the methods': net in eval mode, k-means-like draws from a fresh named stream."""
    g = ctx.rng("kmeans")
    centres = net(x)[torch.randperm(x.shape[0], generator=g)[:3]]
    return torch.cdist(net(x), centres).argmin(1)


def test_eval_hook_logs_every_n_epochs_and_never_changes_the_result(tmp_path):
    runs = {}
    for every in (0, 1, 2):
        cfg = ToyConfig(epochs=5, eval_every=every)
        engine, net, ctx, _ = toy_engine(tmp_path / str(every), cfg, evaluate=_labels_from_kmeans_stream)
        engine.run(cfg.epochs)
        runs[every] = (weights(net), engine.hook(EvalHook).pred, ctx)
    assert [r["epoch"] for r in runs[2][2].curve if "eval_n_clusters" in r] == [2, 4, 5]  # and always the last
    assert [r["epoch"] for r in runs[0][2].curve if "eval_n_clusters" in r] == [5]
    assert all("eval_n_clusters" in r for r in runs[1][2].curve)
    for every in (1, 2):
        assert torch.equal(runs[every][0], runs[0][0])
        assert torch.equal(runs[every][1], runs[0][1])
        assert [r["loss"] for r in runs[every][2].curve] == [r["loss"] for r in runs[0][2].curve]


def test_lr_schedule_hook_sets_and_logs_the_lr_each_epoch(tmp_path):
    cfg = ToyConfig(epochs=5)
    engine, *_ , ctx, _ = toy_engine(tmp_path / "m", cfg, hooks=[LrScheduleHook.multistep(0.1, [2, 4], 0.5)])
    engine.run(cfg.epochs)
    assert [r["lr"] for r in ctx.curve] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])  # epochs done 0..4
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    engine, *_, ctx, _ = toy_engine(tmp_path / "c", cfg, hooks=[LrScheduleHook.cosine(0.1, 5, 0.01)])
    engine.run(cfg.epochs)
    lrs = [r["lr"] for r in ctx.curve]
    assert lrs[0] == pytest.approx(0.1) and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0.001


def test_target_update_hook_runs_before_every_nth_epoch(tmp_path):
    cfg = ToyConfig(epochs=7)
    engine, _, _, cent = toy_engine(tmp_path, cfg, every_update=3)
    engine.run(cfg.epochs)
    assert cent.at == [1, 4, 7] and cent.updates == 3
    with pytest.raises(ValueError):
        Centroids(None, None, None, 0)


def test_target_update_hook_after_epochs_updates_before_the_first_and_after_every_nth_and_the_last(tmp_path):
    cfg = ToyConfig(epochs=7)
    engine, _, _, cent = toy_engine(tmp_path / "a", cfg, every_update=3)
    cent.after = True  # DEC's schedule: the update can stop the run before another epoch starts
    engine.run(cfg.epochs)
    assert cent.at == [1, 3, 6, 7] and cent.updates == 4
    engine, _, _, cent = toy_engine(tmp_path / "b", cfg, every_update=3)
    cent.after = True
    engine.run(0)  # no epochs (DEC with max_iters 0): the first targets still come, at the end
    assert cent.at == [0] and cent.updates == 1


def test_early_stop_restores_the_best_epochs_weights_and_starts_from_a_baseline(tmp_path):
    cfg = ToyConfig(epochs=6)
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.8, 0.95])  # best at epoch 2; two epochs without a better one stop it
    seen = {}

    class Score(Hook):
        def after_epoch(self, engine):
            engine.log["score"] = next(scores)
            seen[engine.epoch] = weights(engine.modules["net"]).clone()

    stop = EarlyStopHook("score", patience=2, mode="max", baseline=lambda e: 0.6, restore_best=True)
    engine, net, ctx, _ = toy_engine(tmp_path, cfg, hooks=[Score(), stop])
    engine.run(cfg.epochs)
    assert stop.stopped_at == 4 and stop.best == 0.9  # epoch 1's 0.5 does not beat the baseline's 0.6
    assert torch.equal(weights(net), seen[2]) and not torch.equal(seen[4], seen[2])


def test_a_seed_batch_trains_each_seed_as_alone_and_checkpoints_every_seeds_curve_and_failure(tmp_path):
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    seeds = [0, 1]

    def run(ctxs, batched: bool):
        w0 = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(10 + c.seed)) for c in ctxs])
        w = torch.nn.Parameter(w0 if batched else w0[0])
        gens = [c.rng("toy/order") for c in ctxs]

        def order():  # each seed its own permutation, one row per seed in a batch
            rows = [torch.randperm(12, generator=g) for g in gens]
            return torch.stack(rows) if batched else rows[0]

        def step(idx):  # batched: idx [S, B] -> one loss per seed
            pred = (x[idx] * (w[:, None, :] if batched else w)).sum(-1)
            return {"loss": (pred - 1.0).pow(2).mean(-1)}

        losses = []

        class Losses(Hook):
            def after_epoch(self, engine):
                losses.append(engine.log["loss"])

        net = torch.nn.Module()
        net.w = w
        engine = Engine(ctxs if batched else ctxs[0], ToyConfig(epochs=3), modules={"net": net},
                        optimizer=torch.optim.SGD([w], lr=0.1, momentum=0.9),
                        streams={f"toy/order/{i}": g for i, g in enumerate(gens)}, hooks=[Losses()])
        engine.add_pass("train", 12, step, 4, order=order)
        engine.run(3)
        return engine, w.detach(), losses

    batch_ctxs = [make_ctx(tmp_path / "b", s) for s in seeds]
    engine, w_batch, losses_batch = run(batch_ctxs, True)
    assert losses_batch[0].shape == (2,)  # the epoch's mean loss of each seed
    for s in seeds:
        _, w_alone, losses_alone = run([make_ctx(tmp_path / f"a{s}", s)], False)
        torch.testing.assert_close(w_batch[s], w_alone)
        torch.testing.assert_close(torch.stack([v[s] for v in losses_batch]), torch.stack(losses_alone))
    # every seed's curve and failure go into the checkpoint and come back
    batch_ctxs[0].log_epoch(1, loss=0.5)
    batch_ctxs[1].fail(NonFiniteLossError("boom"), stage="toy", iteration=3)
    state = engine.state_dict()
    fresh = [make_ctx(tmp_path / "f", s) for s in seeds]
    again, *_ = run(fresh, True)
    again.load_state_dict(state)
    assert fresh[0].curve == batch_ctxs[0].curve and fresh[1].curve == []
    assert isinstance(fresh[1].failure, NonFiniteLossError) and fresh[1].failed_at == {"stage": "toy", "iteration": 3}
    assert fresh[0].failure is None


def test_early_stop_on_a_plateau_and_on_a_criterion(tmp_path):
    cfg = ToyConfig(epochs=50, lr=0.0, checkpoint_every=1)  # lr 0: the loss never improves after epoch 1
    stop = EarlyStopHook(monitor="loss", patience=3, min_delta=10.0)
    engine, _, ctx, _ = toy_engine(tmp_path / "plateau", cfg, hooks=[stop], evaluate=_labels_from_kmeans_stream)
    engine.run(cfg.epochs)
    assert stop.stopped_at == 4 and engine.epoch == 4 and len(ctx.curve) == 4
    assert engine.hook(EvalHook).pred_epoch == 4  # the result is the stopped epoch's, evaluated after the run
    assert not ctx.checkpoint_path.exists()
    crit = EarlyStopHook(criterion=lambda e: e.epoch == 2)
    engine, *_ = toy_engine(tmp_path / "criterion", ToyConfig(epochs=9), hooks=[crit])
    engine.run(9)
    assert engine.epoch == 2 and crit.stopped_at == 2


def test_hooks_run_in_priority_order_and_see_each_step(tmp_path):
    calls: list[str] = []

    class Rec(Hook):
        def __init__(self, name, priority):
            self.name, self.priority, self.samples = name, priority, 0

        def before_epoch(self, engine):
            calls.append(self.name)

        def after_step(self, engine, idx, outputs):
            self.samples += len(idx)
            assert outputs["outputs"].shape == (len(idx), 3)

    late, early, tie = Rec("late", Priority.LOW), Rec("early", Priority.HIGH), Rec("tie", Priority.LOW)
    cfg = ToyConfig(epochs=2)
    engine, *_ = toy_engine(tmp_path, cfg, hooks=[late, early, tie])
    engine.run(cfg.epochs)
    assert calls == ["early", "late", "tie"] * 2  # ties keep the given order
    assert late.samples == 2 * 18  # no drop_last: every sample once per epoch


def test_two_passes_log_overall_and_per_pass_means(tmp_path):
    ctx = make_ctx(tmp_path)
    net = torch.nn.Linear(1, 1)
    cfg = ToyConfig(epochs=1)
    engine = Engine(ctx, cfg, modules={"net": net}, optimizer=torch.optim.SGD(net.parameters(), lr=0.0))
    engine.add_pass("a", 4, lambda idx: {"loss": net.weight.sum() * 0 + 1.0}, batch_size=2)
    engine.add_pass("b", 6, lambda idx: {"loss": net.weight.sum() * 0 + 4.0}, batch_size=2)
    engine.run(1)
    row = ctx.curve[0]
    assert (row["loss_a"], row["loss_b"]) == (1.0, 4.0)
    assert row["loss"] == pytest.approx((2 * 1.0 + 3 * 4.0) / 5)  # over all steps of the epoch


def test_a_non_finite_loss_fails_the_epoch(tmp_path):
    cfg = ToyConfig(epochs=3)
    engine, *_ = toy_engine(tmp_path, cfg, loss_scale=float("inf"))
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        engine.run(cfg.epochs)


def test_named_rng_streams(tmp_path):
    ctx = make_ctx(tmp_path, seed=3)
    a1 = torch.rand(4, generator=ctx.rng("augment"))
    _ = torch.rand(4, generator=ctx.rng("data_order"))
    a2 = torch.rand(4, generator=ctx.rng("augment"))
    assert torch.equal(a1, a2)  # a stream depends on (seed, name) only, not on what was drawn before
    assert not torch.equal(a1, torch.rand(4, generator=ctx.rng("init")))
    assert not torch.equal(a1, torch.rand(4, generator=make_ctx(tmp_path, seed=4).rng("augment")))
    import hashlib
    assert ctx.rng("augment").initial_seed() == int(hashlib.sha256(b"3/augment").hexdigest()[:15], 16)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with ctx.init_rng("init"):
        w1 = torch.nn.Linear(3, 3).weight.detach().clone()
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was
    with ctx.init_rng("init"):
        assert torch.equal(torch.nn.Linear(3, 3).weight, w1)


# -- the ported methods ----------------------------------------------------------------------------------------

TINY = {"backbone": "resnet18", "stem": "cifar", "image_size": 8, "epochs": 2, "batch_size": 8, "eval_every": 1,
        "eval_batch_size": 16}


@pytest.mark.parametrize("method,overrides", [("cc", {"kmeans_n_init": 1}), ("pica", {"overclustering": 5,
                                              "data_nrepeat": 1}), ("idfd", {"kmeans_n_init": 1})])
def test_same_seed_same_labels_twice_in_deterministic_mode(tmp_path, method, overrides):
    """No global reseeding inside the methods: every draw comes from (seed, stream name). Two runs of a seed,
    with torch's global generator in different states, give the same labels and curve; another seed differs."""
    from bench.method import ClusteringData
    from bench.registry import get_method, resolve_config

    x = torch.randint(0, 256, (8, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ClusteringData("synthetic", x, x, 3, "all", "all", "md5")
    cfg = resolve_config(method, "default", None, {**TINY, **overrides})
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for i, seed in enumerate((0, 0, 1)):
            torch.manual_seed(1000 + i)  # whatever the global state: the method must not depend on it
            ctx = make_ctx(tmp_path / str(i), seed)
            out = get_method(method)(cfg).fit(data, ctx)
            runs.append((out.labels_numpy(), [r["loss"] for r in ctx.curve]))
    finally:
        torch.use_deterministic_algorithms(old)
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert runs[0][1] != runs[2][1]


def test_bench_cuda_graphs_0_turns_graphed_passes_off(monkeypatch):
    """The environment switch wins over a pass's ``graph=True`` and the config's ``cuda_graph`` (checked on the
    decision itself: the CPU never captures)."""
    from methods.engine.engine import Engine, EngineConfig, Pass
    from methods.engine.steps import GraphedStep

    class FakeCuda(Engine):  # the decision only: a "cuda" device on which nothing is ever captured
        def __init__(self):
            self.cfg, self.device, self._graphed, self.optimizer, self.streams = (
                EngineConfig(), torch.device("cuda"), {}, None, {})
            self.seed_batch, self.ctxs = False, []

    p = Pass("train", 8, lambda idx: {}, 4, graph=True)
    idx = torch.zeros(4, dtype=torch.long)
    monkeypatch.setenv("BENCH_CUDA_GRAPHS", "0")
    assert FakeCuda()._graphed_step(p, idx) is None
    monkeypatch.setattr(GraphedStep, "__init__", lambda self, *a, **k: setattr(self, "idx", idx))
    monkeypatch.delenv("BENCH_CUDA_GRAPHS")
    assert isinstance(FakeCuda()._graphed_step(p, idx), GraphedStep)

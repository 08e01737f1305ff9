"""Autoencoder family (AE + k-means, DEC, IDEC, DEPICT) and seed batching, on tiny synthetic data, CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.context import TrialContext
from bench.method import ClusteringData
from bench.metrics import evaluate
from bench.registry import get_method, resolve_config
from bench.stages import StageRequest, StageStore
from bench.trial import seed_everything
from methods.dec import student_t, target_distribution
from methods.depict import DepictAutoencoder, frequency_normalised
from methods.engine.steps import IndexStream, SeedIndexStreams
from methods.nn.autoencoder import (
    BatchedMLPAutoencoder,
    MLPAutoencoder,
    pretrain_stacked_batched,
    pretrained_autoencoders,
)
from methods.stages.sdae import StackedDenoisingAutoencoder as SDAE
from tests.conftest import Cut, count_and_cut

# Tiny blobs with 40-iteration stages: the Caffe solver details (Euclidean loss x 1/2, burn-in, file order,
# per-update momentum reset) would leave the autoencoder half trained; these tests are about seed batching
# and stage sharing, so they run the plain solver (the details are tested against Caffe's rule below).
TINY_AE = {"hidden_dims": [32, 32, 64, 3], "pretrain_iters_per_layer": 40, "finetune_iters": 200, "pretrain_lr": 0.01,
           "pretrain_lr_step": 1000, "pretrain_batch_size": 32, "pretrain_dropout": 0.0, "init_std": 0.1,
           "pretrain_momentum_burnin": 0, "pretrain_loss_scale": 1.0, "pretrain_bias_lr_mult": 1.0,
           "pretrain_data_order": "shuffled"}
PLAIN_DEC = {"bias_lr_mult": 1.0, "momentum_reset_at_update": False, "data_order": "shuffled"}


def blobs(n_per: int = 60, k: int = 3, side: int = 4, seed: int = 0) -> tuple[ClusteringData, np.ndarray]:
    """k well separated Gaussian blobs, shaped as [N, 1, side, side] images in [0, 1], sorted by class (the
    tests that use them shuffle minibatches: see TINY_AE)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(k, side * side, generator=g)
    y = torch.arange(k).repeat_interleave(n_per)
    x = (centers[y] + 0.03 * torch.randn(len(y), side * side, generator=g)).clamp(0, 1)
    x = x.view(-1, 1, side, side)
    data = ClusteringData(dataset="synthetic", x_train=x, x_eval=x, n_clusters=k, train_split="all",
                          eval_split="all", md5=f"blobs-{seed}-{n_per}-{k}-{side}")
    return data, y.numpy()


def ctx(seed: int, root: Path) -> TrialContext:
    return TrialContext(seed=seed, device="cpu", artifact_dir=root / "art" / str(seed), stage_dir=root / "stages",
                        data_md5="blobs", code_version="test")


def method(name: str, **overrides):
    cls = get_method(name)
    return cls(resolve_config(name, "default", "synthetic", overrides))


def test_seed_index_streams_rows_are_each_seeds_own_index_stream():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    ref = [IndexStream(50, 16, torch.Generator().manual_seed(s), torch.device("cpu")) for s in (3, 4)]
    streams = SeedIndexStreams(50, 16, gens, torch.device("cpu"), block=2)
    for _ in range(20):
        got = streams.next()
        assert got.shape == (2, 16)
        for s in range(2):
            assert torch.equal(got[s], ref[s].next())


def test_batched_pretraining_equals_training_each_seed_alone(tmp_path):
    """Seeds in one batched model never mix: without dropout the weights are bit-identical."""
    x = torch.rand(120, 12)
    cfg = SDAE.Config(hidden_dims=(10, 8), dropout=0.0, lr=0.1, lr_step=1000, momentum=0.9, batch_size=16,
                      iters_per_layer=15, finetune_iters=20, init_std=0.1, cuda_graphs=False, tf32=False,
                      loss_scale=1.0, bias_lr_mult=1.0, momentum_burnin=0, data_order="shuffled")
    both = pretrain_stacked_batched(x, cfg, [ctx(0, tmp_path), ctx(1, tmp_path)])
    alone = [pretrain_stacked_batched(x, cfg, [ctx(s, tmp_path)])[0] for s in (0, 1)]
    for s in (0, 1):
        for key, val in both[s].items():
            torch.testing.assert_close(val, alone[s][key], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(both[0]["encoder.0.weight"], both[1]["encoder.0.weight"])  # seeds differ
    # the per-seed state is a plain MLPAutoencoder state dict, round-tripping through the batched model
    plain = MLPAutoencoder([12, 10, 8])
    plain.load_state_dict(both[1])
    batched = BatchedMLPAutoencoder.from_states([12, 10, 8], both)
    torch.testing.assert_close(batched.encode_all(x)[1], plain.encode(x))


def _ops_per_step(n_seeds: int, layer: int | None) -> list[str]:
    """The ATen operators (top level: what launches kernels on a GPU) of one eager training step of a seed
    batch: a greedy denoising layer (``layer``) or the end-to-end fine-tuning (None), solver as the recipe."""
    from torch.profiler import ProfilerActivity, profile

    from methods.engine.steps import GraphedStep, SequentialIndexStreams, lr_groups, sgd
    from methods.nn.autoencoder import denoising_layer_loss, reconstruction_loss

    cpu = torch.device("cpu")
    x = torch.rand(300, 24)
    model = BatchedMLPAutoencoder.initial([24, 16, 16, 32, 3], 0.01, list(range(n_seeds)))
    if layer is None:
        def loss_fn(idx):
            return reconstruction_loss(model, x, idx, 0.5)
        weights, biases = [*model.enc_w, *model.dec_w], [*model.enc_b, *model.dec_b]
    else:
        h_in = model.encode_all(x, upto=layer) if layer else x

        def loss_fn(idx):
            return denoising_layer_loss(model, layer, h_in, idx, 0.2, 0.5)
        weights, biases = [model.enc_w[layer], model.dec_w[layer]], [model.enc_b[layer], model.dec_b[layer]]
    step = GraphedStep(loss_fn, sgd(lr_groups(weights, biases, 2.0), 0.1, 0.9, cpu), (n_seeds, 32), cpu,
                       n_losses=n_seeds)
    stream = SequentialIndexStreams(300, 32, n_seeds, cpu)
    step.step(stream.next())  # the optimizer's state exists from here on, as in every later step
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step.step(stream.next())
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    return sorted(e.name for e in ops if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


@pytest.mark.parametrize("layer", [0, 2, None])
def test_a_seed_batch_step_runs_the_operators_of_one_seed(layer):
    """Issue 13: the batched step is one operator per layer for all seeds (bmm over the seed axis, one dropout
    draw, one optimizer update, one index slice), so S seeds launch what one seed launches: no per-seed loop."""
    one = _ops_per_step(1, layer)
    assert len(one) > 20 and "aten::bmm" in one  # the step is profiled, products included
    assert _ops_per_step(10, layer) == one


def test_stage_is_one_artifact_per_seed_and_reused_batched_or_not(tmp_path):
    data, _ = blobs(n_per=30, side=4)
    cfg = SDAE.Config(hidden_dims=(8, 4), dropout=0.2, lr=0.1, lr_step=1000, momentum=0.9, batch_size=16,
                      iters_per_layer=5, finetune_iters=5, init_std=0.1, input_scale=1 / 255, cuda_graphs=False,
                      tf32=False)
    req = {"autoencoder": StageRequest("sdae", cfg)}
    c0, c1 = ctx(0, tmp_path).bind(data, req), ctx(1, tmp_path).bind(data, req)
    first = pretrained_autoencoders([c0, c1])  # two seeds trained as one batched model
    assert [u["reused"] for u in c0.stages_used + c1.stages_used] == [False, False]
    assert [e["seeds_built_together"] for e in StageStore(tmp_path / "stages").entries()] == [2, 2]
    again = ctx(1, tmp_path).bind(data, req)
    alone = pretrained_autoencoders([again])  # a single-seed trial finds seed 1's artifact
    assert again.stages_used == [{**c1.stages_used[0], "reused": True}]
    torch.testing.assert_close(alone.enc_w[0][0], first.enc_w[0][1])
    longer = StageRequest("sdae", cfg.model_copy(update={"finetune_iters": 6}))
    other = ctx(1, tmp_path).bind(data, {"autoencoder": longer})
    pretrained_autoencoders([other])  # another stage config: not reused
    assert other.stages_used[0]["reused"] is False and other.stages_used[0]["key"] != c1.stages_used[0]["key"]


def test_dec_seed_batch_matches_seeds_alone_and_clusters_blobs(tmp_path):
    data, y = blobs()
    over = {**TINY_AE, **PLAIN_DEC, "batch_size": 32, "update_interval": 10, "max_iters": 200, "n_init": 3}
    batched = method("dec", **over).fit_seeds(data, [ctx(0, tmp_path / "a"), ctx(2, tmp_path / "a")])
    alone = [method("dec", **over).fit(data, ctx(s, tmp_path / "b")) for s in (0, 2)]
    for out_b, out_a in zip(batched, alone):
        # each seed keeps its own stopping rule and labels whether batched or not
        assert out_b.info["iterations"] == out_a.info["iterations"]
        assert out_b.info["stop_reason"] == out_a.info["stop_reason"]
        assert np.array_equal(out_b.labels_numpy(), out_a.labels_numpy())
        assert evaluate(y, out_b.labels_numpy())["acc"] > 0.9
    assert batched[0].info["seeds_trained_together"] == 2


def test_ae_kmeans_and_idec_reuse_decs_autoencoder(tmp_path):
    data, y = blobs(seed=1)
    c_dec, c_ae, c_idec = ctx(0, tmp_path), ctx(0, tmp_path), ctx(0, tmp_path)
    method("dec", **TINY_AE, **PLAIN_DEC, update_interval=10, max_iters=50, n_init=3).fit(data, c_dec)
    ae = method("ae_kmeans", **TINY_AE, n_init=3).fit(data, c_ae)
    idec = method("idec", **TINY_AE, data_order="shuffled", update_interval=10, max_iters=50, n_init=3).fit(data,
                                                                                                         c_idec)
    assert [u["reused"] for u in c_dec.stages_used] == [False]
    assert c_ae.stages_used == c_idec.stages_used == [{**c_dec.stages_used[0], "reused": True}]
    assert evaluate(y, ae.labels_numpy())["acc"] > 0.9
    assert evaluate(y, idec.labels_numpy())["acc"] > 0.9
    # IDEC's loss has the reconstruction term: its curve logs a positive loss from the first update on
    losses = [row["loss"] for row in c_idec.curve if "delta_label" in row and row["iteration"] > 0]
    assert losses and all(v > 0 for v in losses)


def test_idec_dataset_recipes_follow_the_official_readme():
    mn = resolve_config("idec", "default", "mnist", {})
    us = resolve_config("idec", "default", "usps", {})
    assert (mn.optimizer, mn.lr, mn.update_interval, mn.gamma) == ("adam", 0.001, 140, 0.1)
    assert (us.optimizer, us.lr, us.momentum, us.update_interval) == ("sgd", 0.1, 0.99, 30)
    dec = resolve_config("dec", "default", "mnist", {})
    assert (dec.update_interval, dec.lr, dec.tol, dec.n_init) == (160, 0.01, 0.001, 20)


def test_dec_target_distribution_sharpens_and_batches():
    g = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(2, 50, 4, generator=g), -1)  # two seeds
    p = target_distribution(q)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 50))
    torch.testing.assert_close(p[1], target_distribution(q[1]))  # the seed axis is independent
    w = q**2 / q.sum(1, keepdim=True)  # DEC Eq. 3: p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j')
    torch.testing.assert_close(p, w / w.sum(-1, keepdim=True))
    # squaring sharpens each row when the clusters are equally frequent (f_j divides the rest back out):
    # the 4 cyclic column shifts of any q make every column sum equal
    balanced = torch.cat([q[0].roll(k, dims=1) for k in range(4)])
    assert (target_distribution(balanced).max(-1).values >= balanced.max(-1).values - 1e-6).all()
    z, mu = torch.randn(2, 7, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    torch.testing.assert_close(student_t(z, mu)[0], student_t(z[0], mu[0]))


def test_depict_frequency_prior_balances_targets():
    q = torch.tensor([[0.6, 0.4]] * 9 + [[0.3, 0.7]])  # cluster 0 dominates
    t = frequency_normalised(q)
    torch.testing.assert_close(t.sum(1), torch.ones(10))
    # dividing by the cluster frequency lifts the rare cluster relative to plain squaring
    sq = q.pow(2) / q.pow(2).sum(1, keepdim=True)
    assert (t[:, 1] > sq[:, 1]).all()


@pytest.mark.parametrize("side", [28, 16, 8])
def test_depict_autoencoder_mirrors_official_shapes(side):
    net = DepictAutoencoder((1, side, side), 10, [50, 50], [4, 5], [2, 2], [0, 2], [0.1, 0.1, 0.0])
    x = torch.rand(3, 1, side, side) * 2 - 1
    e1, e2, z = net.encode(x, noisy=False)
    r2, r1, r0 = net.decode(z)
    assert z.shape == (3, 10) and r0.shape == x.shape and r1.shape == e1.shape and r2.shape == e2.shape
    if side == 28:
        assert e1.shape[-1] == 13 and e2.shape[-1] == 7  # official MNIST maps: 28 -> 13 -> 7


def test_depict_runs_label_free_and_stops_by_its_rule(tmp_path):
    data, y = blobs(n_per=80, side=8, seed=2)
    c = ctx(0, tmp_path)
    out = method("depict", filters=[8, 8], batch_size=20, lr=1e-3, pretrain_epochs=8, init_epochs=4,
                 epochs=10, init_n_init=3).fit(data, c)
    labels = out.labels_numpy()
    assert labels.shape == (240,) and labels.max() < 3
    assert out.info["stop_reason"] in ("stop_mse", "epochs") and 1 <= out.info["epochs"] <= 10
    assert [(u["name"], u["reused"]) for u in c.stages_used] == [("depict_cae", False)]
    stages = {row.get("stage") for row in c.curve}
    assert {"pretrain", "init_kmeans", "init_head", "joint"} <= stages
    assert evaluate(y, labels)["acc"] > 0.6  # three clean blobs; random labels would give ~0.33


def test_depict_kmeans_diagnostic_is_curve_only_and_changes_nothing(tmp_path):
    data, y = blobs(n_per=60, side=8, seed=4)
    kw = dict(filters=[6, 6], batch_size=20, lr=1e-3, pretrain_epochs=4, init_epochs=2, epochs=3, init_n_init=2)
    plain = method("depict", **kw).fit(data, ctx(0, tmp_path / "a"))
    c = ctx(0, tmp_path / "b")
    probed = method("depict", diag_kmeans_every=2, **kw).fit(data, c)
    rows = [r for r in c.curve if r.get("stage") == "pretrain_kmeans_probe"]
    assert [r["epoch"] for r in rows] == [2, 4] and all("inertia" in r for r in rows)
    assert torch.equal(plain.labels, probed.labels)  # its k-means draws from its own generator


@pytest.mark.parametrize("phase", ["init_head", "joint"])
def test_depict_cut_mid_training_and_run_again_ends_like_an_uncut_run(tmp_path, monkeypatch, phase):
    """DEPICT cut in the third epoch of its head pre-fit (in the held-out NMI, after the epoch's steps) or of its
    joint training (in the frequency normalisation): the same trial run again resumes that engine run from its
    checkpoint after epoch 2 and ends with the uncut run's labels, info and curve."""
    import sklearn.metrics

    import methods.depict as depict_mod

    monkeypatch.setenv("BENCH_CHECKPOINT_S", "0")  # a checkpoint after every epoch
    module, name = (sklearn.metrics, "normalized_mutual_info_score") if phase == "init_head" else \
        (depict_mod, "frequency_normalised")
    calls = count_and_cut(monkeypatch, module, name)
    data, _ = blobs(n_per=60, side=8, seed=5)
    kw = dict(filters=[6, 6], batch_size=20, lr=1e-3, pretrain_epochs=3, init_epochs=6, init_patience=10, epochs=5,
              init_n_init=2, stop_mse=0.0)
    def fit(root: Path) -> tuple:
        seed_everything(0)  # the dropout masks come from torch's global generator, seeded per trial by the harness
        c = ctx(0, root)
        return method("depict", **kw).fit(data, c), c

    uncut, uncut_ctx = fit(tmp_path / "uncut")
    # calls: the baseline NMI and one per pre-fit epoch; the initial targets and one per joint epoch
    assert calls["n"] == 1 + 6 if phase == "init_head" else 1 + 5
    calls.update(n=0, cut_at=4)  # the third epoch's call
    with pytest.raises(Cut):
        fit(tmp_path / "cut")
    assert list((tmp_path / "cut" / "art" / "0").glob(f"depict_{phase}-*.ckpt.pt"))
    calls.update(n=0, cut_at=None)
    again, again_ctx = fit(tmp_path / "cut")
    # resumed after epoch 2 of the cut phase: epochs 3..6 of the pre-fit (the joint run: all, from scratch), or the
    # pre-fit's last epoch from its kept checkpoint and epochs 3..5 of the joint training
    assert calls["n"] == (1 + 6 - 2 if phase == "init_head" else 5 - 2)
    assert torch.equal(again.labels, uncut.labels)
    assert again.info == uncut.info
    timing = {"elapsed_s", "epoch_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in again_ctx.curve] == \
        [{k: v for k, v in r.items() if k not in timing} for r in uncut_ctx.curve]
    again_ctx.remove_checkpoints()  # as the harness does once the trial's records are written (bench/trial.py)
    assert not list((tmp_path / "cut").rglob("*.ckpt.pt"))  # finished: nothing left to resume from


def test_depict_cut_in_joint_training_after_an_early_stopped_prefit_resumes_exactly(tmp_path, monkeypatch):
    """The head pre-fit stopped early by its patience, then a kill in joint training: the run again resumes the
    pre-fit from its kept checkpoint (saved before the stopping epoch, which is redone with the same draws and stops
    again) and ends like the uncut run."""
    import methods.depict as depict_mod

    monkeypatch.setenv("BENCH_CHECKPOINT_S", "0")
    calls = count_and_cut(monkeypatch, depict_mod, "frequency_normalised")
    data, _ = blobs(n_per=60, side=8, seed=5)
    kw = dict(filters=[6, 6], batch_size=20, lr=1e-3, pretrain_epochs=3, init_epochs=30, init_patience=1, epochs=4,
              init_n_init=2, stop_mse=0.0)

    def fit(root: Path) -> tuple:
        seed_everything(0)
        c = ctx(0, root)
        return method("depict", **kw).fit(data, c), c

    uncut, uncut_ctx = fit(tmp_path / "uncut")
    assert uncut.info["init_epochs_run"] < 30  # the patience stopped the pre-fit: what this test is about
    calls.update(n=0, cut_at=3)  # joint training's second epoch
    with pytest.raises(Cut):
        fit(tmp_path / "cut")
    calls.update(n=0, cut_at=None)
    again, again_ctx = fit(tmp_path / "cut")
    assert torch.equal(again.labels, uncut.labels)
    assert again.info == uncut.info
    timing = {"elapsed_s", "epoch_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in again_ctx.curve] == \
        [{k: v for k, v in r.items() if k not in timing} for r in uncut_ctx.curve]


def test_dec_benchmark_script_prints_figures(tmp_path, capsys):
    from bench.perf.dec_seeds import main

    rc = main(["--dataset", "digits", "--subset", "200", "--seeds", "1", "2", "--device", "cpu",
               "--set", "hidden_dims=[16,16,32,4]", "--set", "pretrain_iters_per_layer=5", "--set", "finetune_iters=5",
               "--set", "max_iters=20", "--set", "update_interval=10", "--set", "n_init=2",
               "--export-stages", str(tmp_path / "stages"), "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "seeds=  1" in out and "seeds=  2" in out and "ratio 2 seeds / 1 seed" in out
    assert len(list((tmp_path / "stages" / "sdae").glob("*/artifact.pt"))) == 2  # the 2-seed batch's stages


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_step_probe_says_it_needs_a_gpu(capsys):
    from bench.perf.ae_steps import main

    assert main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


# -- the official Caffe solver details (piiswrong/dec) -------------------------------------------------
def _caffe_sgd(w0: torch.Tensor, grads: list[torch.Tensor], lr: float, momentum: float, burnin: int,
               lr_mult: float = 1.0, reset_at: tuple[int, ...] = ()) -> torch.Tensor:
    """Caffe's SGDSolver in float64: h = lr * mult * g + m_t h; w -= h; m_t = m * t / burnin while t < burnin."""
    w, h = w0.double().clone(), torch.zeros_like(w0, dtype=torch.float64)
    for t, g in enumerate(grads):
        if t in reset_at:
            h.zero_()
        m = momentum * t / burnin if t < burnin else momentum
        h = lr * lr_mult * g.double() + m * h
        w -= h
    return w


@pytest.mark.parametrize("burnin", [0, 5, 50])
def test_graphed_step_momentum_burnin_bias_lr_and_reset_follow_caffes_solver(burnin):
    from methods.engine.steps import GraphedStep, burnin_momentum, lr_groups, reset_momentum, sgd

    g = torch.Generator().manual_seed(burnin)
    grads_w = [torch.randn(3, 4, generator=g) for _ in range(30)]
    grads_b = [torch.randn(4, generator=g) for _ in range(30)]
    w = torch.nn.Parameter(torch.randn(3, 4, generator=g))
    b = torch.nn.Parameter(torch.zeros(4))
    w0, b0 = w.detach().clone(), b.detach().clone()
    t = {"i": 0}

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:  # gradient of w is grads_w[t], of b grads_b[t]
        return (w * grads_w[t["i"]]).sum() + (b * grads_b[t["i"]]).sum()

    opt = sgd(lr_groups([w], [b], 2.0), 0.05, 0.9, torch.device("cpu"))
    step = GraphedStep(loss_fn, opt, 2, torch.device("cpu"), use_graph=False)
    for it in range(30):
        if it == 20:
            reset_momentum(opt)  # DEC: a fresh solver at a target update (MomentumResetHook)
        step.set_lr(0.05)
        step.set_momentum(burnin_momentum(0.9, it, burnin), 0.9)
        t["i"] = it
        step.step(torch.zeros(2, dtype=torch.long))
    tol = {"rtol": 1e-5, "atol": 1e-5}  # float32 steps against the float64 reference
    torch.testing.assert_close(w.detach().double(), _caffe_sgd(w0, grads_w, 0.05, 0.9, burnin, reset_at=(20,)), **tol)
    torch.testing.assert_close(b.detach().double(), _caffe_sgd(b0, grads_b, 0.05, 0.9, burnin, 2.0, reset_at=(20,)),
                               **tol)
    # after the burn-in the plain optimizer is back (momentum baked in again); during it, momentum 1 + scaling
    assert all(grp["momentum"] == (0.9 if burnin < 30 else 1.0) for grp in opt.param_groups)
    # without the reset or the bias multiplier the result differs: the test can see both
    assert not torch.allclose(b.detach().double(), _caffe_sgd(b0, grads_b, 0.05, 0.9, burnin, 2.0), **tol)
    assert not torch.allclose(b.detach().double(), _caffe_sgd(b0, grads_b, 0.05, 0.9, burnin, 1.0, reset_at=(20,)),
                              **tol)


def test_sequential_streams_walk_the_data_in_order_and_wrap():
    from methods.engine.steps import SequentialIndexStreams

    s = SequentialIndexStreams(10, 4, n_seeds=2, device=torch.device("cpu"))
    rows = [s.next() for _ in range(3)]
    assert all(r.shape == (2, 4) and torch.equal(r[0], r[1]) for r in rows)  # every seed reads the same batch
    assert [r[0].tolist() for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


def test_pretraining_loss_is_caffes_half_mse(tmp_path):
    from methods.nn.autoencoder import reconstruction_loss

    model = BatchedMLPAutoencoder.initial([6, 5, 2], 0.1, [0])
    x, idx = torch.rand(20, 6), torch.arange(8)[None]
    full = reconstruction_loss(model, x, idx)
    half = reconstruction_loss(model, x, idx, loss_scale=0.5)
    torch.testing.assert_close(half, 0.5 * full)
    torch.testing.assert_close(full[0], ((model.decode(model.encode(x[:8])) - x[:8]) ** 2).mean())


def test_per_seed_mse_and_batched_backward_give_the_textbook_values_bit_for_bit():
    """The launch-saving forms (one mse_loss kernel, back-propagating a ones vector) change no bit: the loss and
    the gradient equal those of ``(a - b).pow(2).mean()`` per seed, back-propagated through ``loss.sum()``."""
    from methods.nn.autoencoder import per_seed_mse

    g = torch.Generator().manual_seed(0)
    a0, b = torch.randn(3, 64, 50, generator=g), torch.randn(3, 64, 50, generator=g)
    a1, a2 = a0.clone().requires_grad_(), a0.clone().requires_grad_()
    ref = 0.5 * (a1 - b).pow(2).flatten(1).mean(1)
    ref.sum().backward()
    got = 0.5 * per_seed_mse(a2, b)
    got.backward(torch.ones(3))
    assert torch.equal(got, ref) and torch.equal(a2.grad, a1.grad)
    assert a2.grad.abs().sum() > 0 and not torch.equal(got[0], got[1])  # real gradients, per seed


def test_caffe_recipe_defaults_are_the_official_values():
    dec = resolve_config("dec", "default", "mnist", {})
    assert (dec.pretrain_loss_scale, dec.pretrain_bias_lr_mult, dec.pretrain_momentum_burnin) == (0.5, 2.0, 1000)
    assert dec.pretrain_data_order == "sequential" and dec.data_order == "sequential"
    assert dec.bias_lr_mult == 2.0 and dec.momentum_reset_at_update
    idec = resolve_config("idec", "default", "mnist", {})  # Keras: one lr, optimizer state kept
    assert idec.bias_lr_mult == 1.0 and not idec.momentum_reset_at_update

"""The SCAN speed work (issue 15) keeps SCAN's arithmetic: all heads' loss at once equals the official per-head
loop, the sync-free self-labelling CE equals the official masked, class-weighted CE, and neither training step
reads a value back from the device (the GPU check is bench/perf/scan_epoch.py's set_sync_debug_mode run)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methods import losses as L


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_loss_of_all_heads_equals_the_per_head_loop(seed):
    g = torch.Generator().manual_seed(seed)
    a = (3 * torch.randn(32, 10, 7, generator=g, dtype=torch.float64)).requires_grad_()
    b = (3 * torch.randn(32, 10, 7, generator=g, dtype=torch.float64)).requires_grad_()
    t, c, e = L.scan_loss(a, b, entropy_weight=5.0)
    assert t.shape == c.shape == e.shape == (10,)
    t.sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    loop = [L.scan_loss(a[:, h], b[:, h], entropy_weight=5.0) for h in range(10)]  # the official loop
    for h, (th, ch, eh) in enumerate(loop):
        assert t[h].item() == pytest.approx(th.item(), rel=1e-12)
        assert c[h].item() == pytest.approx(ch.item(), rel=1e-12)
        assert e[h].item() == pytest.approx(eh.item(), rel=1e-12)
    sum(th for th, _, _ in loop).backward()
    assert torch.allclose(ga, a.grad, rtol=1e-10, atol=1e-14) and torch.allclose(gb, b.grad, rtol=1e-10, atol=1e-14)


def _official_confidence_ce(weak_logits, strong_logits, threshold, balancing):
    """SCAN's ConfidenceBasedCE: boolean mask, F.cross_entropy(weight=n / n_c) on the masked rows."""
    prob = F.softmax(weak_logits, 1)
    max_prob, target = prob.max(1)
    mask = max_prob > threshold
    target = torch.masked_select(target, mask)
    n = target.numel()
    weight = None
    if balancing:
        idx, counts = torch.unique(target, return_counts=True)
        weight = torch.ones(weak_logits.shape[1], dtype=strong_logits.dtype)
        weight[idx] = n / counts.to(strong_logits.dtype)
    return F.cross_entropy(strong_logits[mask], target, weight=weight), n


@pytest.mark.parametrize("seed,threshold,balancing", [(0, 0.9, True), (1, 0.99, True), (2, 0.5, False),
                                                      (3, 0.95, True)])
def test_sync_free_confidence_ce_equals_the_official_masked_ce(seed, threshold, balancing):
    g = torch.Generator().manual_seed(seed)
    weak = 6 * torch.randn(200, 5, generator=g, dtype=torch.float64)
    strong = torch.randn(200, 5, generator=g, dtype=torch.float64).requires_grad_()
    loss, n = L.confidence_ce(weak, strong, threshold, balancing)
    loss.backward()
    grad = strong.grad.clone()
    strong.grad = None
    want, n_want = _official_confidence_ce(weak, strong, threshold, balancing)
    want.backward()
    assert 0 < n_want < 200 and int(n) == n_want
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.allclose(grad, strong.grad, rtol=1e-10, atol=1e-14)


def test_scan_and_selflabel_steps_never_read_the_device(monkeypatch):
    """On a GPU a host read (.item(), bool(), a Python list turned into a device tensor) waits for every queued
    kernel; the steps must not make one. On this CPU run every such read raises."""
    from methods.augment.strong import ScanAugment, ScanAugmentSpec
    from methods.nn.backbones import tiny_cnn
    from methods.nn.heads import MultiHeadClassifier
    from methods.scan import SCAN, scan_step, selflabel_step

    cfg = SCAN.Config(num_heads=3, precision="fp32", confidence_threshold=0.2)
    torch.manual_seed(0)
    backbone = tiny_cnn(3)
    net = MultiHeadClassifier(backbone, cfg.num_heads, 4)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)  # Adam's CPU step counter reads .item() on the host
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=g)
    nbrs = torch.randint(0, 24, (24, 4), generator=g)
    strong = ScanAugment(ScanAugmentSpec(16, n_ops=4, cutout=8, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)))

    def view(xb):
        return strong(xb, generator=g)

    def prep(xb):
        return xb.float() / 255.0

    def forbidden(*a, **k):
        raise AssertionError("a training step read a value back from the device")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "unique"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "tensor", forbidden)
    monkeypatch.setattr(torch, "masked_select", forbidden)

    def engine_step(out):  # what the engine does with a step's outputs
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return out

    out = engine_step(scan_step(net, x, nbrs, torch.arange(8), view, g, cfg))
    assert set(out) == {"loss", "loss_consistency", "loss_entropy"}
    net.keep_head(0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    out2 = engine_step(selflabel_step(net, x[:12], prep, view, cfg))
    assert set(out2) == {"loss", "confident"}
    monkeypatch.undo()
    assert all(torch.isfinite(v) for v in out.values()) and 0 <= out2["confident"].item() <= 12


@pytest.mark.parametrize("on_probabilities", [True, False])
def test_spice_self_stacked_heads_equal_the_per_head_loop(on_probabilities):
    """SPICE-Self trains its heads stacked (one batched product per layer, one loss call): the logits, the loss and
    every head's gradients equal the official per-head loop's (list of heads, losses summed / num_heads), each head
    on its own rows. Equal to float rounding: a batched product sums in another order than one matrix product."""
    from methods.losses import spice_self_loss
    from methods.nn.heads import StackedMLPHeads, mlp_head

    torch.manual_seed(0)
    n_heads, b, d, hidden, k = 5, 12, 16, 24, 4
    heads = [mlp_head(d, hidden, k) for _ in range(n_heads)]
    stacked = StackedMLPHeads.from_heads(heads)
    x = torch.randn(n_heads, b, d)
    t = torch.randint(k, (n_heads, b))

    def ce(logits, target):
        return F.cross_entropy(F.softmax(logits, 1) if on_probabilities else logits, target)

    loop = sum(ce(h(x[i]), t[i]) for i, h in enumerate(heads)) / n_heads
    logits = stacked(x)
    for i, h in enumerate(heads):
        torch.testing.assert_close(logits[i], h(x[i]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(stacked(x[0])[i], h(x[0]), rtol=1e-6, atol=1e-6)  # shared rows
    batched = spice_self_loss(logits, t, on_probabilities)
    torch.testing.assert_close(batched, loop, rtol=1e-6, atol=1e-7)
    loop.backward()
    batched.backward()
    for i, h in enumerate(heads):
        for stacked_grad, p in zip((stacked.w1.grad, stacked.b1.grad, stacked.w2.grad, stacked.b2.grad),
                                   (h[0].weight, h[0].bias, h[2].weight, h[2].bias)):
            assert p.grad.abs().sum() > 0  # a real gradient, not two zeros compared
            torch.testing.assert_close(stacked_grad[i], p.grad, rtol=1e-5, atol=1e-8)
    # a head taken out is the same function
    one = stacked.head(2)
    torch.testing.assert_close(one(x[2]), heads[2](x[2]), rtol=1e-6, atol=1e-6)

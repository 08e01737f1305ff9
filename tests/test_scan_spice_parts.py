"""SCAN's and SPICE's losses, pseudo-labels and neighbour mining against hand-computed values (CPU, tiny tensors)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods import losses as L
from methods.cluster.neighbours import mine_neighbours


def _logits(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_scan_loss_by_hand():
    a = _logits([[0.5, 0.5], [0.9, 0.1]])
    b = _logits([[0.5, 0.5], [0.1, 0.9]])
    total, cons, ent = L.scan_loss(a, b, entropy_weight=5.0)
    want_cons = -(math.log(0.5) + math.log(0.18)) / 2  # <p, p'> = 0.5 and 0.09 + 0.09
    want_ent = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))  # mean anchor prediction (0.7, 0.3)
    assert cons.item() == pytest.approx(want_cons, rel=1e-9)
    assert ent.item() == pytest.approx(want_ent, rel=1e-9)
    assert total.item() == pytest.approx(want_cons - 5.0 * want_ent, rel=1e-9)
    # the entropy term is the anchors' only: uniform anchors give log 2 whatever the neighbours
    assert L.scan_loss(_logits([[0.5, 0.5], [0.5, 0.5]]), a)[2].item() == pytest.approx(math.log(2), rel=1e-9)


def test_scan_loss_gradient_pulls_neighbours_together():
    a = torch.tensor([[2.0, -1.0]], requires_grad=True)
    b = torch.tensor([[-1.0, 2.0]])
    _, cons, _ = L.scan_loss(a, b)
    cons.backward()
    assert a.grad[0, 1] < 0 < a.grad[0, 0]  # descending moves the anchor towards the neighbour's class


def test_scan_selection_loss_matches_official_formula():
    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(3, 12, 4, generator=g), dim=2)
    nbrs = torch.randint(0, 12, (12, 5), generator=g)
    got = L.scan_selection_loss(probs, nbrs)
    for h in range(3):  # utils/evaluate_utils.py scan_evaluate, written out
        p = probs[h]
        sim = (p @ p.t())[torch.arange(12).repeat_interleave(5), nbrs.reshape(-1)]
        cons = -sim.log().mean()
        q = p.mean(0)
        want = cons - (-(q * q.log()).sum())
        assert got[h].item() == pytest.approx(want.item(), rel=1e-5)
    # a head that puts every image in its own confident cluster beats a uniform one
    confident = F.one_hot(torch.arange(12) % 4, 4).double() * 0.97 + 0.01
    nb_same = torch.stack([torch.arange(12)] + [(torch.arange(12) + 4 * j) % 12 for j in (1, 2)], 1)
    uniform = torch.full((12, 4), 0.25, dtype=torch.float64)
    s = L.scan_selection_loss(torch.stack([uniform, confident]), nb_same)
    assert s.argmin().item() == 1


def test_confidence_ce_by_hand():
    weak = _logits([[0.995, 0.005], [0.5, 0.5], [0.001, 0.999], [0.996, 0.004]])
    strong = torch.tensor([[0.3, -0.2], [1.0, 2.0], [0.1, 0.4], [-0.5, 0.5]], dtype=torch.float64)
    loss, n = L.confidence_ce(weak, strong, threshold=0.99, class_balancing=True)
    assert n == 3
    ce = [-F.log_softmax(strong[i], 0)[t].item() for i, t in ((0, 0), (2, 1), (3, 0))]
    w0, w1 = 3 / 2, 3 / 1  # n / n_c for the confident samples (two of class 0, one of class 1)
    assert loss.item() == pytest.approx((w0 * ce[0] + w1 * ce[1] + w0 * ce[2]) / (w0 + w1 + w0), rel=1e-9)
    plain, _ = L.confidence_ce(weak, strong, threshold=0.99, class_balancing=False)
    assert plain.item() == pytest.approx(sum(ce) / 3, rel=1e-9)
    # the threshold is strict and nothing confident gives a zero loss with a graph
    s = strong.clone().requires_grad_()
    zero, n0 = L.confidence_ce(weak, s, threshold=0.9995)
    assert n0 == 0 and zero.item() == 0.0
    zero.backward()
    assert s.grad.abs().sum() == 0


def test_spice_prototype_labels_by_hand():
    ang = torch.tensor([0.0, 0.1, 0.2, 3.0, 3.1, 3.2])
    feats = torch.stack([ang.cos(), ang.sin()], 1)
    # head scores: sample 1 is cluster 0's most confident, sample 4 cluster 1's
    scores = torch.tensor([[.6, .4], [.9, .1], [.7, .3], [.2, .8], [.1, .9], [.45, .55]])
    idx, lab = L.spice_prototype_labels(feats, scores, center_ratio=0.5)
    # m = 3 per cluster, k = int(0.5 * 3) = 1 prototype member: mu_0 = f_1, mu_1 = f_4; 3 nearest each
    assert lab.tolist() == [0, 0, 0, 1, 1, 1]
    assert sorted(idx[:3].tolist()) == [0, 1, 2] and sorted(idx[3:].tolist()) == [3, 4, 5]
    # two prototype members (k = int(0.7 * 3) = 2): mu_0 = mean(f_1, f_2) at angle 0.15, mu_1 = mean(f_4, f_3)
    idx2, _ = L.spice_prototype_labels(feats, scores, center_ratio=0.7)
    assert idx2[0].item() == 1 or idx2[0].item() == 2  # nearest to angle 0.15
    assert sorted(idx2[:3].tolist()) == [0, 1, 2] and sorted(idx2[3:].tolist()) == [3, 4, 5]
    # a sample can be chosen by two clusters (the official select_samples, not _v2)
    skew = torch.tensor([[.9, .1]] * 5 + [[.1, .9]])
    idx3, _ = L.spice_prototype_labels(feats, skew, center_ratio=0.5)
    assert idx3.numel() == 6


def test_spice_reliable_labels_by_hand():
    # 8 samples, 4 neighbours each (self first); predicted labels 0,0,0,0,1,1,1,1
    pred = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    scores = F.one_hot(pred, 2).float() * 0.995 + 0.0025
    scores[3] = torch.tensor([0.6, 0.4])  # not confident
    nbrs = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 4], [2, 0, 1, 3], [3, 0, 1, 2],
                         [4, 5, 6, 7], [5, 4, 6, 7], [6, 4, 5, 0], [7, 4, 5, 6]])
    # agree >= 0.75 * 4 = 3 of the neighbours' labels equal to the first's: every row (rows 1 and 6 have 3)
    idx, lab = L.spice_reliable_labels(nbrs, scores, agree_ratio=0.75, threshold=0.99,
                                       generator=torch.Generator().manual_seed(0))
    # reliable: cluster 0 -> {0, 1, 2} (3 not confident); cluster 1 -> {4, 5, 6, 7}; balanced to 3 each
    assert lab.tolist() == [0, 0, 0, 1, 1, 1]
    assert sorted(idx[:3].tolist()) == [0, 1, 2]
    assert set(idx[3:].tolist()) <= {4, 5, 6, 7} and len(set(idx[3:].tolist())) == 3
    strict, _ = L.spice_reliable_labels(nbrs, scores, agree_ratio=1.0, threshold=0.99)
    # all 4 agreeing: rows 0, 2 (cluster 0; row 3 is not confident) and 4, 5, 7 -> balanced to 2 per cluster
    assert strict.numel() == 4 and set(strict[:2].tolist()) == {0, 2} and set(strict[2:].tolist()) <= {4, 5, 7}


def test_fixmatch_loss_by_hand():
    lab_logits = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    weak = _logits([[0.97, 0.03], [0.6, 0.4]])
    strong = torch.tensor([[0.0, 1.0], [3.0, -3.0]], dtype=torch.float64)
    total, sup, unsup = L.fixmatch_loss(lab_logits, torch.tensor([1]), weak, strong, threshold=0.95)
    assert sup.item() == pytest.approx(-F.log_softmax(lab_logits[0], 0)[1].item())
    # only the first unlabelled sample is confident (0.97 >= 0.95); the mean is over both
    assert unsup.item() == pytest.approx(-F.log_softmax(strong[0], 0)[0].item() / 2)
    assert total.item() == pytest.approx(sup.item() + unsup.item())


@pytest.mark.parametrize("include_self", [True, False])
def test_mine_neighbours_is_exact_and_chunk_free(include_self):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 8, generator=g)
    idx, sim = mine_neighbours(x, 5, include_self=include_self)
    idx3, sim3 = mine_neighbours(x, 5, include_self=include_self, chunk=3)
    assert torch.equal(idx, idx3) and torch.allclose(sim, sim3)
    xn = F.normalize(x, dim=1)
    full = xn @ xn.t()
    if not include_self:
        full.fill_diagonal_(-2.0)
    want = full.topk(6 if include_self else 5, dim=1)
    assert torch.equal(idx, want.indices) and torch.allclose(sim, want.values, atol=1e-6)
    if include_self:
        assert torch.equal(idx[:, 0], torch.arange(50))  # SCAN: the sample itself first
    else:
        assert not (idx == torch.arange(50)[:, None]).any()
    with pytest.raises(ValueError):
        mine_neighbours(x, 50)

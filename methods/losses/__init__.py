"""Losses of the contrastive clustering family, as pure functions (no state, no module).

Each docstring gives the paper's equation and the official code it follows. Inputs are float
tensors; compute the losses in float32 (call them outside ``autocast`` or on ``.float()`` inputs).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def _entropy_term(p: Tensor) -> Tensor:
    """``log K + sum_k q_k log q_k`` with ``q`` the column sums of ``p`` normalised: log K - H(q) >= 0."""
    q = p.sum(0)
    q = q / q.sum()
    return math.log(q.numel()) + (q * torch.log(q.clamp_min(1e-30))).sum()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, anchors: Literal["both", "first"] = "both") -> Tensor:
    """Instance-level NT-Xent (SimCLR Eq. 1; CC Eq. 2-3, ``InstanceLoss`` in CC's ``modules/contrastive_loss.py``).

    With z = normalise([z1; z2]) (2N rows) and s_ij = z_i . z_j / tau,
    l_i = -log( exp(s_{i,i+-N}) / sum_{k != i} exp(s_ik) ): one positive and 2N-2 negatives per row.
    ``anchors="both"`` (SimCLR's paper, CC's code): the mean of l_i over all 2N rows, symmetric in the views.
    ``anchors="first"`` (SCAN's ``SimCLRLoss``, ``anchor = features[:, 0]``): the mean over the N rows of
    ``z1`` only, each still contrasted with all 2N - 1 others; swapping the views changes it.
    ``z1``, ``z2``: [N, D], not necessarily normalised.
    """
    if anchors not in ("both", "first"):
        raise ValueError(f"anchors must be 'both' or 'first', got {anchors!r}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    rows = z if anchors == "both" else z[:n]
    sim = rows @ z.t() / temperature
    m = rows.shape[0]
    self_pair = torch.arange(m, device=z.device)
    # new_full fills on the device: a CPU scalar tensor here would be a host copy, which breaks CUDA-graph capture
    sim = sim.index_put((self_pair, self_pair), sim.new_full((), float("-inf")))
    target = (self_pair + n) % (2 * n)  # row i's positive is its other view
    return F.cross_entropy(sim, target)


def cluster_contrastive(p1: Tensor, p2: Tensor, temperature: float = 1.0) -> Tensor:
    """CC's cluster-level contrastive loss plus its entropy term (CC Eq. 4-6; ``ClusterLoss`` in the official code).

    ``p1``, ``p2``: [N, K] soft assignments (rows are softmax probabilities) of the two views. The K
    columns y_k (as N-vectors) of both views form 2K items; with s = cos(y_a, y_b) / tau,
    l_k = -log( exp(s(y1_k, y2_k)) / sum_{b != a} exp(s(y_a, y_b)) ) averaged over the 2K items (Eq. 5),
    plus, for each view, log K + sum_k q_k log q_k with q_k = sum_i p_ik / sum p (i.e. log K - H(Y), Eq. 6
    with the official code's constant log K). Returns the total (contrastive + both entropy terms).
    """
    k = p1.shape[1]
    entropy = _entropy_term(p1) + _entropy_term(p2)
    c = F.normalize(torch.cat([p1.t(), p2.t()]), dim=1)  # cosine similarity = dot of unit columns
    sim = c @ c.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * k, dtype=torch.bool, device=c.device), float("-inf"))
    target = (torch.arange(2 * k, device=c.device) + k) % (2 * k)
    return F.cross_entropy(sim, target) + entropy


def pica_pui(p1: Tensor, p2: Tensor, entropy_weight: float = 2.0) -> Tensor:
    """PICA's partition uncertainty index loss (PICA Eq. 3-6; ``PUILoss`` in the official ``pica/losses.py``).

    ``p1``, ``p2``: [N, K] soft assignments of the original and the perturbed images. With column-normalised
    q1_k = p1[:, k] / ||p1[:, k]||, q2_k likewise, the PUI matrix M = Q1^T Q2 (K x K, cosine similarities);
    the loss is the cross-entropy of each row of M against its diagonal, mean over K rows, plus
    ``entropy_weight`` x (log K + sum_k q_k log q_k), q = column sums of ``p1`` normalised (the official
    code regularises the first input only).
    """
    pui = F.normalize(p1.t(), dim=1) @ F.normalize(p2, dim=0)
    target = torch.arange(pui.shape[0], device=pui.device)
    return F.cross_entropy(pui, target) + entropy_weight * _entropy_term(p1)


def instance_discrimination(features: Tensor, memory: Tensor, indices: Tensor, temperature: float = 1.0) -> Tensor:
    """IDFD's instance discrimination loss with a non-parametric memory bank (IDFD Eq. 1-2, after Wu et al. 2018).

    P(i | v) = exp(v_i^T v / tau) / sum_{j=1}^{n} exp(v_j^T v / tau) over all n memory entries v_j;
    L_ID = -mean_i log P(idx_i | f_i), with f = features L2-normalised here. The memory is a constant
    (no gradient); refresh it with :func:`update_memory` after the step.
    """
    f = F.normalize(features, dim=1)
    logits = f @ memory.detach().t() / temperature
    return F.cross_entropy(logits, indices)


@torch.no_grad()
def update_memory(memory: Tensor, features: Tensor, indices: Tensor, momentum: float = 0.5) -> None:
    """In place: v_idx <- normalise(momentum * v_idx + (1 - momentum) * normalise(f)) (IDFD official code)."""
    f = F.normalize(features.detach().to(memory.dtype), dim=1)
    new = F.normalize(memory.index_select(0, indices) * momentum + f * (1.0 - momentum), dim=1)
    memory.index_copy_(0, indices, new)


def feature_decorrelation(features: Tensor, temperature: float = 2.0) -> Tensor:
    """IDFD's softmax feature decorrelation loss (IDFD Eq. 4-5; ``Loss`` in the official ``main.py``).

    With V = [f^1 ... f^d] the d feature columns (each an N-vector over the batch) L2-normalised,
    Q(l | f) = exp(f^l^T f / tau2) / sum_m exp(f^m^T f / tau2), L_FD = -mean_l log Q(l | f^l).
    IDFD applies it to the L2-normalised (row-wise) features; the column normalisation is done here.
    """
    v = F.normalize(features, dim=0)
    logits = v.t() @ v / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def feature_orthogonality(features: Tensor) -> Tensor:
    """IDFO's orthogonality constraint (IDFD Eq. 3): L_FO = ||V^T V - I||_F^2 over column-normalised features.

    V: the d feature columns of the batch, each L2-normalised; the loss is the squared Frobenius norm
    of the off-diagonal correlations (the diagonal is exactly 1 after normalisation).
    """
    v = F.normalize(features, dim=0)
    gram = v.t() @ v
    return (gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)).square().sum()


# -- SCAN (Van Gansbeke et al., ECCV 2020; wvangansbeke/Unsupervised-Classification losses/losses.py) -----------

_SCAN_EPS = 1e-8  # losses.py: EPS = 1e-8, the clamp of the entropy's probabilities


def _mean_entropy(p: Tensor) -> Tensor:
    """H(mean_i p_i) = -sum_k q_k log q_k with q = the batch mean of the rows, clamped at 1e-8 (``entropy``);
    ``p`` [N, K] -> scalar, or [N, H, K] -> [H] (one per head)."""
    q = p.mean(0).clamp_min(_SCAN_EPS)
    return -(q * q.log()).sum(-1)


def scan_loss(anchor_logits: Tensor, neighbour_logits: Tensor,
              entropy_weight: float = 5.0) -> tuple[Tensor, Tensor, Tensor]:
    """SCAN's clustering loss (SCAN Eq. 2; ``SCANLoss``): returns (total, consistency, entropy).

    With p = softmax(anchor logits), p' = softmax(neighbour logits), both [N, K]:
    consistency = -mean_i log <p_i, p'_i> (``nn.BCELoss`` of the dot product against 1, whose log is
    clamped at -100 as torch's BCE does), entropy = H(mean_i p_i) over the anchors only, and
    total = consistency - ``entropy_weight`` x entropy (SCAN's configs: 5.0 for CIFAR/STL).
    Logits [N, H, K] of H heads give the three per head, each [H]: the official loop over the heads in one
    set of kernels (the same per-head arithmetic; the caller sums the heads' totals as the official does).
    """
    p, q = F.softmax(anchor_logits, dim=-1), F.softmax(neighbour_logits, dim=-1)
    similarity = (p * q).sum(-1)
    consistency = F.binary_cross_entropy(similarity, torch.ones_like(similarity), reduction="none").mean(0)
    entropy = _mean_entropy(p)
    return consistency - entropy_weight * entropy, consistency, entropy


@torch.no_grad()
def scan_selection_loss(probs: Tensor, neighbours: Tensor, entropy_weight: float = 1.0) -> Tensor:
    """The label-free score SCAN picks its head with (``scan_evaluate`` in utils/evaluate_utils.py).

    ``probs`` [H, N, K] (softmax outputs of H heads on the un-augmented images), ``neighbours`` [N, k]
    (indices, the image itself included as mined). Per head: BCE of <p_i, p_j> against 1 over every
    (anchor i, neighbour j) pair, minus ``entropy_weight`` x H(mean_i p_i); the official evaluation
    uses weight 1 here (not the training weight 5). Returns [H]; the lowest is chosen.
    """
    if probs.ndim == 2:
        probs = probs[None]
    out = []
    anchors = torch.arange(neighbours.shape[0], device=neighbours.device)[:, None].expand_as(neighbours).reshape(-1)
    flat = neighbours.reshape(-1)
    for p in probs:
        sim = (p[anchors] * p[flat]).sum(1).clamp(0.0, 1.0)
        consistency = F.binary_cross_entropy(sim, torch.ones_like(sim))
        out.append(consistency - entropy_weight * _mean_entropy(p))
    return torch.stack(out)


def confidence_ce(weak_logits: Tensor, strong_logits: Tensor, threshold: float = 0.99,
                  class_balancing: bool = True) -> tuple[Tensor, Tensor]:
    """SCAN's self-labelling loss (``ConfidenceBasedCE``): returns (loss, number of confident samples), both
    0-d tensors on the logits' device (no host sync: nothing here waits for the GPU).

    Targets = argmax softmax(weak logits) where the max probability exceeds ``threshold`` (strictly, as
    the official ``max_prob > threshold``); loss = cross-entropy of the strong view's logits on those
    samples. With ``class_balancing`` each present class c gets weight n / n_c (n confident samples,
    n_c of class c; absent classes weight 1) and the weighted mean divides by the sum of the targets'
    weights, exactly as ``F.cross_entropy(weight=...)`` on the masked rows in the official code (here the
    unconfident rows get weight 0 instead of being cut out, so the shapes stay fixed).
    Deviation: the official code raises ``ValueError`` when no sample is confident; this returns a zero
    loss (with a graph, so the step is a no-op for the weights) and 0, which the caller logs.
    """
    weak = F.softmax(weak_logits.detach(), dim=1)
    max_prob, target = weak.max(1)
    mask = (max_prob > threshold).to(strong_logits.dtype)
    n = mask.sum()
    if class_balancing:
        counts = torch.zeros(weak.shape[1], dtype=mask.dtype, device=mask.device).index_add_(0, target, mask)
        class_w = torch.where(counts > 0, n / counts.clamp_min(1), torch.ones_like(counts))
        w = mask * class_w[target]
    else:
        w = mask
    ce = F.cross_entropy(strong_logits, target, reduction="none")
    return (w * ce).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny), n.detach()


# -- SPICE (Niu, Shan & Wang, IEEE TIP 2022; niuchuangnn/SPICE spice/model/heads/sem_head*.py) -------------------

@torch.no_grad()
def spice_prototype_labels(features: Tensor, scores: Tensor, center_ratio: float = 0.5,
                           select_ratio: float = 1.0) -> tuple[Tensor, Tensor]:
    """SPICE-Self's prototype pseudo-labelling (``SemHead.select_samples``): returns (indices, labels).

    ``features`` [N, D] (the frozen, L2-normalised embedding), ``scores`` [N, K] (the head's
    probabilities). With m = N // K: for each cluster c the k = int(center_ratio x m x select_ratio)
    samples of highest score c form the prototype mu_c = their mean feature; then the
    int(m x select_ratio) samples most similar to mu_c (dot product) are labelled c. A sample can be
    picked by several clusters (the official ``select_samples``, not ``_v2``); the result has
    K x int(m x select_ratio) rows, cluster by cluster.
    """
    n, k_clusters = scores.shape
    per_cluster = n // k_clusters
    k_top = int(center_ratio * per_cluster * select_ratio)
    if k_top < 1:
        raise ValueError(f"{n} samples give no prototype members for {k_clusters} clusters "
                         f"(center_ratio {center_ratio})")
    top = scores.topk(k_top, dim=0).indices  # [k_top, K]
    centers = features[top].mean(0)  # [K, D]
    n_select = int(per_cluster * select_ratio)
    idx = (centers @ features.t()).topk(n_select, dim=1).indices  # [K, n_select]
    labels = torch.arange(k_clusters, device=scores.device)[:, None].expand(-1, n_select)
    return idx.reshape(-1), labels.reshape(-1)


def spice_self_loss(logits: Tensor, targets: Tensor, on_probabilities: bool) -> Tensor:
    """SPICE-Self's loss of all heads at once: logits [H, B, K], targets [H, B] (each head its own pseudo-labelled
    rows) -> the mean over the heads of each head's mean CE (official: the heads' losses summed, / num_heads).
    With ``on_probabilities`` the CE takes the softmax outputs (the official's double softmax)."""
    n_heads, b, k = logits.shape
    inp = F.softmax(logits, 2) if on_probabilities else logits
    per_row = F.cross_entropy(inp.reshape(n_heads * b, k), targets.reshape(-1), reduction="none")
    return per_row.view(n_heads, b).mean(1).sum() / n_heads


@torch.no_grad()
def spice_reliable_labels(neighbours: Tensor, scores: Tensor, agree_ratio: float = 0.9, threshold: float = 0.99,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """SPICE's reliable pseudo-labels by local consistency (``SemHeadMulti.local_consistency``).

    ``neighbours`` [N, M]: each sample's M nearest neighbours in the embedding, the sample itself first
    (SPICE: ``sim_mtx.topk(k=100)``, M = 100); ``scores`` [N, K]: SPICE-Self's probabilities. A sample is
    reliable when at least ``agree_ratio`` x M of its neighbours share the predicted label of its first
    neighbour (itself) and its top probability exceeds ``threshold``. Every cluster is then cut at random
    to the smallest cluster's count (class balance, as the official). Returns (indices, labels).
    """
    pred = scores.argmax(1)
    nb_labels = pred[neighbours]
    agree = (nb_labels == nb_labels[:, :1]).sum(1)
    ok = (agree >= neighbours.shape[1] * agree_ratio) & (scores.max(1).values > threshold)
    sel = torch.nonzero(ok).squeeze(1)
    lab = pred[sel]
    k_clusters = scores.shape[1]
    counts = torch.bincount(lab, minlength=k_clusters)
    keep = int(counts.min())
    out_idx, out_lab = [], []
    for c in range(k_clusters):
        members = sel[lab == c]
        perm = torch.randperm(members.numel(), generator=generator, device=generator.device if generator else "cpu")
        out_idx.append(members[perm.to(members.device)[:keep]])
        out_lab.append(torch.full((keep,), c, dtype=torch.long, device=scores.device))
    return torch.cat(out_idx), torch.cat(out_lab)


def fixmatch_loss(labelled_logits: Tensor, labels: Tensor, weak_logits: Tensor, strong_logits: Tensor,
                  threshold: float = 0.95, unlabelled_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """FixMatch's loss as SPICE-Semi trains it (``fixmatch/models/fixmatch/fixmatch.py``, hard labels):
    returns (total, supervised, unsupervised).

    supervised = CE(labelled logits, labels); unsupervised = mean over the unlabelled batch of
    mask_i x CE(strong_i, argmax softmax(weak_i)), mask_i = max softmax(weak_i) >= ``threshold``
    (p_cutoff 0.95); total = supervised + ``unlabelled_weight`` x unsupervised (lambda_u = 1).
    """
    sup = F.cross_entropy(labelled_logits, labels)
    probs = F.softmax(weak_logits.detach(), dim=1)
    max_prob, pseudo = probs.max(1)
    mask = (max_prob >= threshold).to(strong_logits.dtype)
    unsup = (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
    return sup + unlabelled_weight * unsup, sup, unsup


def info_nce_queue(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE against a queue of negatives (PCL Eq. 1; ``MoCo.forward`` in PCL's ``pcl/builder.py``).

    ``q``, ``k``: [N, D] L2-normalised query and key (momentum-encoder) features of two views of the same
    images; ``queue``: [D, r] earlier keys (constants). Logits [q.k, q.queue] / tau, the positive in column
    0: L = -mean_i log( exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_j exp(q_i.queue_j / tau)) ).
    """
    l_pos = (q * k.detach()).sum(1, keepdim=True)
    l_neg = q @ queue.detach()
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def proto_nce(q: Tensor, prototypes: Tensor, phi: Tensor, pos_ids: Tensor, neg_ids: Tensor) -> Tensor:
    """One granularity's ProtoNCE term (PCL Eq. 6, as the official ``MoCo.forward`` computes it).

    ``q``: [N, D] L2-normalised queries; ``prototypes``: [K, D] L2-normalised centroids; ``phi``: [K]
    concentrations (:func:`concentration`); ``pos_ids``: [N] each image's cluster; ``neg_ids``: [M] sampled
    negative clusters (official: r of the clusters no image of the batch is in). Logits are
    q_i . c_j / phi_j over the N positives' columns followed by the M negatives', and row i's target is
    column i. As in the official code, row i's column list holds the positive prototype of *every* image
    of the batch, so another image's prototype competes (and, when it equals row i's own, it ties with
    the target: with few clusters the loss is bounded below by log of how often the cluster occurs in the
    batch). The caller averages over granularities and adds it to :func:`info_nce_queue`.
    """
    ids = torch.cat([pos_ids, neg_ids])
    logits = q @ prototypes[ids].t() / phi[ids]
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def concentration(dist: Tensor, assign: Tensor, k: int, temperature: float, alpha: float = 10.0,
                  clamp_percentiles: tuple[float, float] = (10.0, 90.0)) -> Tensor:
    """PCL's concentration estimate phi per prototype (PCL Eq. 12; ``run_kmeans`` in the official ``main_pcl.py``).

    ``dist``: [N] Euclidean distance of each point to its assigned centroid (faiss returns squared distances;
    the official code takes their square root); ``assign``: [N] cluster ids in 0..k-1. For a cluster with
    Z > 1 points, phi = mean(dist) / log(Z + alpha); a cluster with Z <= 1 gets the largest phi. Then phi is
    clipped to its 10th/90th percentiles (numpy's linear interpolation, as torch.quantile) and scaled so that
    its mean is the temperature: phi <- temperature * phi / mean(phi). Returns [k] float32.
    """
    dist, assign = dist.double(), assign.long()
    z = torch.bincount(assign, minlength=k).double()
    sums = torch.zeros(k, dtype=torch.float64, device=dist.device).index_add_(0, assign, dist)
    phi = torch.where(z > 1, sums / z.clamp_min(1) / torch.log(z + alpha), torch.zeros_like(z))
    phi = torch.where(z > 1, phi, phi.max())
    lo, hi = (torch.quantile(phi, p / 100.0) for p in clamp_percentiles)
    phi = phi.clamp(lo, hi)
    return (temperature * phi / phi.mean()).float()


def isl_loss(features: Tensor, memory: Tensor, indices: Tensor, neighbours: Tensor, hard_pos: Tensor,
             temperature: float = 0.1, hp_weight: float = 0.5) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """ISL's backbone loss (ISL Sec. 3; ``LinearCriterion`` in the official ``lib/LinearAverage.py``).

    p_ij = softmax_j(f_i . v_j / tau) over all n memory entries v (constants). With A(i) the image itself
    and its mined neighbours (``neighbours``: [B, n] bool), each row contributes -log sum_{j in A(i)} p_ij
    (L_inst when A(i) = {i}, L_aff otherwise) and, when it has neighbours, ``hp_weight`` x KL(p_i || q_i)
    with q_i = softmax_j(v_hp . v_j / tau), hp = ``hard_pos[i]`` (the neighbour closest to i, -1 for none).
    Each part is summed over the batch and divided by the batch size, as the official code does.
    Returns (total, (L_inst, L_aff, L_hp) detached).
    """
    b = features.shape[0]
    f = F.normalize(features, dim=1)
    logp = F.log_softmax(f @ memory.detach().t() / temperature, dim=1)
    nll = -torch.logsumexp(logp.masked_fill(~neighbours, float("-inf")), dim=1)
    has = neighbours.sum(1) > 1
    l_inst = nll[~has].sum() / b
    l_aff = nll[has].sum() / b
    l_hp = torch.zeros((), device=f.device)
    if hp_weight > 0 and bool(has.any()):
        rows = has.nonzero().squeeze(1)
        mem = memory.detach()
        log_q = F.log_softmax(mem[hard_pos[rows]] @ mem.t() / temperature, dim=1)
        lp = logp[rows]
        l_hp = hp_weight * (lp.exp() * (lp - log_q)).sum() / b
    return l_inst + l_aff + l_hp, (l_inst.detach(), l_aff.detach(), l_hp.detach())

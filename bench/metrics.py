"""Clustering metrics as the papers compute them, all as fractions in [0, 1].

* ACC: best one-to-one map of clusters to classes (Hungarian algorithm on the contingency table,
  scipy's ``linear_sum_assignment``). With more clusters than classes, the unmatched clusters count
  as wrong (the strict reading; over-clustering papers that map many-to-one say so separately).
  Never 0 by fiat when the counts differ (a known trap in some toolkits).
* NMI, two conventions, both stored in every record:
  ``nmi`` divides the mutual information by the arithmetic mean of the two entropies (scikit-learn's
  default since 0.22, December 2019); ``nmi_geometric`` by their geometric mean, sqrt(H(Y) H(C)), the
  default of scikit-learn < 0.22 and what the DEC/IDEC/DEPICT/PICA-era official code printed. The
  two differ only when the entropies differ (geometric >= arithmetic by AM-GM); a claims file says
  which its paper used (bench.claims) and the audit compares like with like.
* ARI: adjusted Rand index.

Every scored seed also gets a cluster-size profile (:func:`cluster_profile`) and a ``degenerate`` flag,
so a collapsed clustering (one cluster holding almost everything, NMI near 0) is visible instead of
being averaged in silently. The rule (:data:`DEGENERATE_RULE`) is relative to the largest class's
share of the evaluated images, so an imbalanced dataset (USPS: the largest class holds 16.4% of the
7,291 training images, the smallest 7.4%) clustered correctly is never called degenerate.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def contingency(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Rows: predicted clusters, columns: classes (ids re-indexed densely)."""
    _, t = np.unique(np.asarray(y_true), return_inverse=True)
    _, p = np.unique(np.asarray(y_pred), return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table


def cluster_acc(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label arrays differ in length: {y_true.shape} vs {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("cannot score an empty assignment")
    table = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y_true.size)


#: record metric key of each NMI normalisation
NMI_KEYS = {"arithmetic": "nmi", "geometric": "nmi_geometric"}


def evaluate(y_true, y_pred) -> dict[str, float]:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    return {
        "acc": cluster_acc(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred, average_method="arithmetic")),
        "nmi_geometric": float(normalized_mutual_info_score(y_true, y_pred, average_method="geometric")),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


#: the documented rule (README "Metrics", reports, audit)
DEGENERATE_RULE = ("a seed is degenerate when fewer than half of the K clusters are non-empty, or when its "
                   "largest cluster holds more than 2 x the largest class's share of the evaluated images, "
                   "bounded to [50%, 90%]")


def cluster_profile(y_pred, n_clusters: int, y_true=None) -> dict[str, float | int | bool]:
    """Cluster sizes of one assignment, and whether it is degenerate by :data:`DEGENERATE_RULE`.

    * ``n_nonempty``: clusters holding at least one image (of ``n_clusters`` = K asked for);
    * ``largest_share``: fraction of the images in the largest cluster;
    * ``size_entropy``: entropy of the cluster shares divided by log K (1 = all K equal, 0 = one cluster);
      with more non-empty clusters than K it is divided by their log count instead, so it stays in [0, 1];
    * ``largest_class_share``: the same for the true classes (1/K when ``y_true`` is not given): the scale
      the rule compares with, so the flag uses labels only as the dataset's class balance, never for selection;
    * ``degenerate``: the rule.
    """
    y_pred = np.asarray(y_pred).ravel()
    if y_pred.size == 0:
        raise ValueError("cannot profile an empty assignment")
    k = int(n_clusters)
    if k < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    shares = np.unique(y_pred, return_counts=True)[1] / y_pred.size
    n_nonempty = int(shares.size)
    norm = math.log(max(k, n_nonempty))
    entropy = float(-(shares * np.log(shares)).sum() / norm) if norm > 0 else 1.0
    if y_true is not None:
        largest_class = float(np.unique(np.asarray(y_true).ravel(), return_counts=True)[1].max() / y_pred.size)
    else:
        largest_class = 1.0 / k
    largest = float(shares.max())
    degenerate = 2 * n_nonempty < k or largest > min(0.9, max(0.5, 2 * largest_class))
    return {"n_clusters": k, "n_nonempty": n_nonempty, "largest_share": round(largest, 6),
            "size_entropy": round(min(1.0, max(0.0, entropy)), 6), "largest_class_share": round(largest_class, 6),
            "degenerate": bool(degenerate)}

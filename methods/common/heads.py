"""Projection and clustering heads (two-layer MLPs) shared by the contrastive clustering methods.

CC: instance head Linear(512,512)-ReLU-Linear(512,128) (L2-normalised by the loss) and cluster head
Linear(512,512)-ReLU-Linear(512,K) followed by a softmax, which the caller applies to these logits.
"""

from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear(in, hidden) - ReLU - Linear(hidden, out)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def cluster_head(in_dim: int, hidden_dim: int, n_clusters: int) -> nn.Sequential:
    """Linear(in, hidden) - ReLU - Linear(hidden, K): cluster logits (apply ``softmax(dim=1)`` for assignments)."""
    return mlp_head(in_dim, hidden_dim, n_clusters)

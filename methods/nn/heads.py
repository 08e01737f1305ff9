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


class MultiHeadClassifier(nn.Module):
    """Backbone + ``n_heads`` linear cluster heads (SCAN's ``ClusteringModel``: ``nn.ModuleList`` of
    ``Linear(512, K)``), stored as one ``Linear(512, n_heads * K)``: the same per-head maps and init
    (fan-in 512), one matrix product. ``forward`` returns logits [B, n_heads, K]."""

    def __init__(self, backbone: nn.Module, n_heads: int, n_clusters: int):
        super().__init__()
        self.backbone = backbone
        self.n_heads, self.n_clusters = n_heads, n_clusters
        self.heads = nn.Linear(backbone.out_dim, n_heads * n_clusters)

    def forward(self, x):
        return self.heads(self.backbone(x)).view(x.shape[0], self.n_heads, self.n_clusters)

    def keep_head(self, h: int) -> None:
        """Drop every head but ``h`` (SCAN's self-labelling starts from the selected head only)."""
        import torch

        k = self.n_clusters
        new = nn.Linear(self.heads.in_features, k).to(self.heads.weight.device)
        with torch.no_grad():
            new.weight.copy_(self.heads.weight[h * k:(h + 1) * k])
            new.bias.copy_(self.heads.bias[h * k:(h + 1) * k])
        self.heads, self.n_heads = new, 1

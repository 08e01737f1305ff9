"""Projection and clustering heads (two-layer MLPs) shared by the contrastive clustering methods.

CC: instance head Linear(512,512)-ReLU-Linear(512,128) (L2-normalised by the loss) and cluster head
Linear(512,512)-ReLU-Linear(512,K) followed by a softmax, which the caller applies to these logits.
:class:`NormalizedEmbeddingNet`: backbone -> Linear -> L2 normalisation (IDFD's and ISL's networks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.nn.backbones import build_backbone


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear(in, hidden) - ReLU - Linear(hidden, out)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def cluster_head(in_dim: int, hidden_dim: int, n_clusters: int) -> nn.Sequential:
    """Linear(in, hidden) - ReLU - Linear(hidden, K): cluster logits (apply ``softmax(dim=1)`` for assignments)."""
    return mlp_head(in_dim, hidden_dim, n_clusters)


class StackedMLPHeads(nn.Module):
    """``n`` independent :func:`mlp_head` s as one module: each layer's weights stacked along a head dimension
    (kept in ``nn.Linear``'s [out, in] layout), one batched matrix product per layer for all heads.
    ``forward(x)``: x [B, D] (every head sees the same rows) or [H, B, D] (head h sees x[h]) -> logits [H, B, K].
    Built from existing heads (``from_heads``) so that the init is exactly theirs."""

    def __init__(self, w1, b1, w2, b2):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(w1), nn.Parameter(b1)  # [H, hidden, D], [H, hidden]
        self.w2, self.b2 = nn.Parameter(w2), nn.Parameter(b2)  # [H, K, hidden], [H, K]

    @classmethod
    def from_heads(cls, heads) -> StackedMLPHeads:
        import torch

        with torch.no_grad():
            return cls(*(torch.stack([getattr(h[i], a).detach().clone() for h in heads])
                         for i, a in ((0, "weight"), (0, "bias"), (2, "weight"), (2, "bias"))))

    def __len__(self) -> int:
        return self.w1.shape[0]

    def forward(self, x):
        if x.dim() == 2:
            x = x.expand(len(self), -1, -1)
        import torch

        n, b = x.shape[0], x.shape[1]  # bias fused into the product, as nn.Linear's addmm
        h = torch.baddbmm(self.b1[:, None].expand(n, b, -1), x, self.w1.transpose(1, 2)).relu()
        return torch.baddbmm(self.b2[:, None].expand(n, b, -1), h, self.w2.transpose(1, 2))

    def head(self, i: int) -> nn.Sequential:
        """Head ``i`` as a plain :func:`mlp_head` (a copy)."""
        import torch

        out = mlp_head(self.w1.shape[2], self.w1.shape[1], self.w2.shape[1]).to(self.w1.device)
        with torch.no_grad():
            out[0].weight.copy_(self.w1[i])
            out[0].bias.copy_(self.b1[i])
            out[2].weight.copy_(self.w2[i])
            out[2].bias.copy_(self.b2[i])
        return out


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


class NormalizedEmbeddingNet(nn.Module):
    """Backbone -> Linear(out_dim, feature_dim) -> L2 normalisation: the instance-discrimination embedding of
    IDFD's and ISL's official codes (a memory bank of unit vectors)."""

    def __init__(self, backbone: str, stem: str, in_channels: int, feature_dim: int):
        super().__init__()
        self.backbone = build_backbone(backbone, stem=stem, in_channels=in_channels)
        self.fc = nn.Linear(self.backbone.out_dim, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.backbone(x)), dim=1)

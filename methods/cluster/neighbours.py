"""Exact k-nearest-neighbour mining by cosine similarity, chunked so it runs on a GPU at any N.

SCAN mines its neighbours with faiss' exact ``IndexFlatIP`` on the L2-normalised pretext features
(``utils/memory.py`` ``mine_nearest_neighbors``), searching ``topk + 1`` so that the sample itself is
included (first, unless another sample has the same feature); its ``NeighborsDataset`` then draws a
neighbour among all ``topk + 1``, the anchor itself included. SPICE's local consistency takes the top 100
of the same kind of similarity matrix, self included. This is the same exact search as one batched
matrix product per chunk of queries plus ``topk`` (no faiss dependency): the similarity matrix is never
held whole (N = 1M would need 4 TB), only ``chunk`` x N at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def mine_neighbours(features: torch.Tensor, k: int, *, include_self: bool = True, chunk: int | None = None,
                    normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and cosine similarities of each row's ``k`` nearest rows of ``features`` [N, D].

    ``include_self=True`` returns ``k + 1`` columns, the row itself among them (SCAN's ``topk + 1``);
    ``False`` returns ``k`` columns without it (its own similarity is masked). Runs on the features'
    device, in float32, ``chunk`` query rows at a time (default: about 1 GiB of similarities per chunk).
    Returns (indices [N, k'] int64, similarities [N, k'] float32), most similar first.
    """
    n = features.shape[0]
    width = k + 1 if include_self else k
    if k < 1 or width > n:
        raise ValueError(f"cannot mine {k} neighbours among {n} samples")
    x = features.float()
    if normalize:
        x = F.normalize(x, dim=1)
    if chunk is None:
        chunk = max(1, min(n, (1 << 28) // n))  # 2^28 float32 = 1 GiB of similarities
    idx_out = torch.empty(n, width, dtype=torch.long, device=x.device)
    sim_out = torch.empty(n, width, dtype=torch.float32, device=x.device)
    for s in range(0, n, chunk):
        q = x[s:s + chunk]
        sim = q @ x.t()
        if not include_self:
            rows = torch.arange(q.shape[0], device=x.device)
            sim[rows, rows + s] = float("-inf")
        val, idx = sim.topk(width, dim=1)
        idx_out[s:s + chunk], sim_out[s:s + chunk] = idx, val
    return idx_out, sim_out

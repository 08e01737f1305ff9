"""Nearest neighbours mined on a pretext network's features: SCAN's top-20 (train) and top-5 (val) lists.

SCAN (simclr.py, end of pretext training): features of the un-augmented train images from the pretext
model's L2-normalised 128-d projection, exact inner-product search (faiss ``IndexFlatIP``) for the top
``k + 1`` with the sample itself included; the same on the val split with k = 5, used only for the
label-free head/epoch selection. SPICE's local consistency takes 100 neighbours in its 512-d backbone
embedding (``features: backbone``). The search is :func:`methods.cluster.neighbours.mine_neighbours`
(exact, chunked, on the trial's device).

Artifacts: ``train`` [N_train, k + 1] and, when ``eval_k > 0`` and the eval split differs, ``eval``
[N_eval, eval_k + 1] (int64 indices into their own split, most similar first).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bench.context import TrialContext
from bench.method import ClusteringData
from bench.stages import Stage, StageConfig, register_stage
from methods.cluster.neighbours import mine_neighbours


@register_stage
class MineNeighbours(Stage):
    name = "neighbours"
    version = 1

    class Config(StageConfig):
        k: int = Field(20, ge=1, description="neighbours per train image, the image itself not counted "
                                             "(SCAN: topk 20, searched as topk + 1)")
        eval_k: int = Field(5, ge=0, description="neighbours per eval image (SCAN: 5, for the selection score)")
        features: Literal["head", "backbone"] = Field("head", description="SCAN: the 128-d projection; "
                                                                          "SPICE: the 512-d backbone output")

    def build(self, data: ClusteringData, inputs: dict[str, dict[str, Any]], ctx: TrialContext) -> dict[str, Any]:
        from methods.stages.simclr_pretext import SimCLRPretext, load_pretext, pretext_features

        pre = inputs["pretext"]
        pcfg = SimCLRPretext.Config(**pre["config"])
        net = load_pretext(pre, ctx.device)
        cfg = self.config
        f_train = pretext_features(net, data.x_train, pcfg, ctx.device, cfg.features)
        k = min(cfg.k, f_train.shape[0] - 1)
        idx, sim = mine_neighbours(f_train, k)
        out: dict[str, Any] = {"train": idx.cpu(), "k": k}
        ctx.log_epoch(0, neighbour_sim_mean=float(sim[:, 1:].mean()))
        if cfg.eval_k > 0 and not data.same_split:
            f_eval = pretext_features(net, data.x_eval, pcfg, ctx.device, cfg.features)
            out["eval"] = mine_neighbours(f_eval, min(cfg.eval_k, f_eval.shape[0] - 1))[0].cpu()
        return out

"""DEPICT's convolutional autoencoder stage (Ghasedi Dizaji et al., ICCV 2017): the noisy/clean autoencoder
trained on reconstruction alone, early-stopped on a held-out split; DEPICT's variants with the same
autoencoder fields share it. Training code: :func:`methods.depict.pretrain_cae`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bench.context import TrialContext
from bench.method import ClusteringData
from bench.stages import Stage, StageConfig, register_stage


@register_stage
class DepictCAE(Stage):
    name = "depict_cae"
    version = 1
    gpu_share = 0.2

    class Config(StageConfig):
        """Field meanings and paper values: DEPICT.Config (methods/depict.py)."""

        filters: tuple[int, ...] = (50, 50)
        kernel_sizes: tuple[int, ...] = (4, 5)
        strides: tuple[int, ...] = (2, 2)
        paddings: tuple[int, ...] = (0, 2)
        dropouts: tuple[float, ...] = (0.1, 0.1, 0.0)
        dropout_masks: Literal["per_term", "shared"] = "per_term"
        leak: float = Field(0.01, ge=0)
        hidden_loss_weight: float = Field(0.1, ge=0)
        lr: float = Field(1e-4, gt=0)
        batch_size: int = Field(100, ge=1)
        val_fraction: float = Field(0.1, gt=0, lt=1)
        pretrain_epochs: int = Field(4000, ge=0)
        pretrain_patience: int = Field(100, ge=1)
        diag_kmeans_every: int = Field(0, ge=0)
        cuda_graphs: bool = True
        tf32: bool = True

    def build(self, data: ClusteringData, inputs: dict[str, dict[str, Any]], ctx: TrialContext) -> dict[str, Any]:
        from methods.depict import pretrain_cae

        return pretrain_cae(data, self.config, ctx)

"""Shared stages (bench.stages): one file per stage, registered on import."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bench.stages import StageConfig


class ImageStageConfig(StageConfig):
    """The fields of a stage that runs a network on the images at the pretext's view (SCAN's clustering step,
    SPICE-Self): the input size and normalisation, the arithmetic, and the eval batch."""

    image_size: int = Field(32, ge=8)
    normalization: Literal["cifar10", "cifar20", "imagenet"] = "cifar10"
    # Deviation (numerics only): the official codes train in fp32; bf16 autocast on a GPU. CPUs run fp32.
    precision: Literal["fp32", "bf16"] = "bf16"
    eval_batch_size: int = Field(1024, ge=1)

"""The one interface every clustering method implements.

A method is a small class in one file under ``methods/``::

    @register_method
    class DEC(ClusteringMethod):
        name = "dec"
        paper = "Xie et al., ICML 2016"
        selection_rule = "final assignment when < tol of labels change between target updates"

        class Config(MethodConfig):
            lr: float = 0.01          # paper: SGD lr 0.01, momentum 0.9
            ...

        def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput: ...

The harness resolves the config (paper defaults <- per-dataset defaults <- variant <- suite
overrides), gives the method the images **without labels**, and evaluates what it returns.
Methods never see ground truth: per-epoch metrics for learning curves go through
``ctx.log_epoch(eval_pred=...)``, which scores them on the harness side and only stores them.
That makes "picked the best epoch by ACC" impossible by construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from bench.suite import Split


class MethodConfig(BaseModel):
    """Base of every method's typed config. Unknown keys are errors, types are checked."""

    # allow_inf_nan=False: `tol: .inf` or `lr: .nan` in a suite is a typo, never a recipe
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


@dataclasses.dataclass
class ClusteringData:
    """What a method gets: images of the train and eval splits, and the number of clusters.

    Images are ``[N, C, H, W]`` tensors, ``uint8`` in 0..255 (or ``float32`` in [0, 1] for datasets
    that ship floats, e.g. USPS). When the protocol trains and evaluates on the same images
    (DEC, CC: train+test), ``x_eval is x_train`` and ``same_split`` is True.
    """

    dataset: str
    x_train: torch.Tensor
    x_eval: torch.Tensor
    n_clusters: int
    train_split: Split
    eval_split: Split
    md5: str
    #: images without labels for training only (STL-10's unlabeled split), or None; never evaluated.
    #: Methods whose papers train on them use them (CC, SimCLR + k-means, PICA), the others ignore them.
    x_unlabeled: torch.Tensor | None = None
    #: a suite's ``protocol.max_images`` (smoke runs): each split was cut to its first N images
    max_images: int | None = None

    @property
    def split_id(self) -> str:
        """The training images' identity within the dataset (part of every stage key): split and cut."""
        return split_id(self.train_split, self.max_images)

    @property
    def same_split(self) -> bool:
        return self.train_split == self.eval_split

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @staticmethod
    def float01(x: torch.Tensor) -> torch.Tensor:
        """Images as float32 in [0, 1], whatever their stored dtype."""
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        return x.float()


def split_id(split: str, max_images: int | None = None) -> str:
    return split if not max_images else f"{split}[:{max_images}]"


@dataclasses.dataclass
class ClusterOutput:
    """What a method returns: one cluster id per eval image, and optional extras.

    ``labels``: int array/tensor of length ``len(data.x_eval)``.
    ``info``: small JSON-able facts for the record (iterations run, stop reason, ...).
    """

    labels: Any
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def labels_numpy(self) -> np.ndarray:
        lab = self.labels
        if isinstance(lab, torch.Tensor):
            lab = lab.detach().cpu().numpy()
        return np.asarray(lab).astype(np.int64).ravel()


class ClusteringMethod:
    """Base class: declare ``name``, ``Config``, ``paper``, ``selection_rule``; implement ``run``."""

    name: ClassVar[str]
    #: how tables and plots name the method (the papers' spelling, e.g. "k-means"); defaults to ``name``
    label: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: Named presets of config overrides, e.g. CC's head ablations. "default" is the paper recipe.
    variants: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}
    #: Per-dataset recipe differences from the official code (e.g. DEC's update interval).
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: For a config key added with a default that changes behaviour: the value records made before the key
    #: existed ran with (bench.view matches them by it; keys not listed: their default).
    legacy_config: ClassVar[dict[str, Any]] = {}
    #: The paper's split protocol. Suites may override it; the record always states it.
    train_split: ClassVar[Split] = "all"
    eval_split: ClassVar[Split] = "all"
    #: How the reported assignment is chosen, without labels. Stated in every record.
    selection_rule: ClassVar[str] = "final iterate"
    #: Default share of one GPU per trial when the suite does not say (small MLPs pack well).
    gpu_share: ClassVar[float] = 1.0
    #: True when ``run_seeds`` trains several seeds in one model (one trial, many records).
    supports_seed_batch: ClassVar[bool] = False

    def __init__(self, config: MethodConfig):
        self.config = config

    @classmethod
    def stages(cls, config: MethodConfig) -> dict[str, StageRequest]:  # noqa: F821
        """The shared stages this method reads (``ctx.stage(name)``), built from its typed config only; the
        planner builds each distinct one once per seed and data (bench.stages). Default: none."""
        return {}

    def fit(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:  # noqa: F821
        """Run one seed: binds ``ctx`` to the data and this method's stages, then :meth:`run` (what the harness
        calls; call this, not ``run``, from scripts and tests)."""
        ctx.bind(data, type(self).stages(self.config))
        return self.run(data, ctx)

    def fit_seeds(self, data: ClusteringData, ctxs: list[TrialContext]) -> list[ClusterOutput]:  # noqa: F821
        """:meth:`fit` for a batch of seeds (:meth:`run_seeds`)."""
        requests = type(self).stages(self.config)
        for ctx in ctxs:
            ctx.bind(data, requests)
        return self.run_seeds(data, ctxs)

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:  # noqa: F821
        raise NotImplementedError

    def run_seeds(self, data: ClusteringData, ctxs: list[TrialContext]) -> list[ClusterOutput]:  # noqa: F821
        """Several seeds at once. Methods that set ``supports_seed_batch`` override this to train
        them together (e.g. one batched model on one GPU); each seed keeps its own RNG stream,
        stopping rule and record."""
        return [self.run(data, ctx) for ctx in ctxs]

    @classmethod
    def protocol_fields(cls, config: MethodConfig) -> dict[str, Any]:
        """Image size, stem, epochs and batch for the record, read from the config by name.

        Methods whose config names these differently override this.
        """
        out: dict[str, Any] = {}
        for key in ("image_size", "stem", "backbone", "epochs", "batch_size"):
            if key in type(config).model_fields:
                out[key] = getattr(config, key)
        return out


from bench.context import TrialContext  # noqa: E402  (import at end: context imports nothing from here)
from bench.stages import StageRequest  # noqa: E402

__all__ = [
    "ClusterOutput",
    "ClusteringData",
    "ClusteringMethod",
    "MethodConfig",
    "Split",
    "TrialContext",
]

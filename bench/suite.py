"""Suite files: the grid (methods x variants x datasets x seeds) and how to run it.

Example (``suites/default.yaml``)::

    name: default
    seeds: [0, 1, 2]            # or a count: 5 -> seeds 0..4
    datasets: [digits]
    methods:
      - kmeans
      - name: dec
        variants: [default]
        config: {pretrain_iters_per_layer: 2000}      # overrides the paper defaults
        config_by_dataset: {mnist: {update_interval: 140}}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0.25}
    tables:                    # optional paper-layout tables for `bench report`
      - title: DEC vs k-means
        rows: [{method: kmeans, label: k-means}, {method: dec, label: DEC}]
        metrics: [acc, nmi, ari]

Every key is checked; a wrong key or type is one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench.errors import BenchError, yaml_error

#: a protocol split (the methods' papers and the suites' overrides). Defined here, not in bench.method,
#: so that reading and checking a suite imports neither torch nor Ray (bench.method re-exports it).
Split = Literal["train", "test", "all"]

METRIC_NAMES = ("acc", "nmi", "ari")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodEntry(_Strict):
    name: str
    variants: list[str] = Field(default_factory=lambda: ["default"])
    config: dict[str, Any] = Field(default_factory=dict)
    config_by_dataset: dict[str, dict[str, Any]] = Field(default_factory=dict)
    datasets: list[str] | None = None  # restrict this method to some of the suite's datasets
    gpus_per_trial: float | None = None
    #: run this many seeds inside one trial (methods that batch seeds into one model)
    seed_batch: int | None = None


class Resources(_Strict):
    cpus_per_trial: float = 1.0
    #: None: the method's own default share when the cluster has GPUs, else 0
    gpus_per_trial: float | None = None
    max_concurrent_trials: int | None = None


class TableRow(_Strict):
    method: str
    variant: str = "default"
    label: str | None = None


class TableSpec(_Strict):
    title: str
    rows: list[TableRow]
    datasets: list[str] | None = None
    metrics: list[Literal["acc", "nmi", "ari"]] = Field(default_factory=lambda: list(METRIC_NAMES))


class ProtocolOverride(_Strict):
    train_split: Split | None = None
    eval_split: Split | None = None


class SuiteSpec(_Strict):
    name: str
    description: str = ""
    seeds: list[int]
    datasets: list[str]
    methods: list[MethodEntry]
    protocol: ProtocolOverride = Field(default_factory=ProtocolOverride)
    resources: Resources = Field(default_factory=Resources)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    tables: list[TableSpec] = Field(default_factory=list)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError("a seed count must be at least 1")
            return list(range(v))
        return v

    @field_validator("methods", mode="before")
    @classmethod
    def _method_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ \t") or v.startswith("."):
            raise ValueError("must be a plain word (letters, digits, '-', '_'), it names files")
        return v


def parse_suite(data: Any, source: str = "<suite>") -> SuiteSpec:
    if not isinstance(data, dict):
        raise BenchError(f"{source}: a suite file must be a YAML mapping with keys name, seeds, datasets, methods")
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise BenchError(f"{source}: {loc or 'suite'}: {what} (got {err.get('input')!r})") from None
    if not spec.seeds or not spec.datasets or not spec.methods:
        empty = [k for k in ("seeds", "datasets", "methods") if not getattr(spec, k)]
        raise BenchError(f"{source}: the grid is empty ({', '.join(empty)} has no entries); nothing to run")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise BenchError(f"{source}: seeds repeat ({spec.seeds}); each seed must be unique")
    return spec


def load_suite(path: str | Path) -> SuiteSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchError(f"cannot read suite file {path}: {exc.strerror or exc}; pass a YAML file such as "
                         "suites/default.yaml") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    return parse_suite(data, source=str(path))

"""Result records: one JSON document per (trial, seed), the unit everything downstream reads.

Schema (``schema`` = 1). Later fields may be added; none will change meaning.

========================  ===================================================================
key                       trial identity: hash of method, variant, dataset, seed, resolved config,
                          protocol, data md5 and code version. Same key = same computation.
suite, run_id             the suite and run that produced it (a later run that finds an identical
                          stored trial reuses this record instead of re-running it)
method, variant, dataset  what ran
seed                      the trial seed
config                    the fully resolved method config (defaults filled in)
protocol                  train_split, eval_split, n_train, n_eval, n_clusters, and image_size /
                          stem / backbone / epochs / batch_size where the method has them
data_md5                  md5 identity of the dataset files (see bench.data)
status                    "ok", "failed" (exception, NaN loss) or "interrupted" (worker killed,
                          Ctrl-C). Only "ok" rows enter means; the others are counted as failures.
error                     one line: the exception type and message, for failed/interrupted
metrics                   {"acc", "nmi", "nmi_geometric", "ari"} on the eval split, fractions in [0, 1]
                          (nmi: arithmetic normalisation; nmi_geometric: the pre-2019 convention, see
                          bench.metrics; records written before it existed lack nmi_geometric)
cluster_profile           ok seeds: n_clusters, n_nonempty, largest_share, size_entropy (normalised),
                          largest_class_share (bench.metrics.cluster_profile); null on older records
degenerate                ok seeds: the collapse flag by bench.metrics.DEGENERATE_RULE; null when unknown
selection_rule            how the reported assignment was chosen, without labels
curve                     per-epoch rows: epoch, loss, ..., eval_acc/eval_nmi/eval_ari when logged
stages                    the shared stages the trial read (bench.stages): [{name, key, reused, build_s}];
                          reused is false only for the trial a stage was built for, in the run that built it
info                      method-specific facts (iterations, stop reason, ...)
timings                   started_at, finished_at (UTC ISO), wall_s, load_s, fit_s
resources                 peak_rss_mb, peak_gpu_mem_mb, device
env                       code_version, git_commit, git_dirty, python, torch, torchvision, ray,
                          numpy, cpu, gpu, hostname
record_sha256             in the file only (bench.store): sha256 of the rest of the record's JSON; a file
                          whose bytes no longer match is skipped as damaged (records written before it
                          existed lack it and are read as they are)
========================  ===================================================================
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.context import stable_hash

SCHEMA_VERSION = 1
Status = Literal["ok", "failed", "interrupted"]
METRICS = ("acc", "nmi", "ari")  # the default table columns
ALL_METRICS = ("acc", "nmi", "nmi_geometric", "ari")  # every stored metric (per-seed CSV, summaries)


class ResultRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    key: str
    suite: str | None = None
    run_id: str | None = None
    method: str
    variant: str = "default"
    dataset: str
    seed: int
    config: dict[str, Any]
    protocol: dict[str, Any]
    data_md5: str
    status: Status
    error: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    cluster_profile: dict[str, Any] | None = None
    degenerate: bool | None = None
    selection_rule: str = ""
    curve: list[dict[str, Any]] = Field(default_factory=list)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def finished_at(self) -> str:
        """``timings.finished_at`` (UTC ISO, sorts as time), "" when unknown."""
        return str((self.timings or {}).get("finished_at") or "")


def trial_key(*, method: str, variant: str, dataset: str, seed: int, config: dict[str, Any],
              protocol: dict[str, Any], data_md5: str, code_version: str) -> str:
    """Identity of a computation. Two trials with the same key would compute the same thing."""
    return stable_hash({"method": method, "variant": variant, "dataset": dataset, "seed": seed,
                        "config": config, "protocol": protocol, "data_md5": data_md5, "code": code_version}, n=20)

"""The claims registry: papers' published numbers as data, one YAML file per paper under ``claims/``.

File format (``claims/cc.yaml``)::

    paper: Li et al., Contrastive Clustering, AAAI 2021
    method: cc                          # harness method name (default for every row)
    defaults:                           # any row field; rows override
      table: Table 2
      report: single                    # mean | best | single (one number, no statement)
      source: CC paper Table 2 via the PwC archive
      protocol: {train_split: all, eval_split: all, image_size: 224, backbone: resnet34,
                 stem: imagenet, epochs: 1000, batch_size: 256, n_gpus: 1}
    claims:
      - {dataset: cifar10, acc: 0.790, nmi: 0.705, ari: 0.637}
      - {variant: ich_only, dataset: cifar10, table: Table 3, acc: 0.782, verified: false}
      - {dataset: cifar10, report: mean, n_runs: 10, acc: 0.659, std: {acc: 0.057}}

Each row expands into one :class:`Claim` per metric key (``acc``, ``nmi``, ``ari``). Values are
fractions in [0, 1] (a paper's "79.0" is 0.790). ``verified: false`` marks a number that comes from
a secondary transcription (e.g. lecture notes of the paper's table) and was not checked against the
paper or the official repository; the audit prints it with a dagger.

Protocol fields a claim may state, and how the audit compares them with a record's ``protocol``:
``train_split``/``eval_split`` (train | test | all), ``image_size``, ``stem``, ``backbone``,
``epochs``, ``batch_size``, ``n_clusters`` and ``features`` (input features when not raw pixels,
e.g. ``hog``) are compared (strings case-insensitively); ``n_gpus`` is documentation only
(records do not carry it). A field the claim leaves out is not compared.

NMI convention. ``nmi_normalisation: geometric | arithmetic`` (in ``defaults`` for the whole file, or
in a row) says how the paper normalised NMI: geometric (sqrt(H(Y) H(C)), scikit-learn < 0.22's default
and therefore what DEC/IDEC/DEPICT/PICA-era code printed) or arithmetic (scikit-learn >= 0.22).
The audit compares an NMI claim with the record's ``nmi_geometric`` or ``nmi`` accordingly; a claim
that does not state it is compared with the arithmetic ``nmi`` and the output says "not stated".

Loading validates every row: an unknown method, dataset, metric or key, a value outside [0, 1]
or a bad type raises one :class:`~bench.errors.BenchError` naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import BenchError, yaml_error

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLAIMS_DIR = PROJECT_ROOT / "claims"

METRICS = ("acc", "nmi", "ari")
REPORT_KINDS = ("mean", "best", "single")

#: Methods that teammates are adding to the harness. Claims for them load before the method exists;
#: the audit shows "no results" until a run produces records under that name.
UPCOMING_METHODS = frozenset({
    "ae_kmeans", "idec", "depict", "simclr_kmeans", "cc", "pica", "idfd", "scan", "spice", "deepcluster",
    "pcl", "isl",
})

#: Datasets that papers report on and the harness does not (yet) load. Claims on them load and are
#: always shown as "no results" in the audit.
CLAIM_ONLY_DATASETS = frozenset({
    "imagenet10", "imagenet-dogs", "tiny-imagenet", "imagenet50", "imagenet100", "imagenet200",
    "reuters10k", "reuters", "cmu-pie", "mnist-test", "frgc", "ytf",
})

#: Protocol fields compared against records; ``n_gpus`` is kept for the reader only.
COMPARED_FIELDS = ("train_split", "eval_split", "image_size", "stem", "backbone", "epochs", "batch_size",
                   "n_clusters", "features")
PROTOCOL_FIELDS = (*COMPARED_FIELDS, "n_gpus")
SPLITS = ("train", "test", "all")

NMI_NORMALISATIONS = ("arithmetic", "geometric")
ROW_KEYS = {"method", "variant", "label", "dataset", "table", "paper", "source", "report", "n_runs", "std",
            "protocol", "verified", "note", "nmi_normalisation", *METRICS}
FILE_KEYS = {"paper", "method", "defaults", "claims", "notes"}


@dataclass(frozen=True)
class Claim:
    """One published number."""

    method: str
    variant: str
    dataset: str
    metric: str
    value: float
    paper: str
    table: str
    source: str
    report: str = "single"
    std: float | None = None
    n_runs: int | None = None
    label: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    verified: bool = True
    note: str = ""
    nmi_normalisation: str = ""  # arithmetic | geometric | "" (not stated: compared as arithmetic)
    file: str = ""
    line: int = 0

    @property
    def record_metric(self) -> str:
        """The record metric this claim is compared with (NMI: the claim's normalisation)."""
        if self.metric != "nmi":
            return self.metric
        from bench.metrics import NMI_KEYS

        return NMI_KEYS[self.nmi_normalisation or "arithmetic"]

    @property
    def metric_label(self) -> str:
        """``ACC``, ``ARI``, or ``NMI (geometric)`` / ``NMI (arithmetic)`` / ``NMI (arithmetic; paper: not stated)``."""
        if self.metric != "nmi":
            return self.metric.upper()
        return f"NMI ({self.nmi_normalisation})" if self.nmi_normalisation else \
            "NMI (arithmetic; paper: not stated)"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def compared_protocol(self) -> dict[str, Any]:
        return {k: v for k, v in self.protocol.items() if k in COMPARED_FIELDS and v is not None}

    def protocol_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.protocol.items() if v is not None) or "not stated"


def known_methods() -> set[str]:
    """Registered methods plus :data:`UPCOMING_METHODS`. A method module that fails to import (work in
    progress) does not stop the claims from loading: its name is usually in the upcoming list."""
    from bench.registry import method_names

    try:
        registered = set(method_names())
    except Exception as exc:  # noqa: BLE001
        import logging

        logging.getLogger("bench.claims").warning("method registry incomplete (%s: %s); validating claims "
                                                  "against the built-in and upcoming names", type(exc).__name__, exc)
        registered = {"kmeans", "dec"}
    return registered | set(UPCOMING_METHODS)


def known_datasets() -> set[str]:
    from bench.data import DATASETS

    return set(DATASETS) | set(CLAIM_ONLY_DATASETS)


def _line_index(text: str, path: str) -> tuple[int, list[int], list[dict[str, int]]]:
    """Line numbers (1-based) of the file's `claims` key, each row, and each key inside each row."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    rows: list[int] = []
    keys: list[dict[str, int]] = []
    claims_line = 1
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if k.value == "claims":
                claims_line = k.start_mark.line + 1
                if isinstance(v, yaml.SequenceNode):
                    for item in v.value:
                        rows.append(item.start_mark.line + 1)
                        keys.append({kk.value: kk.start_mark.line + 1 for kk, _ in item.value}
                                    if isinstance(item, yaml.MappingNode) else {})
    return claims_line, rows, keys


def _check_protocol(proto: Any, where: str) -> dict[str, Any]:
    if proto is None:
        return {}
    if not isinstance(proto, dict):
        raise BenchError(f"{where}: protocol must be a mapping of {', '.join(PROTOCOL_FIELDS)}")
    for k, v in proto.items():
        if k not in PROTOCOL_FIELDS:
            raise BenchError(f"{where}: unknown protocol field {k!r}; known: {', '.join(PROTOCOL_FIELDS)}")
        if k in ("train_split", "eval_split") and v is not None and v not in SPLITS:
            raise BenchError(f"{where}: protocol {k} must be one of {', '.join(SPLITS)}, got {v!r}")
        if k in ("image_size", "epochs", "batch_size", "n_clusters", "n_gpus") and v is not None and (
                isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise BenchError(f"{where}: protocol {k} must be a positive integer, got {v!r}")
    return dict(proto)


def _number(v: Any, what: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BenchError(f"{where}: {what} must be a number (a fraction in [0, 1]), got {v!r}")
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise BenchError(f"{where}: {what} = {v} is outside [0, 1]; write percentages as fractions "
                         f"(79.0 -> 0.790)")
    return v


def parse_claims_file(path: str | Path, *, methods: set[str] | None = None,
                      datasets: set[str] | None = None) -> list[Claim]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchError(f"cannot read claims file {path}: {exc.strerror or exc}") from None
    shown = _shown(path)
    claims_line, row_lines, key_lines = _line_index(text, shown)
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise BenchError(f"{shown}:1: a claims file is a YAML mapping with keys paper, method, defaults, claims "
                         f"(a list of rows)")
    bad = set(data) - FILE_KEYS
    if bad:
        raise BenchError(f"{shown}:1: unknown top-level key(s) {sorted(bad)}; allowed: {sorted(FILE_KEYS)}")
    methods = known_methods() if methods is None else methods
    datasets = known_datasets() if datasets is None else datasets
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise BenchError(f"{shown}:1: defaults must be a mapping")
    bad = set(defaults) - (ROW_KEYS - set(METRICS) - {"std"})
    if bad:
        raise BenchError(f"{shown}:1: unknown key(s) in defaults: {sorted(bad)}")
    out: list[Claim] = []
    for i, row in enumerate(data["claims"]):
        line = row_lines[i] if i < len(row_lines) else claims_line
        keys = key_lines[i] if i < len(key_lines) else {}
        where = f"{shown}:{line}"

        def at(key: str, _keys=keys, _line=line) -> str:
            return f"{shown}:{_keys.get(key, _line)}"

        if not isinstance(row, dict):
            raise BenchError(f"{where}: each claim row must be a mapping (dataset, metrics, ...), got {row!r}")
        for k in row:
            if k not in ROW_KEYS:
                raise BenchError(f"{at(k)}: unknown metric or key {k!r}; metrics are acc, nmi, ari; other keys: "
                                 f"{', '.join(sorted(ROW_KEYS - set(METRICS)))}")
        merged = {**defaults, **row}
        merged["protocol"] = {**(defaults.get("protocol") or {}), **(row.get("protocol") or {})}
        method = merged.get("method", data.get("method"))
        if method not in methods:
            raise BenchError(f"{at('method')}: unknown method {method!r}; use a harness method name "
                             f"({', '.join(sorted(methods))}) or add it to UPCOMING_METHODS in bench/claims.py")
        ds = merged.get("dataset")
        if ds not in datasets:
            raise BenchError(f"{at('dataset')}: unknown dataset {ds!r}; known: {', '.join(sorted(datasets))} "
                             f"(claim-only datasets are listed in CLAIM_ONLY_DATASETS in bench/claims.py)")
        report = merged.get("report", "single")
        if report not in REPORT_KINDS:
            raise BenchError(f"{at('report')}: report must be one of {', '.join(REPORT_KINDS)}, got {report!r}")
        n_runs = merged.get("n_runs")
        if n_runs is not None and (isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 1):
            raise BenchError(f"{at('n_runs')}: n_runs must be a positive integer, got {n_runs!r}")
        std = row.get("std") or {}
        if not isinstance(std, dict):
            raise BenchError(f"{at('std')}: std is a mapping metric -> std, e.g. {{acc: 0.004}}")
        for m in std:
            if m not in METRICS:
                raise BenchError(f"{at('std')}: unknown metric {m!r} in std; metrics are acc, nmi, ari")
            if m not in row:
                raise BenchError(f"{at('std')}: std given for {m} but the row has no {m} value")
        protocol = _check_protocol(merged["protocol"], at("protocol"))
        metrics = [m for m in METRICS if m in row]
        if not metrics:
            raise BenchError(f"{where}: the row has no metric value (acc, nmi or ari)")
        for k in ("paper", "table", "source"):
            if not merged.get(k, data.get(k)):
                raise BenchError(f"{where}: missing {k!r} (set it in the row or in defaults); every claim "
                                 f"carries its paper, table and source")
        nmi_norm = merged.get("nmi_normalisation") or ""  # null in a row: not stated
        if nmi_norm not in ("", *NMI_NORMALISATIONS):
            raise BenchError(f"{at('nmi_normalisation')}: nmi_normalisation must be one of "
                             f"{', '.join(NMI_NORMALISATIONS)}, got {nmi_norm!r}")
        verified = merged.get("verified", True)
        if not isinstance(verified, bool):
            raise BenchError(f"{at('verified')}: verified must be true or false")
        for m in metrics:
            value = _number(row[m], m, at(m))
            s = _number(std[m], f"std of {m}", at("std")) if m in std else None
            out.append(Claim(method=method, variant=str(merged.get("variant", "default")), dataset=ds, metric=m,
                             value=value, std=s, n_runs=n_runs, report=report, label=str(merged.get("label", "")),
                             paper=str(merged.get("paper", data.get("paper"))), table=str(merged.get("table")),
                             source=str(merged.get("source")), protocol=protocol, verified=verified,
                             note=str(merged.get("note", "")), nmi_normalisation=nmi_norm, file=shown,
                             line=keys.get(m, line)))
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_claims(folder: str | Path | None = None) -> list[Claim]:
    """Every ``*.yaml``/``*.yml`` file under ``folder`` (default: the repo's ``claims/``), validated."""
    folder = Path(folder) if folder else DEFAULT_CLAIMS_DIR
    if folder.is_file():
        files = [folder]
    elif folder.is_dir():
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    else:
        raise BenchError(f"claims folder {folder} does not exist; pass --claims DIR (the repo's is claims/)")
    methods, datasets = known_methods(), known_datasets()
    out: list[Claim] = []
    for f in files:
        out.extend(parse_claims_file(f, methods=methods, datasets=datasets))
    seen: dict[tuple, str] = {}
    for c in out:
        ident = (c.method, c.variant, c.dataset, c.metric, c.report, c.label, c.paper, c.table,
                 tuple(sorted(c.protocol.items())), c.nmi_normalisation)
        if ident in seen:
            raise BenchError(f"{c.where}: duplicate claim (same method, variant, dataset, metric, report, label, "
                             f"paper, table and protocol as {seen[ident]})")
        seen[ident] = c.where
    return out

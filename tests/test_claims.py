"""Claims registry: the repo's files load, and bad rows fail with one line naming file and line."""

from __future__ import annotations

import pytest

from bench.claims import load_claims, parse_claims_file
from bench.errors import BenchError

METHODS = {"kmeans", "dec", "cc"}
DATASETS = {"mnist", "cifar10", "imagenet10"}


def test_repo_claims_load_and_carry_sources():
    claims = load_claims()
    assert len(claims) > 300
    by_method = {c.method for c in claims}
    assert {"kmeans", "dec", "idec", "ae_kmeans", "depict", "cc", "pica", "idfd", "scan", "spice",
            "simclr_kmeans", "deepcluster"} <= by_method
    assert all(0 <= c.value <= 1 and c.paper and c.table and c.source for c in claims)
    cc = {(c.variant, c.dataset, c.metric): c for c in claims if c.method == "cc"}
    assert cc[("default", "cifar10", "acc")].value == pytest.approx(0.790)
    assert cc[("default", "cifar10", "acc")].compared_protocol["image_size"] == 224
    assert not cc[("ich_only", "cifar10", "acc")].verified  # seed-notes-only ablation is marked
    pica_best = [c for c in claims if c.method == "pica" and c.report == "best"]
    assert len(pica_best) == 18


def _write(tmp_path, body: str):
    p = tmp_path / "x.yaml"
    p.write_text(body)
    return p


HEADER = "paper: P\nmethod: cc\ndefaults: {table: T1, source: S}\nclaims:\n"


@pytest.mark.parametrize("row,needle,line", [
    ("  - {dataset: cifar10, acc: 79.0}\n", "outside [0, 1]", 6),
    ("  - {dataset: cifar-10, acc: 0.79}\n", "unknown dataset 'cifar-10'", 6),
    ("  - {dataset: cifar10, ami: 0.5}\n", "unknown metric or key 'ami'", 6),
    ("  - dataset: cifar10\n    method: ccc\n    acc: 0.5\n", "unknown method 'ccc'", 7),
    ("  - {dataset: cifar10, acc: 0.5, protocol: {train_split: both}}\n", "train_split", 6),
    ("  - {dataset: cifar10, nmi: 0.5, nmi_normalisation: sqrt}\n", "nmi_normalisation must be one of", 6),
])
def test_bad_rows_name_file_and_line(tmp_path, row, needle, line):
    p = _write(tmp_path, HEADER + "  - {dataset: mnist, acc: 0.5}\n" + row)
    with pytest.raises(BenchError) as exc:
        parse_claims_file(p, methods=METHODS, datasets=DATASETS)
    msg = str(exc.value)
    assert needle in msg and f"x.yaml:{line}" in msg and "\n" not in msg


def test_row_expands_per_metric_with_std_and_defaults(tmp_path):
    p = _write(tmp_path, "paper: P\nmethod: cc\ndefaults: {table: T1, source: S, report: mean, n_runs: 10,"
                         " protocol: {image_size: 224}}\nclaims:\n"
                         "  - {dataset: cifar10, acc: 0.8, nmi: 0.7, std: {acc: 0.01}, protocol: {epochs: 5}}\n")
    claims = parse_claims_file(p, methods=METHODS, datasets=DATASETS)
    assert [(c.metric, c.value, c.std) for c in claims] == [("acc", 0.8, 0.01), ("nmi", 0.7, None)]
    assert claims[0].protocol == {"image_size": 224, "epochs": 5} and claims[0].n_runs == 10


def test_nmi_normalisation_from_defaults_or_row(tmp_path):
    p = _write(tmp_path, "paper: P\nmethod: cc\ndefaults: {table: T1, source: S, nmi_normalisation: geometric}\n"
                         "claims:\n  - {dataset: cifar10, acc: 0.8, nmi: 0.7}\n"
                         "  - {dataset: mnist, nmi: 0.6, nmi_normalisation: null}\n")
    acc, nmi, cited = parse_claims_file(p, methods=METHODS, datasets=DATASETS)
    assert (nmi.record_metric, nmi.metric_label) == ("nmi_geometric", "NMI (geometric)")
    assert acc.record_metric == "acc"  # the convention only concerns NMI
    assert (cited.record_metric, cited.metric_label) == ("nmi", "NMI (arithmetic; paper: not stated)")
    depict = [c for c in load_claims() if c.method == "depict" and c.metric == "nmi"]
    assert depict and all(c.nmi_normalisation == "geometric" for c in depict)


def test_duplicate_claims_rejected(tmp_path):
    head = HEADER.replace("method: cc", "method: kmeans")
    (tmp_path / "a.yaml").write_text(head + "  - {dataset: mnist, acc: 0.5}\n")
    (tmp_path / "b.yaml").write_text(head + "  - {dataset: mnist, acc: 0.6}\n")
    with pytest.raises(BenchError, match="duplicate claim"):
        load_claims(tmp_path)

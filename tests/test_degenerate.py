"""Degenerate results: the cluster-size profile, the rule, and where degenerate seeds show up."""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.metrics import DEGENERATE_RULE, cluster_profile
from bench.regress import degenerate_seeds
from bench.report import records_frame, summarize, write_report
from bench.runner import run_suite
from bench.suite import parse_suite

# USPS training set (usps.h5): images per class 0..9; the largest class holds 16.4%, the smallest 7.4%
USPS_TRAIN_COUNTS = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]


def labels_from_counts(counts) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_collapse_is_degenerate():
    y = labels_from_counts([100] * 10)
    prof = cluster_profile(np.zeros_like(y), 10, y)
    assert prof == {"n_clusters": 10, "n_nonempty": 1, "largest_share": 1.0, "size_entropy": 0.0,
                    "largest_class_share": 0.1, "degenerate": True}
    almost = np.where(np.arange(1000) < 960, 0, np.arange(1000) % 10)  # 96% in one cluster, all 10 non-empty
    prof = cluster_profile(almost, 10, y)
    assert prof["n_nonempty"] == 10 and prof["largest_share"] > 0.95 and prof["degenerate"]


def test_imbalanced_usps_clustered_perfectly_is_not_degenerate():
    y = labels_from_counts(USPS_TRAIN_COUNTS)
    prof = cluster_profile(y, 10, y)
    assert not prof["degenerate"] and prof["largest_share"] == pytest.approx(1194 / 7291, abs=1e-6)
    assert 0.97 < prof["size_entropy"] < 1.0
    # even a clustering that merges the two largest classes is a clustering, not a collapse
    merged = np.where(y == 1, 0, y)
    assert not cluster_profile(merged, 10, y)["degenerate"]
    # but one cluster holding more than half of USPS is
    half = np.where(np.isin(y, [0, 1, 2, 3, 4]), 0, y)
    assert cluster_profile(half, 10, y)["largest_share"] > 0.5 and cluster_profile(half, 10, y)["degenerate"]


def test_rule_scales_with_the_largest_class():
    y = labels_from_counts([600, 100, 100, 100, 100])  # a dataset whose largest class is 60%
    assert not cluster_profile(y, 5, y)["degenerate"]  # 60% < 90% (2 x 60%, bounded to [50%, 90%])
    assert cluster_profile(np.zeros_like(y), 5, y)["degenerate"]  # 1 of 5 clusters non-empty
    two = labels_from_counts([50, 50])
    assert cluster_profile(np.zeros_like(two), 2, two)["degenerate"]  # K = 2: one cluster is half of K, 100% > 90%
    assert not cluster_profile(np.where(np.arange(100) < 85, 0, 1), 2, two)["degenerate"]  # 85% is not


def test_fewer_than_half_the_clusters_is_degenerate():
    y = labels_from_counts([100] * 10)
    four = np.arange(1000) % 4
    five = np.arange(1000) % 5
    assert cluster_profile(four, 10, y)["degenerate"] and not cluster_profile(five, 10, y)["degenerate"]
    assert "fewer than half of the K clusters" in DEGENERATE_RULE


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=300), st.integers(1, 30))
def test_profile_is_always_in_range(pred, k):
    prof = cluster_profile(np.array(pred), k)
    assert 1 <= prof["n_nonempty"] <= len(pred)
    assert 1 / prof["n_nonempty"] - 1e-6 <= prof["largest_share"] <= 1.0
    assert 0.0 <= prof["size_entropy"] <= 1.0
    if prof["n_nonempty"] == 1 and k > 1:
        assert prof["degenerate"] and prof["size_entropy"] == 0.0


def test_records_carry_the_profile_and_tables_mark_degenerate_seeds(store, tmp_path):
    spec = parse_suite({"name": "deg", "seeds": [2, 3], "datasets": ["digits"],
                        "methods": ["test_collapse", {"name": "kmeans", "config": {"n_init": 1}}]})
    man = run_suite(spec, store=store, data_root=store.root, inline=True)
    recs = {(r.method, r.seed): r for r in store.run_records(man)}
    collapsed, fine = recs[("test_collapse", 3)], recs[("test_collapse", 2)]
    assert collapsed.ok and collapsed.degenerate is True and collapsed.cluster_profile["n_nonempty"] == 1
    assert fine.degenerate is False and fine.cluster_profile["n_nonempty"] == 10
    assert recs[("kmeans", 2)].degenerate is False and recs[("kmeans", 2)].cluster_profile["size_entropy"] > 0.9
    on_disk = json.loads(store.record_path(collapsed.key).read_text())
    assert on_disk["degenerate"] is True and on_disk["cluster_profile"]["largest_share"] == 1.0

    summary = summarize(records_frame(store.run_records(man))).set_index("row")
    assert summary.at["test_collapse", "n_degenerate"] == 1 and summary.at["k-means", "n_degenerate"] == 0
    paths = write_report(store.run_records(man), tmp_path / "rep", title="deg")
    md = paths["markdown"].read_text()
    assert "| 2 (1 degenerate ⚠) |" in md and "seed 3 (1 clusters non-empty, largest 100%)" in md
    assert "$^\\ddagger$" in paths["latex"].read_text()
    csv = paths["csv"].read_text().splitlines()
    assert "degenerate" in csv[0].split(",")


def test_audit_marks_degenerate_seeds(store):
    from bench.audit import audit, markdown
    from bench.claims import Claim

    spec = parse_suite({"name": "deg", "seeds": [2, 3], "datasets": ["digits"], "methods": ["test_collapse"]})
    man = run_suite(spec, store=store, data_root=store.root, inline=True)
    claim = Claim(paper="p", table="t", source="s", method="test_collapse", variant="default", dataset="digits",
                  metric="acc", value=0.5, report="mean")
    rows = audit([claim], store.run_records(man))
    assert rows[0].degenerate == [3] and "⚠ degenerate seed(s) 3" in markdown(rows)


def test_regress_flags_a_newly_degenerate_seed(tmp_path, capsys):
    store = tmp_path / "store"
    suite = tmp_path / "s.yaml"
    for seeds in ("[0, 1]", "[4, 5]", "[2, 3]"):  # seed 3 collapses in the latest run only
        suite.write_text(f"name: nightly-deg\nseeds: {seeds}\ndatasets: [digits]\nmethods: [test_collapse]\n")
        assert main(["run", str(suite), "--inline", "--store", str(store), "--no-report"]) == 0
        time.sleep(1.1)  # runs are ordered by their start time, stored to the second: keep the three apart
    capsys.readouterr()
    code = main(["regress", "nightly-deg", "--store", str(store), "--out", str(tmp_path / "out")])
    md = capsys.readouterr().out
    assert code == 1 and "1 with new degenerate seeds" in md
    assert "test_collapse [default] on digits: seed(s) 3 of 2 **new: REGRESSION**" in md
    # and an old degenerate seed in the history is not news
    con = sqlite3.connect(store / "history.db")
    con.row_factory = sqlite3.Row
    rows = list(con.execute("SELECT * FROM results"))
    latest = [r for r in rows if json.loads(r["record_json"])["seed"] in (2, 3)]
    hist = [("old", [r for r in rows if json.loads(r["record_json"])["seed"] in (2, 3)])]
    assert degenerate_seeds(latest, hist)[0]["flagged"] is False

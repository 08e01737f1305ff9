"""A report never overwrites good output with nothing, and its folder holds only the current report's files."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.report import OWNED_LIST, write_report
from bench.runner import run_suite
from bench.suite import parse_suite


def _records(store, methods, seeds=(0, 1)):
    spec = parse_suite({"name": "pub", "seeds": list(seeds), "datasets": ["digits"], "methods": methods})
    return store.run_records(run_suite(spec, store=store, data_root=store.root, inline=True))


def test_empty_selection_is_an_error_and_keeps_the_report(store, tmp_path):
    out = tmp_path / "rep"
    write_report(_records(store, ["test_first_pixel"]), out, title="good")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BenchError, match="nothing to report"):
        write_report([], out, title="empty")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_stale_files_of_an_earlier_report_go_and_a_persons_notes_stay(store, tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "NOTES.md").write_text("kept")
    (out / "curves.png").write_bytes(b"an old plot, written before reports listed their files")
    paths = write_report(_records(store, ["test_first_pixel"]), out, title="first")
    assert "curves" not in paths  # the fake method logs no eval curve
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([OWNED_LIST, "NOTES.md", "results.csv", "results.png", "summary.csv", "table.md",
                            "table.tex"]), names
    assert (out / "NOTES.md").read_text() == "kept" and "first" in (out / "table.md").read_text()
    assert not list(tmp_path.glob(".rep.staging-*"))  # the staging folder is gone


def test_bench_report_on_an_empty_run_and_audit_on_an_empty_store(tmp_path, capsys):
    store = tmp_path / "store"
    (store / "runs").mkdir(parents=True)
    (store / "runs" / "empty-run.json").write_text('{"run_id": "empty-run", "suite": "pub", "trials": [], '
                                                   '"started_at": "2026-01-01"}')
    out = tmp_path / "reports"
    (out / "pub").mkdir(parents=True)
    (out / "pub" / "table.md").write_text("good table")
    assert main(["report", "pub", "--store", str(store), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: nothing to report")
    assert (out / "pub" / "table.md").read_text() == "good table"
    (out / "audit").mkdir()
    (out / "audit" / "audit.md").write_text("good audit")
    assert main(["audit", "--store", str(store), "--out", str(out / "audit")]) == 2
    assert capsys.readouterr().err.startswith("error: nothing to audit")
    assert (out / "audit" / "audit.md").read_text() == "good audit"

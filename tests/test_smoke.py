"""suites/smoke.yaml: every registered method end to end on the bundled digits (tiny CPU configs)."""

from __future__ import annotations

from pathlib import Path

from bench.registry import get_method, method_names
from bench.runner import run_suite
from bench.stages import walk
from bench.store import ResultStore
from bench.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "suites" / "smoke.yaml"
TEST_ONLY = {"test_"}  # tests/plugins/fake_methods.py registers test-only methods; they are not the product's


def test_smoke_suite_lists_every_registered_method():
    suite = load_suite(SMOKE)
    listed = {m.name for m in suite.methods}
    product = {n for n in method_names() if not n.startswith(tuple(TEST_ONLY))}
    assert product - listed == set(), f"add these methods to suites/smoke.yaml: {sorted(product - listed)}"


def test_every_method_runs_to_an_ok_record_with_its_stages(tmp_path):
    suite = load_suite(SMOKE)
    store = ResultStore(tmp_path / "store")
    man = run_suite(suite, store=store, data_root=ROOT / "data", inline=True)
    recs = store.run_records(man)
    bad = {(r.method, r.variant): r.error for r in recs if not r.ok}
    assert not bad, f"smoke failures: {bad}"
    assert len(recs) == sum(len(m.variants) for m in suite.methods)
    for r in recs:
        assert r.protocol["max_images"] == 300 and r.cluster_profile["n_clusters"] == 10
        cls = get_method(r.method)
        declared = {req.stage for req in walk(cls.stages(cls.Config(**r.config)))}
        assert {u["name"] for u in r.stages} == declared  # every declared stage was read and recorded

"""Nightly regression rule: flags a real 3-point drop, stays quiet on noise (false-alarm rate measured)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bench.cli import main
from bench.regress import ALPHA, Series, evaluate, holm

FIXTURES = Path(__file__).parent / "fixtures"
N_SEEDS, N_NIGHTS, SD = 5, 7, 0.01  # 5 seeds, 7 previous nights, per-seed std 1 ACC point


def _night(rng, mean, n=N_SEEDS):
    return list(mean + rng.normal(0, SD, n))


def _suite(rng, drop=0.0):
    """Two methods x 3 correlated metrics, like the nightly suite; the latest night of dec drops by `drop`."""
    series = []
    for method, base in (("kmeans", 0.54), ("dec", 0.86)):
        hist = [_night(rng, base) for _ in range(N_NIGHTS)]
        latest = _night(rng, base - (drop if method == "dec" else 0.0))
        for m, shift in (("acc", 0.0), ("nmi", -0.03), ("ari", -0.07)):
            jitter = rng.normal(0, 0.003, N_SEEDS)
            series.append(Series((method, "default", "mnist"), m, list(np.array(latest) + shift + jitter),
                                 [list(np.array(h) + shift + rng.normal(0, 0.003, N_SEEDS)) for h in hist]))
    return series


def test_holm():
    adj = holm([0.01, 0.04, float("nan"), 0.03])
    assert adj[0] == 0.03 and adj[1] == 0.06 and adj[3] == 0.06 and np.isnan(adj[2])
    assert np.isnan(holm([float("nan")])[0])


def test_injected_3_point_drop_is_flagged():
    rng = np.random.default_rng(1)
    hits = wrong = 0
    for _ in range(200):
        comps = evaluate(_suite(rng, drop=0.03))
        acc = next(c for c in comps if c.method == "dec" and c.metric == "acc")
        hits += acc.flagged
        wrong += any(c.flagged for c in comps if c.method == "kmeans")  # unchanged method
    print(f"power for a 3-point drop (n=5, std 1 pt): {hits / 200:.3f}; unchanged method flagged: {wrong / 200:.3f}")
    assert hits / 200 >= 0.9  # measured 0.955 with this seed
    assert wrong / 200 <= ALPHA


def test_false_alarm_rate_on_pure_noise_is_below_alpha():
    rng = np.random.default_rng(2)
    reps = 1000
    alarms = significant = 0
    for _ in range(reps):
        comps = evaluate(_suite(rng, drop=0.0))
        alarms += any(c.flagged for c in comps)
        significant += any(c.significant for c in comps if c.kind == "quality")
    rate, sig_rate = alarms / reps, significant / reps
    print(f"false-alarm rate over {reps} pure-noise nights: {rate:.3f} (significance alone: {sig_rate:.3f}); "
          f"alpha = {ALPHA}")
    assert rate <= ALPHA
    assert sig_rate <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / reps)  # Holm keeps the family-wise level


def test_runtime_and_memory_need_both_significance_and_size():
    rng = np.random.default_rng(3)
    hist = [list(100 * rng.normal(1, 0.03, 5)) for _ in range(7)]
    slow = Series(("dec", "default", "mnist"), "wall_s", list(130 * rng.normal(1, 0.03, 5)), hist)
    slightly = Series(("dec", "default", "mnist"), "wall_s", list(105 * rng.normal(1, 0.03, 5)), hist)
    comps = evaluate([slow, slightly])
    assert comps[0].flagged and not comps[1].flagged and comps[1].significant


def test_cli_on_fixtures(tmp_path, capsys):
    for name, expected in (("nightly_clean", 0), ("nightly_drop", 1)):
        store = tmp_path / name
        shutil.copytree(FIXTURES / name, store, ignore=shutil.ignore_patterns("history.db*"))
        code = main(["regress", "nightly-fixture", "--store", str(store), "--out", str(tmp_path / "out" / name)])
        out = capsys.readouterr().out
        assert code == expected, out
        md = (tmp_path / "out" / name / "nightly-fixture" / "regress.md").read_text()
        assert ("**REGRESSION**" in md) == bool(expected)
        assert (tmp_path / "out" / name / "nightly-fixture" / "trend_acc.png").stat().st_size > 0
        if expected:
            flagged = [ln for ln in md.splitlines() if ln.endswith("**REGRESSION** |")]
            assert flagged and all(ln.startswith("| dec | mnist |") for ln in flagged)
        assert main(["history", "nightly-fixture", "--store", str(store)]) == 0
        assert capsys.readouterr().out.count("| nightly-fixture-") == 8


def test_new_failed_seeds_are_flagged_never_zeros():
    from bench.regress import build_series

    def row(run, seed, status="ok", acc=0.86):
        return {"run_id": run, "key": f"{run}-{seed}", "method": "dec", "variant": "default", "dataset": "mnist",
                "config_hash": "c", "protocol_hash": "p", "status": status, "error": None if status == "ok" else "nan",
                "acc": acc if status == "ok" else None, "nmi": 0.8, "ari": 0.7, "wall_s": 10.0, "cpu": "x", "gpu": None,
                "peak_gpu_mem_mb": None, "peak_rss_mb": 100.0}

    history_runs = [(f"r{i}", [row(f"r{i}", s) for s in range(5)]) for i in range(3)]
    latest = [row("new", s) for s in range(4)] + [row("new", 4, status="failed")]
    series, failures = build_series(latest, history_runs)
    assert failures and failures[0]["flagged"] and failures[0]["n_failed"] == 1
    acc = next(s for s in series if s.metric == "acc")
    assert len(acc.latest) == 4 and 0.0 not in acc.latest  # the failed seed is excluded, not a zero

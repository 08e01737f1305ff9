"""``bench regress SUITE``: did the latest run of a suite get worse than its history?

Rule (stated in every report). Per (method, variant, dataset, config, protocol) and metric:

* **Quality** (ACC, NMI, ARI): a drop is flagged only when BOTH
  1. it is statistically significant: Welch's one-sided t-test, latest seeds vs. the pooled seeds of
     the previous runs (up to ``window`` runs; a record reused by several runs counts once),
     H1: latest mean < history mean, with Holm's step-down correction over every quality comparison
     of the night, family-wise alpha = 0.05. So on a night where nothing changed, the chance that the
     significance condition fires anywhere in the suite is at most 5%, whatever the suite's size;
  2. it is practically large: drop > max(1 point, 2 x the std of the historical per-run means).
     The 1-point floor ignores changes nobody would act on (a deterministic method has std 0, where
     any difference is "significant"). The 2-sd term is the night-to-night noise that pooled seeds do
     not show (driver, library or hardware drift between nights, which made TorchBench's nightly bot
     fire on noise until its thresholds were raised): a drop must stand out from how the nightly means
     have actually moved.
* **Runtime** (mean wall seconds per seed) and **peak memory** (GPU if recorded, else host RSS): flagged
  when Welch's one-sided test (on log seconds for runtime) is significant (Holm, family-wise 0.05, a
  separate family) AND the increase is > 15% AND > 1 s (runtime) or > 64 MB (memory). Only runs on the
  same hardware (CPU and GPU model) are compared.
* **Failures**: seeds that failed or were interrupted in the latest run, where none of the previous runs
  in the window had any for that group, are flagged (they are never counted as zeros).
* **Degenerate seeds** (bench.metrics.DEGENERATE_RULE: a collapsed clustering): ok seeds of the latest run
  flagged degenerate, where none of the previous runs in the window had a degenerate seed for that group,
  are flagged.

Fewer than 2 seeds on either side, or no previous run: "insufficient history", never flagged.
Exit status 1 when anything is flagged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError

ALPHA = 0.05
PRACTICAL_DROP = 0.01
K_BETWEEN = 2.0
RUNTIME_REL, RUNTIME_ABS_S = 0.15, 1.0
MEMORY_REL, MEMORY_ABS_MB = 0.15, 64.0
WINDOW = 30
QUALITY = ("acc", "nmi", "ari")

RULES_TEXT = (
    f"Quality (ACC/NMI/ARI): flagged when Welch's one-sided t-test (latest seeds vs. pooled seeds of up to "
    f"{WINDOW} previous runs) is significant after Holm's correction over all quality comparisons "
    f"(family-wise alpha = {ALPHA}) AND the drop exceeds max({PRACTICAL_DROP * 100:.0f} point, "
    f"{K_BETWEEN:g} x std of the historical per-run means). Runtime / peak memory: Welch one-sided "
    f"(Holm, alpha = {ALPHA}) AND more than {RUNTIME_REL:.0%} and {RUNTIME_ABS_S:g} s slower / "
    f"{MEMORY_REL:.0%} and {MEMORY_ABS_MB:g} MB more, same hardware only. New failed or interrupted seeds "
    f"are flagged, and so are new degenerate seeds (collapsed clusterings). Fewer than 2 seeds or no history: "
    f"not tested.")


@dataclass
class Series:
    """One metric of one group: the latest run's seed values and each previous run's seed values."""

    group: tuple[str, str, str]  # method, variant, dataset
    metric: str  # acc | nmi | ari | wall_s | peak_mem_mb
    latest: list[float]
    history: list[list[float]]  # one list per previous run, oldest first
    history_runs: list[str] = field(default_factory=list)
    latest_failed: int = 0
    history_failed: int = 0


@dataclass
class Comparison:
    method: str
    variant: str
    dataset: str
    metric: str
    kind: str
    n_latest: int
    latest_mean: float
    latest_std: float
    n_history: int
    n_history_runs: int
    history_mean: float
    history_run_sd: float
    change: float  # quality: drop (history - latest, positive = worse); resources: relative increase
    threshold: float
    p: float
    p_adj: float = float("nan")
    significant: bool = False
    flagged: bool = False
    note: str = ""


def _welch_p(latest: np.ndarray, hist: np.ndarray, alternative: str) -> float:
    from scipy import stats

    if len(latest) < 2 or len(hist) < 2:
        return float("nan")
    if np.var(latest) == 0 and np.var(hist) == 0:  # deterministic: the difference is certain
        diff = latest.mean() - hist.mean()
        worse = diff < 0 if alternative == "less" else diff > 0
        return 0.0 if worse and not np.isclose(diff, 0, atol=1e-12) else 1.0
    return float(stats.ttest_ind(latest, hist, equal_var=False, alternative=alternative).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def _compare(s: Series) -> Comparison:
    lat = np.asarray(s.latest, float)
    runs = [np.asarray(h, float) for h in s.history if len(h)]
    hist = np.concatenate(runs) if runs else np.array([])
    run_means = np.array([r.mean() for r in runs])
    method, variant, dataset = s.group
    kind = "quality" if s.metric in QUALITY else ("runtime" if s.metric == "wall_s" else "memory")
    c = Comparison(method, variant, dataset, s.metric, kind, len(lat), lat.mean() if len(lat) else np.nan,
                   lat.std(ddof=1) if len(lat) > 1 else np.nan, len(hist), len(runs),
                   hist.mean() if len(hist) else np.nan, run_means.std(ddof=1) if len(runs) > 1 else 0.0,
                   np.nan, np.nan, np.nan)
    if len(lat) < 2 or len(hist) < 2:
        c.note = "insufficient history" if len(hist) < 2 else "fewer than 2 latest seeds"
        return c
    if kind == "quality":
        c.change = c.history_mean - c.latest_mean
        c.threshold = max(PRACTICAL_DROP, K_BETWEEN * c.history_run_sd)
        c.p = _welch_p(lat, hist, "less")
    elif kind == "runtime":
        c.change = c.latest_mean / c.history_mean - 1 if c.history_mean > 0 else np.nan
        c.threshold = RUNTIME_REL
        c.p = _welch_p(np.log(np.maximum(lat, 1e-6)), np.log(np.maximum(hist, 1e-6)), "greater")
    else:
        c.change = c.latest_mean / c.history_mean - 1 if c.history_mean > 0 else np.nan
        c.threshold = MEMORY_REL
        c.p = _welch_p(lat, hist, "greater")
    return c


def evaluate(series: list[Series], alpha: float = ALPHA) -> list[Comparison]:
    """Apply the rule (module docstring) to every series; Holm per family (quality, resources)."""
    comps = [_compare(s) for s in series]
    for fam in (("quality",), ("runtime", "memory")):
        members = [c for c in comps if c.kind in fam]
        for c, padj in zip(members, holm([c.p for c in members]), strict=False):
            c.p_adj = padj
            c.significant = bool(not math.isnan(padj) and padj < alpha)
            if not c.significant:
                continue
            if c.kind == "quality":
                c.flagged = c.change > c.threshold
            elif c.kind == "runtime":
                c.flagged = c.change > RUNTIME_REL and (c.latest_mean - c.history_mean) > RUNTIME_ABS_S
            else:
                c.flagged = c.change > MEMORY_REL and (c.latest_mean - c.history_mean) > MEMORY_ABS_MB
            if c.significant and not c.flagged:
                c.note = "significant but below the practical threshold"
    return comps


# -- from the history database ------------------------------------------------------------------------
def _group_rows(rows) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for r in rows:
        out.setdefault((r["method"], r["variant"], r["dataset"], r["config_hash"], r["protocol_hash"]), []).append(r)
    return out


def build_series(latest_rows, history_runs: list[tuple[str, list]]) -> tuple[list[Series], list[dict[str, Any]]]:
    """Series per group and metric, plus one 'failures' entry per group with new failed seeds."""
    latest_groups = _group_rows(latest_rows)
    hist_groups = [(rid, _group_rows(rows)) for rid, rows in history_runs]
    series: list[Series] = []
    failures = []
    for gkey, rows in latest_groups.items():
        ok = [r for r in rows if r["status"] == "ok"]
        n_failed = len(rows) - len(ok)
        seen: set[str] = set()
        per_run: list[tuple[str, list]] = []
        hist_failed = 0
        for rid, groups in hist_groups:
            hrows = [r for r in groups.get(gkey, []) if r["key"] not in seen]
            seen.update(r["key"] for r in hrows)
            hist_failed += sum(r["status"] != "ok" for r in hrows)
            per_run.append((rid, [r for r in hrows if r["status"] == "ok"]))
        per_run = [(rid, rs) for rid, rs in per_run if rs]
        group = gkey[:3]
        if n_failed:
            failures.append({"method": group[0], "variant": group[1], "dataset": group[2], "n_failed": n_failed,
                             "n": len(rows), "history_failed": hist_failed, "flagged": hist_failed == 0 and
                             bool(per_run), "errors": sorted({str(r["error"]) for r in rows if r["status"] != "ok"})})
        for m in QUALITY:
            series.append(Series(group, m, [r[m] for r in ok if r[m] is not None],
                                 [[r[m] for r in rs if r[m] is not None] for _, rs in per_run],
                                 [rid for rid, _ in per_run], n_failed, hist_failed))
        hw = {(r["cpu"], r["gpu"]) for r in ok}
        same_hw = [(rid, [r for r in rs if (r["cpu"], r["gpu"]) in hw]) for rid, rs in per_run]
        same_hw = [(rid, rs) for rid, rs in same_hw if rs]
        series.append(Series(group, "wall_s", [r["wall_s"] for r in ok if r["wall_s"] is not None],
                             [[r["wall_s"] for r in rs if r["wall_s"] is not None] for _, rs in same_hw],
                             [rid for rid, _ in same_hw]))
        mem_col = "peak_gpu_mem_mb" if any(r["peak_gpu_mem_mb"] is not None for r in ok) else "peak_rss_mb"
        series.append(Series(group, "peak_mem_mb", [r[mem_col] for r in ok if r[mem_col] is not None],
                             [[r[mem_col] for r in rs if r[mem_col] is not None] for _, rs in same_hw],
                             [rid for rid, _ in same_hw]))
    return series, failures


def _is_degenerate(row) -> bool:
    """The record's flag (bench.metrics.DEGENERATE_RULE); False for records from before the flag existed."""
    try:
        return bool(json.loads(row["record_json"] or "{}").get("degenerate"))
    except (ValueError, TypeError, AttributeError):
        return False


def degenerate_seeds(latest_rows, history_runs: list[tuple[str, list]]) -> list[dict[str, Any]]:
    """One entry per group whose latest run has degenerate ok seeds; ``flagged`` when the group has history and
    none of its previous runs had a degenerate seed (a newly collapsing method is a regression)."""
    hist_groups = [_group_rows(rows) for _, rows in history_runs]
    out = []
    for gkey, rows in _group_rows(latest_rows).items():
        bad = sorted(r["seed"] for r in rows if r["status"] == "ok" and _is_degenerate(r))
        if not bad:
            continue
        seen: set[str] = set()
        hist_ok = hist_bad = 0
        for groups in hist_groups:
            hrows = [r for r in groups.get(gkey, []) if r["key"] not in seen and r["status"] == "ok"]
            seen.update(r["key"] for r in hrows)
            hist_ok += len(hrows)
            hist_bad += sum(_is_degenerate(r) for r in hrows)
        out.append({"method": gkey[0], "variant": gkey[1], "dataset": gkey[2], "seeds": bad,
                    "n": sum(r["status"] == "ok" for r in rows), "history_degenerate": hist_bad,
                    "flagged": hist_bad == 0 and hist_ok > 0})
    return out


def regress_suite(store, suite: str, *, out_dir: Path, db_path: str | Path | None = None, window: int = WINDOW,
                  alpha: float = ALPHA) -> tuple[int, str]:
    """Compare the latest finished run of ``suite`` with its history. Returns (exit code, Markdown)."""
    from bench import history as hist

    hist.sync(store, db_path)
    con = hist.connect(db_path or hist.default_db_path(store))
    try:
        runs = [r for r in hist.runs(con, suite) if r["status"] in ("finished", "interrupted")]
        if not runs:
            raise BenchError(f"no finished run of suite {suite!r} in {store.root}; run `bench run` on the suite "
                             f"first (`bench history` lists what is stored)")
        latest, previous = runs[-1], runs[:-1][-window:]
        latest_rows = hist.results(con, [latest["run_id"]])
        prev_rows = hist.results(con, [r["run_id"] for r in previous])
    finally:
        con.close()
    by_run: dict[str, list] = {}
    for r in prev_rows:
        by_run.setdefault(r["run_id"], []).append(r)
    history_runs = [(r["run_id"], by_run.get(r["run_id"], [])) for r in previous]
    series, failures = build_series(latest_rows, history_runs)
    degenerate = degenerate_seeds(latest_rows, history_runs)
    comps = evaluate(series, alpha)
    flagged = [c for c in comps if c.flagged] + [f for f in failures + degenerate if f["flagged"]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_trends(latest, previous, latest_rows, prev_rows, comps, out_dir)
    md = render_markdown(suite, latest, previous, comps, failures, plots, degenerate)
    (out_dir / "regress.md").write_text(md)
    (out_dir / "regress.json").write_text(json.dumps({
        "suite": suite, "latest_run": latest["run_id"], "previous_runs": [r["run_id"] for r in previous],
        "regression": bool(flagged), "rules": RULES_TEXT, "comparisons": [asdict(c) for c in comps],
        "failures": failures, "degenerate": degenerate}, indent=1, default=float))
    return (1 if flagged else 0), md


def _fmt(c: Comparison) -> list[str]:
    if c.kind == "quality":
        lat = f"{100 * c.latest_mean:.2f} ± {100 * c.latest_std:.2f}" if c.n_latest > 1 else \
            ("–" if not c.n_latest else f"{100 * c.latest_mean:.2f}")
        his = "–" if not c.n_history else f"{100 * c.history_mean:.2f} (run sd {100 * c.history_run_sd:.2f})"
        chg = "–" if math.isnan(c.change) else f"{-100 * c.change:+.2f} pt"
        thr = "–" if math.isnan(c.threshold) else f"> {100 * c.threshold:.2f} pt drop"
    else:
        unit = "s" if c.kind == "runtime" else "MB"
        lat = "–" if not c.n_latest else f"{c.latest_mean:,.1f} {unit}"
        his = "–" if not c.n_history else f"{c.history_mean:,.1f} {unit}"
        chg = "–" if math.isnan(c.change) else f"{100 * c.change:+.1f}%"
        thr = f"> {100 * c.threshold:.0f}%" if not math.isnan(c.threshold) else "–"
    p = "–" if math.isnan(c.p_adj) else f"{c.p_adj:.2g}"
    verdict = "**REGRESSION**" if c.flagged else (c.note or "ok")
    label = c.method + ("" if c.variant == "default" else f" [{c.variant}]")
    return [label, c.dataset, c.metric, f"{lat} (n={c.n_latest})", f"{his} (n={c.n_history}, {c.n_history_runs} runs)",
            chg, thr, p, verdict]


def render_markdown(suite, latest, previous, comps, failures, plots, degenerate=()) -> str:
    flagged = [c for c in comps if c.flagged]
    new_fail = [f for f in failures if f["flagged"]]
    new_degen = [d for d in degenerate if d["flagged"]]
    status = (f"**REGRESSION**: {len(flagged)} metric(s), {len(new_fail)} group(s) with new failures and "
              f"{len(new_degen)} with new degenerate seeds" if flagged or new_fail or new_degen
              else "**OK**: no regression")
    lines = [f"# Regression check: suite `{suite}`", "", status, "",
             f"Latest run `{latest['run_id']}` (started {latest['started_at']}, code `{latest['code_version']}`) "
             f"against {len(previous)} previous run(s).", "", f"Rule: {RULES_TEXT}", "",
             "| method | dataset | metric | latest mean ± sd | history mean | change | flag if | Holm p | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(comps, key=lambda c: (not c.flagged, c.kind != "quality", c.method, c.variant, c.dataset))
    for c in order:
        lines.append("| " + " | ".join(_fmt(c)) + " |")
    if failures:
        lines += ["", "Failed or interrupted seeds in the latest run (excluded from means, never zeros):", ""]
        for f in failures:
            tag = " **new: REGRESSION**" if f["flagged"] else ""
            lines.append(f"- {f['method']} [{f['variant']}] on {f['dataset']}: {f['n_failed']} of {f['n']} seeds"
                         f"{tag}; {'; '.join(f['errors'])}")
    if degenerate:
        lines += ["", "Degenerate seeds in the latest run (collapsed clusterings; see the rule in the records' "
                  "docs):", ""]
        for d in degenerate:
            tag = " **new: REGRESSION**" if d["flagged"] else f" (history had {d['history_degenerate']})"
            lines.append(f"- {d['method']} [{d['variant']}] on {d['dataset']}: seed(s) "
                         f"{', '.join(map(str, d['seeds']))} of {d['n']}{tag}")
    if plots:
        lines += ["", "Trends: " + ", ".join(f"[{p.name}]({p.name})" for p in plots)]
    return "\n".join(lines) + "\n"


def plot_trends(latest, previous, latest_rows, prev_rows, comps, out_dir: Path) -> list[Path]:
    """One figure per metric: per group, each run's seeds (dots) and mean (line), latest run last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [r["run_id"] for r in previous] + [latest["run_id"]]
    pos = {rid: i for i, rid in enumerate(order)}
    rows = [r for r in [*prev_rows, *latest_rows] if r["status"] == "ok"]
    groups = sorted({(r["method"], r["variant"], r["dataset"]) for r in latest_rows})
    flagged = {(c.method, c.variant, c.dataset, c.metric) for c in comps if c.flagged}
    paths = []
    for metric, col, scale, unit in (("acc", "acc", 100, "%"), ("nmi", "nmi", 100, "%"), ("ari", "ari", 100, "%"),
                                     ("wall_s", "wall_s", 1, "s"), ("peak_mem_mb", None, 1, "MB")):
        fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.2 * max(1, len(groups)), 3.2), squeeze=False)
        for ax, g in zip(axes[0], groups, strict=False):
            grows = [r for r in rows if (r["method"], r["variant"], r["dataset"]) == g]
            c = col or ("peak_gpu_mem_mb" if any(r["peak_gpu_mem_mb"] is not None for r in grows) else "peak_rss_mb")
            pts = [(pos[r["run_id"]], r[c] * scale) for r in grows if r[c] is not None and r["run_id"] in pos]
            if not pts:
                ax.set_title(f"{g[0]} on {g[2]}: no data")
                continue
            xs, ys = zip(*pts, strict=False)
            ax.scatter(xs, ys, s=10, alpha=0.5, color="tab:blue")
            means = sorted({x: np.mean([y for xx, y in pts if xx == x]) for x in xs}.items())
            ax.plot(*zip(*means, strict=False), marker="o", color="tab:blue", lw=1)
            bad = (g[0], g[1], g[2], metric) in flagged
            ax.scatter([means[-1][0]], [means[-1][1]], s=60, color="red" if bad else "green", zorder=3,
                       label="latest: REGRESSION" if bad else "latest")
            label = g[0] + ("" if g[1] == "default" else f" [{g[1]}]")
            ax.set_title(f"{label} on {g[2]}", fontsize=9)
            ax.set_xlabel("run (oldest → latest)")
            ax.set_ylabel(f"{metric} ({unit})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"trend_{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths

"""``bench audit``: every claim of the registry against the reproduced results of the same protocol.

Matching. A claim (method, variant, dataset) is compared only with records of the same method, variant
and dataset whose ``protocol`` agrees on every field the claim states (bench.claims). Records that
differ on a stated field are never compared: the row says "protocol mismatch: <field> claim X vs run
Y" and shows their numbers separately. When several (config, protocol) pairs match, the one with the most finished
seeds is used (ties: the newest); per seed the newest record counts. Failed or interrupted seeds are
listed and excluded, never counted as zeros.

Verdict rule (stated in every output), tolerance = 1 point (0.01), alpha = 0.05:

* mean / single claims: one-sample t-test of the seeds against the claimed value (Welch's two-sample
  test when the claim states its std and number of runs). "below claim" when the one-sided test rejects
  H0: mean >= claim at alpha AND delta < -tolerance; "above claim" symmetrically; otherwise
  "consistent" (the difference is either not significant or within the tolerance).
* best-of-n claims: the reproduced best seed is compared. With the seeds' mean m and std s, the chance
  that the best of N runs (N = the paper's number of runs, else ours) reaches the claim is
  p = 1 - Phi((claim - m) / s)^N. "below claim" when p < alpha AND best < claim - tolerance; "above
  claim" when best > claim + tolerance; otherwise "consistent".
* fewer than 2 finished seeds: "insufficient seeds" (the raw value is shown, no verdict).

"Best" is the best seed by ACC, with that seed's NMI and ARI (a paper's best run is one run, not
the maximum of each metric over different runs). NMI claims are compared with the record's NMI of
the claim's normalisation (``nmi_geometric`` or the arithmetic ``nmi``, bench.claims); the metric
column says which. Records written before ``nmi_geometric`` was stored cannot be compared with a
geometric claim: the row is shown as a mismatch with their arithmetic numbers, never judged.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.claims import Claim
from bench.metrics import DEGENERATE_RULE
from bench.records import ResultRecord

ALPHA = 0.05
TOLERANCE = 0.01
SYNTHETIC_HOST = "synthetic-fixture"

RULE_TEXT = (
    f"Verdicts: mean/single claims use a one-sample t-test of the reproduced seeds against the claim "
    f"(Welch's test when the paper gives std and n); 'below claim' = one-sided test rejects mean >= claim "
    f"at alpha = {ALPHA} AND delta < -{TOLERANCE * 100:.0f} point; 'above claim' symmetrically; otherwise "
    f"'consistent'. Best-of-n claims compare the best reproduced seed; 'below claim' when the chance that "
    f"the best of N normal draws (seeds' mean and std) reaches the claim is < {ALPHA} AND best < claim - "
    f"{TOLERANCE * 100:.0f} point. Fewer than 2 finished seeds: 'insufficient seeds'. Protocol mismatches "
    f"are shown, never judged. Failed or interrupted seeds are excluded and listed. 'Best' = the best seed by ACC, "
    f"with that seed's NMI/ARI. NMI is compared in the paper's normalisation (geometric = scikit-learn < 0.22, "
    f"arithmetic = >= 0.22; the metric column says which; 'not stated' is compared as arithmetic).")


@dataclass
class AuditRow:
    claim: Claim
    status: str  # compared | mismatch | no results
    verdict: str
    n: int = 0
    mean: float = float("nan")
    std: float = float("nan")
    best: float = float("nan")  # the metric of the best seed by ACC
    best_seed: int | None = None
    reproduced: float = float("nan")  # the number compared: mean, or best for best-of-n claims
    delta: float = float("nan")
    p: float = float("nan")
    seeds: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "seed 3: failed (NaN loss)"
    degenerate: list[int] = field(default_factory=list)  # ok seeds flagged by bench.metrics.DEGENERATE_RULE
    mismatch: str = ""
    synthetic: bool = False
    curve_keys: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)  # the runs whose records the verdict used
    code_versions: list[str] = field(default_factory=list)


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return v.strip().lower()
    return v


def protocol_mismatch(claim: Claim, protocol: dict[str, Any]) -> str:
    """'' when the record's protocol agrees with every field the claim states, else the first difference."""
    for k, v in claim.compared_protocol.items():
        got = protocol.get(k)
        if got is None:
            return f"{k} claim {v} vs run (not recorded)"
        if _norm(got) != _norm(v):
            return f"{k} claim {v} vs run {got}"
    return ""


def _pick(records: list[ResultRecord]) -> list[ResultRecord]:
    """Records of one (config, protocol): the one with the most ok seeds (ties: newest), newest record per seed."""
    from bench.context import stable_hash

    by_cfg: dict[str, list[ResultRecord]] = {}
    for r in records:
        by_cfg.setdefault(stable_hash({"config": r.config, "protocol": r.protocol}, 12), []).append(r)

    def newest(rs):
        return max(r.finished_at for r in rs)

    # finished *seeds*, not records: two suites that re-ran the same config and seeds must not outvote a
    # newer config with as many seeds
    best = max(by_cfg.values(), key=lambda rs: (len({r.seed for r in rs if r.ok}), newest(rs)))
    per_seed: dict[int, ResultRecord] = {}
    for r in sorted(best, key=lambda r: (r.ok, r.finished_at)):
        per_seed[r.seed] = r  # ok and newer records win
    return sorted(per_seed.values(), key=lambda r: r.seed)


def verdict(claim: Claim, values: np.ndarray, best: float | None = None) -> tuple[str, float, float, float]:
    """(verdict, reproduced value compared, delta, p) by the rule in the module docstring.

    ``best``: the value of the best seed by ACC (best-of-n claims); default the largest value."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return "no finished seeds", math.nan, math.nan, math.nan
    mean = float(values.mean())
    best = float(values.max()) if best is None else float(best)
    if claim.report == "best":
        reproduced, delta = best, best - claim.value
        if n < 2:
            return "insufficient seeds", reproduced, delta, math.nan
        s = float(values.std(ddof=1))
        n_runs = claim.n_runs or n
        if s == 0:
            p = 1.0 if best >= claim.value else 0.0
        else:
            p = 1.0 - stats.norm.cdf((claim.value - mean) / s) ** n_runs
        if p < ALPHA and delta < -TOLERANCE:
            return "below claim", reproduced, delta, p
        if delta > TOLERANCE:
            return "above claim", reproduced, delta, p
        return "consistent", reproduced, delta, p
    reproduced, delta = mean, mean - claim.value
    if n < 2:
        return "insufficient seeds", reproduced, delta, math.nan
    s = float(values.std(ddof=1))
    if claim.std is not None and claim.n_runs and claim.n_runs >= 2:
        se2 = s * s / n + claim.std ** 2 / claim.n_runs
        df = se2 ** 2 / ((s * s / n) ** 2 / (n - 1) + (claim.std ** 2 / claim.n_runs) ** 2 / (claim.n_runs - 1)) \
            if se2 > 0 else 1.0
    else:
        se2, df = s * s / n, n - 1
    if se2 == 0:
        p_below = 0.0 if delta < 0 else 1.0
        p_above = 0.0 if delta > 0 else 1.0
    else:
        t = delta / math.sqrt(se2)
        p_below, p_above = float(stats.t.cdf(t, df)), float(stats.t.sf(t, df))
    if p_below < ALPHA and delta < -TOLERANCE:
        return "below claim", reproduced, delta, p_below
    if p_above < ALPHA and delta > TOLERANCE:
        return "above claim", reproduced, delta, p_above
    return "consistent", reproduced, delta, min(p_below, p_above)


def audit(claims: list[Claim], records: list[ResultRecord]) -> list[AuditRow]:
    groups: dict[tuple[str, str, str], list[ResultRecord]] = {}
    for r in records:
        groups.setdefault((r.method, r.variant, r.dataset), []).append(r)
    rows = []
    for c in claims:
        cand = groups.get((c.method, c.variant, c.dataset), [])
        if not cand:
            rows.append(AuditRow(c, "no results", "no results"))
            continue
        matched = [r for r in cand if not protocol_mismatch(c, r.protocol)]
        use = _pick(matched or cand)
        key = c.record_metric
        ok = [r for r in use if r.ok and key in r.metrics]
        convention_gap = ""
        if not ok and key != c.metric and any(r.ok and c.metric in r.metrics for r in use):
            # records older than nmi_geometric: show their arithmetic NMI, never judge it
            convention_gap = f"nmi normalisation: claim {c.nmi_normalisation} vs run arithmetic only"
            key, ok = c.metric, [r for r in use if r.ok and c.metric in r.metrics]
        vals = np.array([r.metrics[key] for r in ok], float)
        top = max(ok, key=lambda r: (r.metrics.get("acc", -math.inf), -r.seed)) if ok else None
        row = AuditRow(c, "compared" if matched and not convention_gap else "mismatch", "", n=len(vals),
                       mean=float(vals.mean()) if len(vals) else math.nan,
                       std=float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
                       best=float(top.metrics[key]) if top else math.nan, best_seed=top.seed if top else None,
                       seeds=[r.seed for r in ok],
                       failed=[f"seed {r.seed}: {r.status}" + (f" ({r.error})" if r.error else "")
                               for r in use if not r.ok],
                       degenerate=sorted(r.seed for r in ok if r.degenerate),
                       synthetic=any((r.env or {}).get("hostname") == SYNTHETIC_HOST for r in use),
                       curve_keys=[r.key for r in use if r.curve],
                       run_ids=sorted({r.run_id for r in ok if r.run_id}),
                       code_versions=sorted({str((r.env or {}).get("code_version")) for r in ok
                                             if (r.env or {}).get("code_version")}))
        if not matched or convention_gap:
            if matched:
                row.mismatch = convention_gap
            else:
                closest = min(cand, key=lambda r: sum(_norm(r.protocol.get(k)) != _norm(v)
                                                      for k, v in c.compared_protocol.items()))
                row.mismatch = protocol_mismatch(c, closest.protocol)
            row.verdict = f"protocol mismatch: {row.mismatch}"
            row.reproduced = row.best if c.report == "best" else row.mean
        else:
            row.verdict, row.reproduced, row.delta, row.p = verdict(c, vals, row.best)
        rows.append(row)
    return rows


# -- output -------------------------------------------------------------------------------------------
def _pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _short(paper: str, width: int = 48) -> str:
    return paper if len(paper) <= width else paper[:width - 1] + "…"


def _label(c: Claim) -> str:
    return c.method + ("" if c.variant == "default" else f" [{c.variant}]")


def _claim_text(c: Claim) -> str:
    txt = _pct(c.value) + (f" ± {_pct(c.std)}" if c.std is not None else "")
    kind = {"mean": f"mean{'/' + str(c.n_runs) if c.n_runs else ''}",
            "best": f"best{' of ' + str(c.n_runs) if c.n_runs else ''}", "single": "single"}[c.report]
    return f"{txt} ({kind}){'' if c.verified else ' †'}"


def _repro_text(r: AuditRow) -> str:
    if r.status == "no results" or r.n == 0:
        return "–"
    txt = f"{_pct(r.mean)} ± {_pct(r.std)}" if r.n > 1 else _pct(r.mean)
    if r.claim.report == "best":
        txt += f", best {_pct(r.best)} (seed {r.best_seed}, best by ACC)"
    return txt


def _compared_text(r: AuditRow) -> str:
    if r.status != "compared" or math.isnan(r.reproduced):
        return "–"
    what = f"best seed ({r.best_seed}) by ACC" if r.claim.report == "best" else "mean"
    return f"{_pct(r.reproduced)} ({what})"


def _used_text(r: AuditRow) -> str:
    """Which records the verdict used: n seeds, the runs that wrote them, their code version(s)."""
    if not r.run_ids:
        return "–"
    return f"{r.n} seed(s) from {', '.join(r.run_ids)}; code {', '.join(r.code_versions) or '?'}"


def markdown(rows: list[AuditRow], *, only_with_results: bool = True) -> str:
    shown = [r for r in rows if r.status != "no results"] if only_with_results else rows
    n_synth = sum(r.synthetic for r in shown)
    out = []
    if n_synth:
        out += [f"**WARNING: {n_synth} row(s) use records labelled as synthetic fixtures "
                f"(env.hostname = {SYNTHETIC_HOST}); they are test data, not reproduced results.**", ""]
    out += [f"Rule: {RULE_TEXT}", "", "† = value from a secondary transcription, not verified against the paper.",
            f"⚠ degenerate = {DEGENERATE_RULE}; such seeds stay in the numbers (they are what the method produced).",
            "", "| method | dataset | metric | paper, table | claimed | reproduced (n seeds) | compared | Δ (pt) | p | "
                "verdict | records used | failed seeds |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in shown:
        c = r.claim
        delta = "–" if math.isnan(r.delta) else f"{100 * r.delta:+.1f}"
        p = "–" if math.isnan(r.p) else f"{r.p:.2g}"
        repro = _repro_text(r) + (f" (n={r.n})" if r.status != "no results" else "")
        if r.status == "mismatch":
            repro = f"[not compared] {repro}"
        if r.degenerate:
            repro += f" ⚠ degenerate seed(s) {', '.join(map(str, r.degenerate))}"
        out.append(f"| {_label(c)}{' — ' + c.label if c.label else ''} | {c.dataset} | {c.metric_label} | "
                   f"{_short(c.paper)}, {c.table} | {_claim_text(c)} | {repro} | {_compared_text(r)} | {delta} | {p} | "
                   f"{r.verdict} | {_used_text(r)} | {'; '.join(r.failed) or '–'} |")
    counts: dict[str, int] = {}
    for r in rows:
        key = r.verdict.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    out += ["", f"{len(rows)} claims: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
    return "\n".join(out)


def latex(rows: list[AuditRow]) -> str:
    """booktabs, one table per dataset: rows method [variant] / report kind, columns ACC NMI ARI with
    the paper's and our number; the best reproduced value per column in bold. Mismatched protocols and
    missing results print '--' in the 'ours' column."""
    from bench.report import _tex

    shown = [r for r in rows if r.status != "no results"]
    out = []
    for ds in dict.fromkeys(r.claim.dataset for r in shown):
        sub = [r for r in shown if r.claim.dataset == ds]
        metrics = [m for m in ("acc", "nmi", "ari") if any(r.claim.metric == m for r in sub)]
        keys = list(dict.fromkeys((_label(r.claim), r.claim.label or r.claim.report) for r in sub))
        best = {m: max([r.reproduced for r in sub if r.claim.metric == m and r.status == "compared"
                        and not math.isnan(r.reproduced)], default=math.nan) for m in metrics}
        out += ["\\begin{table}[t]", "\\centering", "\\begin{tabular}{ll" + "cc" * len(metrics) + "}", "\\toprule",
                " & & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{m.upper()}}}" for m in metrics) + " \\\\",
                "".join(f"\\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(len(metrics))),
                "Method & Row & " + " & ".join("Paper & Ours" for _ in metrics) + " \\\\", "\\midrule"]
        for lab, kind in keys:
            cells = []
            for m in metrics:
                r = next((r for r in sub if (_label(r.claim), r.claim.label or r.claim.report) == (lab, kind)
                          and r.claim.metric == m), None)
                if r is None:
                    cells += ["--", "--"]
                    continue
                paper = _pct(r.claim.value) + ("" if r.claim.verified else "$^\\dagger$")
                if r.status != "compared" or math.isnan(r.reproduced):
                    ours = "--"
                else:
                    ours = _pct(r.reproduced) + ("" if math.isnan(r.std) or r.claim.report == "best"
                                                 else f"$\\pm${_pct(r.std)}")
                    if np.isclose(r.reproduced, best[m]):
                        ours = f"\\textbf{{{ours}}}"
                cells += [paper, ours]
            out.append(f"{_tex(lab)} & {_tex(kind)} & " + " & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}",
                f"\\caption{{{_tex(ds)}: claimed vs.\\ reproduced (\\%, mean$\\pm$std over seeds; best seed for "
                f"best-of-$n$ rows, the best seed by ACC; NMI in each claim's normalisation, see audit.md; "
                f"$^\\dagger$ not verified against the paper; -- = not compared).}}", "\\end{table}",
                ""]
    return "\n".join(out)


def write_csv(rows: list[AuditRow], path: Path) -> None:
    cols = ["method", "variant", "label", "dataset", "metric", "claimed", "claimed_std", "report", "n_runs",
            "verified", "paper", "table", "source", "claim_protocol", "claims_file", "status", "n", "mean", "std",
            "best", "best_seed", "reproduced", "delta", "p", "verdict", "failed_seeds", "synthetic",
            "nmi_normalisation", "record_metric", "degenerate_seeds", "run_ids", "code_versions"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            c = r.claim
            w.writerow([c.method, c.variant, c.label, c.dataset, c.metric, c.value, c.std, c.report, c.n_runs,
                        c.verified, c.paper, c.table, c.source, c.protocol_text(), c.where, r.status, r.n, r.mean,
                        r.std, r.best, r.best_seed, r.reproduced, r.delta, r.p, r.verdict, "; ".join(r.failed),
                        r.synthetic, c.nmi_normalisation if c.metric == "nmi" else "", c.record_metric,
                        " ".join(map(str, r.degenerate)), " ".join(r.run_ids), " ".join(r.code_versions)])


def plot_claimed_vs_reproduced(rows: list[AuditRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"consistent": "tab:green", "below claim": "tab:red", "above claim": "tab:blue",
              "insufficient seeds": "tab:gray"}
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 100], [0, 100], color="black", lw=1)
    ax.fill_between([0, 100], [-TOLERANCE * 100, 100 - TOLERANCE * 100], [TOLERANCE * 100, 100 + TOLERANCE * 100],
                    color="gray", alpha=0.2, label=f"±{TOLERANCE * 100:.0f} pt")
    from matplotlib.lines import Line2D

    from bench.registry import method_label

    placed: list[tuple[float, float]] = []

    def annotate(r: AuditRow, y: float) -> None:  # method/dataset metric, as the tables name them
        name = method_label(r.claim.method) + ("" if r.claim.variant == "default" else f" [{r.claim.variant}]")
        xy = (100 * r.claim.value, 100 * y)
        crowd = sum(abs(px - xy[0]) < 6 and abs(py - xy[1]) < 3 for px, py in placed)  # stack near labels
        placed.append(xy)
        ax.annotate(f"{name}/{r.claim.dataset} {r.claim.metric.upper()}", xy, xytext=(4, 3 - 7 * crowd),
                    textcoords="offset points", fontsize=6, alpha=0.85,
                    arrowprops={"arrowstyle": "-", "lw": 0.3, "alpha": 0.5} if crowd else None)

    done = set()
    for r in rows:
        if r.status != "compared" or math.isnan(r.reproduced):
            continue
        v = r.verdict if r.verdict in colors else "insufficient seeds"
        yerr = 0 if (math.isnan(r.std) or r.claim.report == "best") else 100 * r.std
        ax.errorbar(100 * r.claim.value, 100 * r.reproduced, yerr=yerr, xerr=100 * (r.claim.std or 0),
                    fmt="o" if r.claim.report != "best" else "^", ms=5, color=colors[v], capsize=2, alpha=0.8,
                    label=None if v in done else v)
        annotate(r, r.reproduced)
        done.add(v)
    for r in rows:
        if r.status == "mismatch" and not math.isnan(r.reproduced):
            ax.scatter(100 * r.claim.value, 100 * r.reproduced, marker="x", color="tab:orange",
                       label=None if "mismatch" in done else "protocol mismatch (not judged)")
            annotate(r, r.reproduced)
            done.add("mismatch")
    handles, labels = ax.get_legend_handles_labels()
    shapes = [Line2D([], [], marker="o", ls="", color="black", label="● mean / single claim: mean ± std"),
              Line2D([], [], marker="^", ls="", color="black", label="▲ best-of-n claim: best seed")]
    ax.legend(handles=handles + shapes, labels=labels + [h.get_label() for h in shapes], fontsize=7,
              loc="upper left")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("claimed (%)")
    ax.set_ylabel("reproduced (%)")
    ax.set_title("Claims audit: claimed vs reproduced")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(records: list[ResultRecord], path: Path) -> bool:
    """Per (method, variant, dataset): eval ACC (or loss when no eval ACC) per epoch, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.registry import method_label

    groups: dict[tuple[str, str, str], list[ResultRecord]] = {}
    for r in records:
        if r.ok and len(r.curve) >= 2:  # a single logged point (k-means) is no curve
            groups.setdefault((r.method, r.variant, r.dataset), []).append(r)
    if not groups:
        return False
    keys = sorted(groups)
    ncol = min(4, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.8 * ncol, 2.9 * nrow), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        recs = groups[key]
        field_ = "eval_acc" if any("eval_acc" in row for r in recs for row in r.curve) else "loss"
        table: dict[float, list[float]] = {}
        for r in recs:
            for row in r.curve:
                if row.get(field_) is not None:
                    table.setdefault(float(row["epoch"]), []).append(float(row[field_]))
        xs = sorted(table)
        mean = np.array([np.mean(table[x]) for x in xs])
        sd = np.array([np.std(table[x]) for x in xs])
        scale = 100 if field_ == "eval_acc" else 1
        ax.plot(xs, mean * scale, lw=1.2)
        ax.fill_between(xs, (mean - sd) * scale, (mean + sd) * scale, alpha=0.25)
        ax.set_title(f"{method_label(key[0])}{'' if key[1] == 'default' else ' [' + key[1] + ']'} on {key[2]} "
                     f"(n={len(recs)})", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("eval ACC (%)" if field_ == "eval_acc" else "loss")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


AUDIT_FILES = ("audit.md", "audit.tex", "audit.csv", "claimed_vs_reproduced.png", "curves.png")


def write_audit(rows: list[AuditRow], records: list[ResultRecord], out_dir: Path) -> dict[str, Path]:
    """The audit files, published together (bench.report.publish): an empty audit is an error and never
    replaces an earlier one, and a stale plot of an earlier audit does not stay beside the new tables."""
    from bench.errors import BenchError
    from bench.report import publish

    if all(r.status == "no results" for r in rows):
        raise BenchError(f"nothing to audit: no stored record has the method and dataset of any claim; the audit in "
                         f"{out_dir} is left as it was (run a suite first, or pass --store)")
    return publish(Path(out_dir), lambda stage: _write_audit_files(rows, records, stage), legacy=AUDIT_FILES)


def _write_audit_files(rows: list[AuditRow], records: list[ResultRecord], out_dir: Path) -> dict[str, Path]:
    paths = {"markdown": out_dir / "audit.md", "latex": out_dir / "audit.tex", "csv": out_dir / "audit.csv",
             "scatter": out_dir / "claimed_vs_reproduced.png", "curves": out_dir / "curves.png"}
    paths["markdown"].write_text("# Claims audit\n\n" + markdown(rows) + "\n")
    paths["latex"].write_text(latex(rows))
    write_csv(rows, paths["csv"])
    plot_claimed_vs_reproduced(rows, paths["scatter"])
    keys = {k for r in rows for k in r.curve_keys}
    if not plot_curves([r for r in records if r.key in keys], paths["curves"]):
        paths.pop("curves")
    return paths


def to_dicts(rows: list[AuditRow]) -> list[dict[str, Any]]:
    return [{**asdict(r), "claim": asdict(r.claim)} for r in rows]

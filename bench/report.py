"""Stored records -> paper-style tables (Markdown, LaTeX, CSV) and plots.

Rows are methods (and variants), columns dataset x metric, cells ``mean ± std`` over the seeds
that finished, in percent as the papers print them, with ``n`` per dataset. Failed or interrupted
seeds never enter a mean: they are counted next to ``n`` and listed with their errors. Each row
states its protocol (splits, sizes, stem, epochs, batch), data md5 and code version beneath the table.

A report never replaces good output with nothing: an empty selection is an error, and the files are
written into a staging folder and moved in together (:func:`publish`), after which the folder holds
only this report's files (plus anything a person put there, e.g. NOTES.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.context import stable_hash
from bench.errors import BenchError
from bench.metrics import DEGENERATE_RULE
from bench.records import ALL_METRICS, METRICS, ResultRecord

METRIC_LABEL = {"acc": "ACC", "nmi": "NMI", "nmi_geometric": "NMI (geometric)", "ari": "ARI"}


def records_frame(records: Iterable[ResultRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        rows.append({
            "method": r.method, "variant": r.variant, "dataset": r.dataset, "seed": r.seed, "status": r.status,
            "error": r.error, **{m: r.metrics.get(m, np.nan) for m in ALL_METRICS}, "degenerate": r.degenerate,
            "largest_share": (r.cluster_profile or {}).get("largest_share"),
            "n_nonempty": (r.cluster_profile or {}).get("n_nonempty"),
            "wall_s": r.timings.get("wall_s", np.nan), "stages_s": _stages_s(r),
            "peak_gpu_mem_mb": r.resources.get("peak_gpu_mem_mb"),
            "config_hash": stable_hash(r.config, 8), "protocol": protocol_text(r.protocol),
            "data_md5": r.data_md5, "code_version": r.env.get("code_version"), "selection_rule": r.selection_rule,
            "key": r.key,
        })
    cols = ["method", "variant", "dataset", "seed", "status", "error", *ALL_METRICS, "degenerate", "largest_share",
            "n_nonempty", "wall_s", "stages_s", "peak_gpu_mem_mb",
            "config_hash", "protocol", "data_md5", "code_version", "selection_rule", "key"]
    return pd.DataFrame(rows, columns=cols)


def _stages_s(r: ResultRecord) -> float:
    """Seconds spent building the stages the trial read (each built once and shared; NaN for records from
    before stages noted their build time)."""
    times = [s["build_s"] for s in r.stages if s.get("build_s") is not None]
    return float(sum(times)) if times else np.nan


def protocol_text(p: dict[str, Any]) -> str:
    parts = [f"train={p.get('train_split')}", f"eval={p.get('eval_split')}", f"K={p.get('n_clusters')}"]
    for k in ("image_size", "stem", "backbone", "epochs", "batch_size", "pretrain_iters"):
        if p.get(k) not in (None, ""):
            parts.append(f"{k}={p[k]}")
    return ", ".join(parts)


def row_labels(df: pd.DataFrame) -> pd.Series:
    """Method label [variant] (the method's ``label``, e.g. "k-means"), plus a config hash when one
    (method, variant, dataset) has several configs."""
    from bench.registry import method_label

    multi = df.groupby(["method", "variant", "dataset"])["config_hash"].transform("nunique") > 1
    label = df["method"].map(method_label) + np.where(df["variant"] != "default", " [" + df["variant"] + "]", "")
    return label + np.where(multi, " #" + df["config_hash"], "")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (row label, dataset): n ok, n failed, mean and std (ddof=1) of each metric."""
    if df.empty:
        return pd.DataFrame()
    df = df.assign(row=row_labels(df))
    out = []
    for (row, ds), g in df.groupby(["row", "dataset"], sort=False):
        ok = g[g["status"] == "ok"]
        rec: dict[str, Any] = {"row": row, "method": g["method"].iloc[0], "variant": g["variant"].iloc[0],
                               "dataset": ds, "n": len(ok), "n_failed": int((g["status"] != "ok").sum())}
        for m in ALL_METRICS:
            vals = ok[m].astype(float)
            rec[f"{m}_mean"] = vals.mean() if len(vals) else np.nan
            rec[f"{m}_std"] = vals.std(ddof=1) if len(vals) > 1 else np.nan
            rec[f"{m}_values"] = list(vals)  # per seed, for the plots' points and the LaTeX significance marks
        rec["wall_s_mean"] = ok["wall_s"].astype(float).mean() if len(ok) else np.nan
        rec["stages_s_mean"] = ok["stages_s"].astype(float).mean() if len(ok) else np.nan
        rec["protocol"] = "; ".join(sorted(set(g["protocol"])))
        rec["data_md5"] = ", ".join(sorted(set(g["data_md5"])))
        rec["code_version"] = ", ".join(sorted({str(c) for c in g["code_version"] if c}))
        rec["selection_rule"] = g["selection_rule"].iloc[0]
        rec["seeds"] = ",".join(str(s) for s in sorted(ok["seed"]))
        degen = ok[ok["degenerate"].fillna(False).astype(bool)]
        rec["n_degenerate"] = len(degen)
        rec["degenerate_seeds"] = "; ".join(
            f"seed {int(d.seed)} ({int(d.n_nonempty)} clusters non-empty, largest {100 * d.largest_share:.0f}%)"
            for d in degen.sort_values("seed").itertuples())
        rec["errors"] = sorted({str(e) for e in g.loc[g["status"] != "ok", "error"] if e})
        out.append(rec)
    return pd.DataFrame(out)


def _cell(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if np.isnan(mean):
        return "–"
    if np.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _select(summary: pd.DataFrame, rows: list[dict[str, Any]] | None, datasets: list[str] | None):
    if rows:
        pieces = []
        for r in rows:
            sel = summary[(summary["method"] == r["method"]) & (summary["variant"] == r.get("variant", "default"))]
            pieces.append(sel.assign(row=r.get("label") or sel["row"]))
        summary = pd.concat(pieces) if pieces else summary.iloc[0:0]
    ds = datasets or list(dict.fromkeys(summary["dataset"]))
    return summary[summary["dataset"].isin(ds)], ds


def markdown_table(summary: pd.DataFrame, *, rows=None, datasets=None, metrics=METRICS) -> str:
    summary, ds_order = _select(summary, rows, datasets)
    header = ["Method"] + [f"{d} {METRIC_LABEL[m]}" for d in ds_order for m in metrics] + [f"{d} n" for d in ds_order]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in dict.fromkeys(summary["row"]):
        cells = [row]
        sub = summary[summary["row"] == row].set_index("dataset")
        for d in ds_order:
            for m in metrics:
                cells.append(_cell(sub.at[d, f"{m}_mean"], sub.at[d, f"{m}_std"]) if d in sub.index else "")
        for d in ds_order:
            if d in sub.index:
                n, nf, nd = int(sub.at[d, "n"]), int(sub.at[d, "n_failed"]), int(sub.at[d, "n_degenerate"])
                cells.append(f"{n}" + (f" (+{nf} failed)" if nf else "") + (f" ({nd} degenerate ⚠)" if nd else ""))
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: the LaTeX tables' significance level for "best" (Welch's one-sided t-test on the per-seed values)
BEST_ALPHA = 0.05
BEST_RULE = (f"Bold: the best mean, significantly better than every other row (Welch's one-sided t-test on the "
             f"per-seed values, alpha = {BEST_ALPHA}); underlined: the best mean and the rows not significantly "
             f"worse than it (a tie).")


def best_marks(means: dict[str, float], values: dict[str, list[float]], alpha: float = BEST_ALPHA) -> dict[str, str]:
    """Per row of one column: "bold" for a best that is significantly better than every other row,
    "tie" for the best and the rows it does not beat significantly (Welch's one-sided t-test), else ""."""
    from scipy import stats

    rows = [r for r, v in means.items() if not np.isnan(v)]
    if not rows:
        return {}
    top = max(rows, key=lambda r: means[r])
    tied = []
    for r in rows:
        if r == top:
            continue
        a, b = np.asarray(values.get(top, []), float), np.asarray(values.get(r, []), float)
        if len(a) < 2 or len(b) < 2:  # no test possible: not shown as significant
            tied.append(r)
            continue
        if np.all(a == a[0]) and np.all(b == b[0]):
            p = 0.0 if a[0] > b[0] else 1.0
        else:
            p = float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
        if not p < alpha:
            tied.append(r)
    if not tied:
        return {top: "bold"}
    return {r: "tie" for r in (top, *tied)}


def latex_table(summary: pd.DataFrame, *, rows=None, datasets=None, metrics=METRICS, caption: str = "") -> str:
    """booktabs table, values in percent; the best mean is bold only when significantly better than
    every other row, else the tied rows are underlined (BEST_RULE, stated in the caption)."""
    summary, ds_order = _select(summary, rows, datasets)
    row_names = list(dict.fromkeys(summary["row"]))
    marks: dict[tuple[str, str], dict[str, str]] = {}
    for d in ds_order:
        for m in metrics:
            col = summary[summary["dataset"] == d]
            marks[(d, m)] = best_marks(dict(zip(col["row"], col[f"{m}_mean"].astype(float))),
                                       dict(zip(col["row"], col[f"{m}_values"]))) if len(col) > 1 else {}
    colspec = "l" + "c" * (len(ds_order) * len(metrics))
    out = ["\\begin{table}[t]", "\\centering", f"\\begin{{tabular}}{{{colspec}}}", "\\toprule",
           " & " + " & ".join(f"\\multicolumn{{{len(metrics)}}}{{c}}{{{_tex(d)}}}" for d in ds_order) + " \\\\"]
    rules = [f"\\cmidrule(lr){{{2 + i * len(metrics)}-{1 + (i + 1) * len(metrics)}}}" for i in range(len(ds_order))]
    out.append("".join(rules))
    out.append("Method & " + " & ".join(METRIC_LABEL[m] for _ in ds_order for m in metrics) + " \\\\")
    out.append("\\midrule")
    for row in row_names:
        sub = summary[summary["row"] == row].set_index("dataset")
        cells = []
        for d in ds_order:
            for m in metrics:
                if d not in sub.index or np.isnan(sub.at[d, f"{m}_mean"]):
                    cells.append("--")
                    continue
                mean, std = sub.at[d, f"{m}_mean"], sub.at[d, f"{m}_std"]
                txt = f"{mean * 100:.1f}" + ("" if np.isnan(std) else f"$\\pm${std * 100:.1f}")
                txt += "$^\\ddagger$" if sub.at[d, "n_degenerate"] else ""
                mark = marks[(d, m)].get(row, "")
                cells.append(f"\\textbf{{{txt}}}" if mark == "bold" else f"\\underline{{{txt}}}" if mark == "tie"
                             else txt)
        out.append(f"{_tex(row)} & " + " & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    caption = (_tex(caption) + " " if caption else "") + f"(mean $\\pm$ std over seeds, \\%). {_tex(BEST_RULE)}"
    if (summary["n_degenerate"] > 0).any():
        caption += " $^\\ddagger$: includes degenerate (collapsed) seeds."
    out.append(f"\\caption{{{caption}}}")
    out.append("\\end{table}")
    return "\n".join(out)


def _tex(s: str) -> str:
    return str(s).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%") \
        .replace("#", "\\#")


def _stages_note(seconds: float) -> str:
    if seconds != seconds:  # NaN: no stages, or records from before their build time was noted
        return ""
    return f" + {seconds:.1f} s building the stages it read (once per seed, shared with the suite's other trials)"


def notes(summary: pd.DataFrame) -> str:
    lines = ["Protocol, data and code of each row (mean ± std over n seeds; failed seeds are not averaged):", ""]
    for _, r in summary.iterrows():
        lines.append(f"- **{r['row']}** on {r['dataset']}: {r['protocol']}; seeds {r['seeds'] or '–'}; "
                     f"data md5 `{r['data_md5']}`; code `{r['code_version']}`; selection: {r['selection_rule']}; "
                     f"mean wall {r['wall_s_mean']:.1f} s" + _stages_note(r["stages_s_mean"]))
    degenerate = summary[summary["n_degenerate"] > 0]
    if len(degenerate):
        lines += ["", f"Degenerate seeds (⚠; kept in the means, they are what the method produced; {DEGENERATE_RULE}):",
                  ""]
        for _, r in degenerate.iterrows():
            lines.append(f"- {r['row']} on {r['dataset']}: {r['degenerate_seeds']}")
    failures = summary[summary["n_failed"] > 0]
    if len(failures):
        lines += ["", "Failed or interrupted seeds (excluded from the means):", ""]
        for _, r in failures.iterrows():
            lines.append(f"- {r['row']} on {r['dataset']}: {r['n_failed']} seed(s): {'; '.join(r['errors'])}")
    return "\n".join(lines)


def plot_bars(summary: pd.DataFrame, path: Path, metrics=METRICS) -> None:
    """Per dataset: bars = mean over the finished seeds (in %, as the tables), error bars = std, dots =
    the individual seeds, n under each method's label; rows are labelled as in the tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(summary["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5.0, 4.5 * len(datasets)), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        sub = summary[summary["dataset"] == ds]
        x = np.arange(len(sub))
        width = 0.8 / len(metrics)
        for i, m in enumerate(metrics):
            xm = x + (i - (len(metrics) - 1) / 2) * width
            bars = ax.bar(xm, sub[f"{m}_mean"] * 100, width, yerr=np.nan_to_num(sub[f"{m}_std"] * 100), capsize=3,
                          label=METRIC_LABEL[m], alpha=0.85)
            for xi, vals in zip(xm, sub[f"{m}_values"]):
                if len(vals):
                    jitter = np.linspace(-width / 4, width / 4, len(vals)) if len(vals) > 1 else [0.0]
                    ax.scatter(xi + np.asarray(jitter), np.asarray(vals) * 100, s=9, color="black", zorder=3,
                               linewidths=0, label="one seed" if (i, xi) == (0, xm[0]) else None)
            del bars
        ticks = [f"{r}\nn={int(n)}" + (f" (+{int(nf)} failed)" if nf else "")
                 for r, n, nf in zip(sub["row"], sub["n"], sub["n_failed"])]
        ax.set_xticks(x, ticks, fontsize=8)
        ax.set_ylim(0, 112)  # headroom for the legend row
        ax.set_yticks(range(0, 101, 20))
        ax.set_title(f"{ds}: mean ± std over n seeds, dots = seeds", fontsize=9)
        ax.set_ylabel("score (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="upper center", ncol=len(metrics) + 1, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(records: list[ResultRecord], path: Path) -> bool:
    """Eval ACC along training, one line per seed, one panel per (row, dataset). For reading only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.registry import method_label

    groups: dict[tuple[str, str], list[ResultRecord]] = {}
    for r in records:
        if sum("eval_acc" in row for row in r.curve) >= 2:  # one point (k-means' final score) is no curve
            label = method_label(r.method) + ("" if r.variant == "default" else f" [{r.variant}]")
            groups.setdefault((label, r.dataset), []).append(r)
    if not groups:
        return False
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, ((label, ds), recs) in zip(axes[0], groups.items()):
        for r in recs:
            pts = [(row["epoch"], 100 * row["eval_acc"]) for row in r.curve if "eval_acc" in row]
            ax.plot(*zip(*pts), marker=".", lw=1, label=f"seed {r.seed}" + ("" if r.ok else f" ({r.status})"))
        ax.set_title(f"{label} on {ds}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("eval ACC (%), not used for selection")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


#: lists the files the last report wrote into its folder (the ones the next report may replace or remove)
OWNED_LIST = ".bench-files.json"
REPORT_FILES = ("table.md", "table.tex", "results.png", "curves.png", "results.csv", "summary.csv")


def publish(out_dir: Path, write: Callable[[Path], dict[str, Path]], legacy: Iterable[str] = ()) -> dict[str, Path]:
    """Run ``write(staging_folder)``, then move what it wrote into ``out_dir`` and remove the files that an
    earlier report put there (listed in OWNED_LIST, or the ``legacy`` names for folders from before the list)
    and this one did not write. Other files in ``out_dir`` are left alone. If ``write`` fails, ``out_dir`` is
    untouched. Two reports published into one folder at once do not mix: the moves hold the folder's lock, so
    the folder ends up with one report's files, the last one's."""
    from filelock import FileLock

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        paths = write(stage)
        new = sorted(p.name for p in stage.iterdir() if p.is_file())
        # beside the folder, like the staging folder: a report folder holds only what reports wrote
        with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
            try:
                old = json.loads((out_dir / OWNED_LIST).read_text())
            except (OSError, ValueError):
                old = list(legacy)
            for name in new:
                os.replace(stage / name, out_dir / name)
            for name in set(map(str, old)) - set(new):
                if "/" not in name and name not in ("", ".", ".."):
                    (out_dir / name).unlink(missing_ok=True)
            (out_dir / OWNED_LIST).write_text(json.dumps(new))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {k: out_dir / Path(p).name for k, p in paths.items()}


def write_report(records: list[ResultRecord], out_dir: Path, *, title: str,
                 tables: list[dict[str, Any]] | None = None, run: dict[str, Any] | None = None,
                 note: str | None = None) -> dict[str, Path]:
    """``run``: the manifest when this is one run's records; ``note``: a line saying where the records
    come from (the store's view of a suite, bench.view)."""
    if not records:
        raise BenchError(f"nothing to report: the selection holds no result records; the report in {out_dir} is "
                         "left as it was (run the suite first, or pick another suite or --run)")
    return publish(Path(out_dir), lambda stage: _write_report_files(records, stage, title=title, tables=tables,
                                                                    run=run, note=note), legacy=REPORT_FILES)


def _write_report_files(records: list[ResultRecord], out_dir: Path, *, title: str,
                        tables: list[dict[str, Any]] | None, run: dict[str, Any] | None,
                        note: str | None = None) -> dict[str, Path]:
    df = records_frame(records)
    summary = summarize(df)
    paths = {"csv": out_dir / "results.csv", "summary_csv": out_dir / "summary.csv", "markdown": out_dir / "table.md",
             "latex": out_dir / "table.tex", "plot": out_dir / "results.png"}
    df.to_csv(paths["csv"], index=False)
    summary.drop(columns=["errors", *[c for c in summary.columns if c.endswith("_values")]]).to_csv(
        paths["summary_csv"], index=False)
    md = [f"# {title}", ""]
    if run:
        md += [f"Run `{run.get('run_id')}`, started {run.get('started_at')}, finished {run.get('finished_at')} "
               f"({run.get('status')}).", ""]
    if note:
        md += [note, ""]
    specs = tables or [{"title": "All results", "rows": None, "datasets": None, "metrics": list(METRICS)}]
    tex = []
    for spec in specs:
        md += [f"## {spec['title']}", "",
               markdown_table(summary, rows=spec.get("rows"), datasets=spec.get("datasets"),
                              metrics=spec.get("metrics") or METRICS), ""]
        tex.append(latex_table(summary, rows=spec.get("rows"), datasets=spec.get("datasets"),
                               metrics=spec.get("metrics") or METRICS, caption=spec["title"]))
    md += [notes(summary), ""]
    paths["markdown"].write_text("\n".join(md))
    paths["latex"].write_text("\n\n".join(tex) + "\n")
    plot_bars(summary, paths["plot"])
    if plot_curves(records, out_dir / "curves.png"):
        paths["curves"] = out_dir / "curves.png"
    return paths

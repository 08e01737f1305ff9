import numpy as np
import pytest

from bench.records import ResultRecord
from bench.report import latex_table, markdown_table, records_frame, summarize, write_report


def rec(method, dataset, seed, acc, status="ok", variant="default", config=None):
    return ResultRecord(key=f"{method}-{variant}-{dataset}-{seed}-{status}", method=method, variant=variant,
                        dataset=dataset, seed=seed, config=config or {"a": 1},
                        protocol={"train_split": "all", "eval_split": "all", "n_clusters": 10, "batch_size": 256},
                        data_md5="abc", status=status, error=None if status == "ok" else "Boom: x",
                        metrics={"acc": acc, "nmi": acc / 2, "ari": acc / 3} if status == "ok" else {},
                        curve=[{"epoch": 1, "eval_acc": acc}, {"epoch": 2, "eval_acc": acc}],
                        env={"code_version": "c1"})


def test_mean_std_over_ok_seeds_only():
    recs = [rec("dec", "mnist", s, a) for s, a in enumerate([0.80, 0.84, 0.88])] + [rec("dec", "mnist", 3, 0, "failed")]
    s = summarize(records_frame(recs)).iloc[0]
    assert s["n"] == 3 and s["n_failed"] == 1
    assert s["acc_mean"] == pytest.approx(0.84) and s["acc_std"] == pytest.approx(np.std([0.8, 0.84, 0.88], ddof=1))


def test_markdown_layout_rows_methods_columns_dataset_metric():
    recs = [rec("kmeans", "mnist", 0, 0.53), rec("kmeans", "mnist", 1, 0.54), rec("dec", "mnist", 0, 0.84),
            rec("dec", "usps", 0, 0.74)]
    md = markdown_table(summarize(records_frame(recs)))
    header = md.splitlines()[0]
    assert header.startswith("| Method | mnist ACC | mnist NMI | mnist ARI | usps ACC")
    assert "| k-means | 53.5 ± 0.7 |" in md and "| DEC | 84.0 |" in md  # n=1: no ± shown; labels as the papers


def test_table_rows_and_labels_from_spec_and_variants_and_configs():
    recs = [rec("cc", "cifar10", 0, 0.79), rec("cc", "cifar10", 0, 0.70, variant="ich_only"),
            rec("kmeans", "cifar10", 0, 0.2, config={"a": 1}), rec("kmeans", "cifar10", 1, 0.3, config={"a": 2})]
    summary = summarize(records_frame(recs))
    assert any(r.startswith("k-means #") for r in summary["row"])  # two configs of one method are two rows
    md = markdown_table(summary, rows=[{"method": "cc", "label": "ICH + CCH"},
                                       {"method": "cc", "variant": "ich_only", "label": "ICH only"}])
    lines = md.splitlines()
    assert lines[2].startswith("| ICH + CCH | 79.0") and lines[3].startswith("| ICH only | 70.0")
    assert len(lines) == 4


def test_latex_bolds_best_only_when_significantly_better():
    recs = [rec("a", "mnist", s, 0.5 + 0.01 * s) for s in range(3)] + [rec("b", "mnist", s, 0.9 + 0.01 * s)
                                                                        for s in range(3)]
    tex = latex_table(summarize(records_frame(recs)))
    assert "\\textbf{91.0$\\pm$1.0}" in tex and "\\textbf{51.0" not in tex and "\\toprule" in tex
    assert "Welch" in tex and "\\bottomrule" in tex
    one_seed = latex_table(summarize(records_frame([rec("a", "mnist", 0, 0.5), rec("b", "mnist", 0, 0.9)])))
    assert "\\textbf" not in one_seed and "\\underline{90.0}" in one_seed  # no test possible: a tie


def test_write_report_files(tmp_path):
    recs = [rec("dec", "mnist", s, a) for s, a in enumerate([0.8, 0.9])]
    paths = write_report(recs, tmp_path, title="x")
    for key in ("csv", "markdown", "latex", "plot", "curves"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    assert "data md5 `abc`" in paths["markdown"].read_text()


def test_store_view_matches_a_record_older_than_a_key_by_the_value_it_ran_with():
    from bench.registry import resolve_config
    from bench.view import _same_config, config_defaults

    today = resolve_config("depict", "default", "usps").model_dump()
    old = {k: v for k, v in today.items() if k not in ("init", "dropout_masks")}  # written before the keys
    defaults = config_defaults("depict")
    assert not _same_config(old, today, defaults)  # it ran k-means with one shared noisy pass, not today's recipe
    assert _same_config(old, resolve_config("depict", "kmeans_shared_masks", "usps").model_dump(), defaults)
    assert _same_config(today, today, defaults)
    lr_only = {k: v for k, v in today.items() if k != "lr"}  # a key without a legacy value: its default
    assert _same_config(lr_only, today, defaults)

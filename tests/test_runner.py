"""Suite -> trials -> records -> store -> report, inline (Ray has its own test file)."""

import json

import numpy as np
import pytest

from bench.cli import main
from bench.plan import plan_suite
from bench.records import ResultRecord
from bench.report import records_frame, summarize, write_report
from bench.runner import _finish_manifest, run_suite
from bench.suite import parse_suite


def suite(**kw):
    base = {"name": "t", "seeds": [0, 1], "datasets": ["digits"], "methods": ["kmeans"]}
    base.update(kw)
    return parse_suite(base)


def test_inline_run_writes_records_with_provenance(store):
    man = run_suite(suite(methods=[{"name": "kmeans", "config": {"n_init": 2}}]), store=store, data_root=store.root,
                    inline=True)
    recs = store.run_records(man)
    assert [r.seed for r in recs] == [0, 1] and all(r.ok for r in recs)
    r = recs[0]
    assert 0.6 < r.metrics["acc"] <= 1.0 and set(r.metrics) == {"acc", "nmi", "nmi_geometric", "ari"}
    assert r.config["n_init"] == 2 and r.config["max_iter"] == 300  # fully resolved config
    assert r.protocol["train_split"] == "all" and r.protocol["n_clusters"] == 10
    assert r.data_md5 and r.env["code_version"] == "test-code" and r.env["torch"]
    assert r.timings["wall_s"] > 0 and r.resources["peak_rss_mb"] > 0 and r.selection_rule
    assert (store.artifact_dir(r.key) / "pred.npy").exists()
    assert not list(store.records_dir.glob("*.tmp")) and not list(store.records_dir.glob(".*"))
    assert man["status"] == "finished" and {t["status"] for t in man["trials"]} == {"ok"}


def test_identical_trial_is_reused_unless_forced(store):
    s = suite(methods=["test_first_pixel"])
    first = run_suite(s, store=store, data_root=store.root, inline=True)
    second = run_suite(s, store=store, data_root=store.root, inline=True)
    assert [t["status"] for t in second["trials"]] == ["reused", "reused"]
    assert [t["key"] for t in first["trials"]] == [t["key"] for t in second["trials"]]
    forced = run_suite(s, store=store, data_root=store.root, inline=True, force=True)
    assert [t["status"] for t in forced["trials"]] == ["ok", "ok"]
    # a changed config or code version is a different trial
    other = plan_suite(suite(methods=[{"name": "test_first_pixel", "config": {"pixel": 21}}]), store, store.root)
    assert not set(e["key"] for e in other.entries) & set(t["key"] for t in first["trials"])
    newer = plan_suite(s, store, store.root, code={"code_version": "v2"})
    assert not newer.skipped


def test_nan_loss_fails_that_seed_only_and_is_never_averaged(store, tmp_path):
    man = run_suite(suite(methods=["test_nan", "test_first_pixel"], seeds=[0, 1, 2]), store=store,
                    data_root=store.root, inline=True)
    by = {(t["method"], t["seed"]): t for t in man["trials"]}
    assert by[("test_nan", 1)]["status"] == "failed"
    assert "NonFiniteLossError" in by[("test_nan", 1)]["error"] and "seed 1" in by[("test_nan", 1)]["error"]
    assert by[("test_nan", 0)]["status"] == "ok" and by[("test_first_pixel", 1)]["status"] == "ok"
    summary = summarize(records_frame(store.run_records(man))).set_index("row")
    assert summary.at["test_nan", "n"] == 2 and summary.at["test_nan", "n_failed"] == 1
    ok_acc = [store.get(by[("test_nan", s)]["key"]).metrics["acc"] for s in (0, 2)]
    assert summary.at["test_nan", "acc_mean"] == pytest.approx(np.mean(ok_acc))
    paths = write_report(store.run_records(man), tmp_path / "rep", title="t")
    md = paths["markdown"].read_text()
    assert "2 (+1 failed)" in md and "NonFiniteLossError" in md


def test_wrong_label_count_is_a_failed_record(store):
    man = run_suite(suite(methods=["test_wrong_length"], seeds=[0]), store=store, data_root=store.root, inline=True)
    assert man["trials"][0]["status"] == "failed" and "3 labels for 1797" in man["trials"][0]["error"]


def test_trial_without_a_record_becomes_interrupted_not_dropped(store):
    s = suite(methods=["test_first_pixel"], seeds=[0, 1])
    plan = plan_suite(s, store, store.root)
    manifest = {"run_id": plan.run_id, "suite": "t", "code": {"code_version": "test-code"},
                "trials": [{**e, "status": "pending"} for e in plan.entries]}
    from bench.trial import execute_unit

    execute_unit(plan.units[0])  # seed 0 finishes; seed 1's worker "dies" before writing
    _finish_manifest(manifest, plan, store, interrupted=False)
    statuses = [t["status"] for t in manifest["trials"]]
    assert statuses == ["ok", "interrupted"]
    lost = store.get(plan.entries[1]["key"])
    assert lost.status == "interrupted" and "worker lost" in lost.error
    # the next run re-runs the interrupted seed and reuses the finished one
    again = run_suite(s, store=store, data_root=store.root, inline=True)
    assert [t["status"] for t in again["trials"]] == ["reused", "ok"]


def test_records_roundtrip_and_schema(store):
    run_suite(suite(methods=["test_first_pixel"], seeds=[3]), store=store, data_root=store.root, inline=True)
    path = next(store.records_dir.glob("*.json"))
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and data["seed"] == 3 and data["status"] == "ok"
    assert ResultRecord.model_validate(data).key == path.stem


def test_cli_run_report_and_trial(tmp_path, capsys):
    s = tmp_path / "s.yaml"
    s.write_text("name: cli\nseeds: 2\ndatasets: [digits]\nmethods: [test_first_pixel, test_nan]\n"
                 "tables:\n  - title: T\n    rows: [{method: test_first_pixel, label: First pixel}]\n")
    args = ["--store", str(tmp_path / "st"), "--out", str(tmp_path / "rep")]
    assert main(["run", str(s), "--inline", *args]) == 1  # one seed failed (NaN) -> non-zero
    out = capsys.readouterr().out
    assert "| First pixel |" in out and (tmp_path / "rep/cli/results.png").exists()
    assert (tmp_path / "rep/cli/table.tex").read_text().count("\\toprule") == 1
    assert main(["report", "cli", *args]) == 0
    assert "First pixel" in (tmp_path / "rep/cli/table.md").read_text()
    assert main(["trial", "test_first_pixel", "digits", "--set", "pixel=30", "--store", str(tmp_path / "st")]) == 0
    assert '"status": "ok"' in capsys.readouterr().out
    assert main(["trial", "test_first_pixel", "digits", "--set", "pixel", "--store", str(tmp_path / "st")]) == 2
    assert main(["report", "nosuch", "--store", str(tmp_path / "st")]) == 2
    assert main(["list"]) == 0 and "dec" in capsys.readouterr().out


def test_sigterm_records_the_rest_as_interrupted_and_keeps_finished(store):
    man = run_suite(suite(methods=["test_sigterm"], seeds=[0, 1, 2]), store=store, data_root=store.root, inline=True)
    assert [t["status"] for t in man["trials"]] == ["ok", "interrupted", "interrupted"]
    assert man["status"] == "interrupted"
    assert "SIGTERM" in man["trials"][2]["error"] and "worker lost" not in man["trials"][2]["error"]
    assert store.get(man["trials"][0]["key"]).ok  # the finished seed's record is kept


def test_run_only_some_methods_then_the_full_suite_reuses_them(tmp_path, capsys):
    s = tmp_path / "s.yaml"
    s.write_text("name: part\nseeds: 2\ndatasets: [digits]\nmethods: [test_first_pixel, kmeans]\n"
                 "tables:\n  - title: T\n"
                 "    rows: [{method: test_first_pixel, label: FP}, {method: kmeans, label: KM}]\n")
    args = ["--inline", "--store", str(tmp_path / "st"), "--out", str(tmp_path / "rep")]
    assert main(["run", str(s), "--only", "test_first_pixel", *args]) == 0
    out = capsys.readouterr().out
    assert "2 ok, 0 reused" in out
    assert main(["run", str(s), *args]) == 0  # only k-means runs now; first-pixel records are reused
    out = capsys.readouterr().out
    assert "2 ok, 2 reused" in out and "| FP |" in out and "| KM |" in out
    assert main(["run", str(s), "--only", "dec", *args]) == 2
    assert "--only dec: not a method of suite 'part'" in capsys.readouterr().err


def test_run_only_one_variant_of_a_method_then_the_full_suite_reuses_it(tmp_path, capsys):
    """``--only METHOD:VARIANT`` runs that variant alone (two processes can split a suite's variants between
    them); a later full run reuses it; a variant the suite does not run is one error line, nothing written."""
    from bench.store import ResultStore

    s = tmp_path / "s.yaml"
    s.write_text("name: dcv\nseeds: 1\ndatasets: [digits]\nmethods:\n  - name: deepcluster\n"
                 "    variants: [default, overcluster]\n"
                 "    config: {backbone: tiny_cnn, image_size: 8, pca_dim: 16, epochs: 1, batch_size: 200}\n")
    args = ["--inline", "--no-report", "--store", str(tmp_path / "st")]
    assert main(["run", str(s), "--only", "deepcluster:overcluster", *args]) == 0
    assert "1 ok, 0 reused" in capsys.readouterr().out
    assert [r.variant for r in ResultStore(tmp_path / "st").records()] == ["overcluster"]
    assert main(["run", str(s), *args]) == 0
    assert "1 ok, 1 reused" in capsys.readouterr().out
    assert sorted(r.variant for r in ResultStore(tmp_path / "st").records()) == ["default", "overcluster"]
    assert main(["run", str(s), "--only", "deepcluster:scan_only", "--store", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --only deepcluster:scan_only: 'deepcluster' has no variant 'scan_only'")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "new").exists()
    assert main(["run", str(s), "--only", "dec:default", "--store", str(tmp_path / "new")]) == 2
    assert "--only dec:default: not a method of suite 'dcv'" in capsys.readouterr().err


def test_run_only_some_datasets(tmp_path, capsys):
    from bench.store import ResultStore

    s = tmp_path / "s.yaml"  # MNIST is never loaded: only digits is asked for (no data needed beyond it)
    s.write_text("name: part\nseeds: 2\ndatasets: [digits, mnist]\nmethods: [test_first_pixel]\n")
    (tmp_path / "no-data").mkdir()  # MNIST's files are absent: the run must not even hash them
    args = ["--inline", "--store", str(tmp_path / "st"), "--no-report", "--data", str(tmp_path / "no-data")]
    assert main(["run", str(s), "--datasets", "digits", *args]) == 0
    assert "2 ok, 0 reused" in capsys.readouterr().out
    store = ResultStore(tmp_path / "st")
    assert sorted((r.dataset, r.seed) for r in store.records()) == [("digits", 0), ("digits", 1)]
    assert store.latest_run("part")["only_datasets"] == ["digits"]
    assert main(["run", str(s), "--datasets", "digitz", *args]) == 2
    assert "--datasets digitz: not a dataset of suite 'part' (it has digits, mnist)" in capsys.readouterr().err
    assert main(["run", str(s), "--resume", "--datasets", "digits", *args]) == 2
    assert "drop --datasets" in capsys.readouterr().err


def test_an_inline_run_leaves_the_process_thread_count_alone(tmp_path):
    """A unit computes with its CPU share of threads (cpus_per_trial: 1) and restores the driver's count after:
    a test process left at one thread made in-process results differ from a subprocess's."""
    import torch

    s = tmp_path / "s.yaml"
    s.write_text("name: threads\nseeds: 1\ndatasets: [digits]\nmethods: [test_first_pixel]\n"
                 "resources: {cpus_per_trial: 1}\n")
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["run", str(s), "--inline", "--store", str(tmp_path / "st"), "--no-report"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_run_only_some_seeds_and_resume_keeps_to_them(tmp_path, capsys):
    from bench.store import ResultStore

    s = tmp_path / "s.yaml"
    s.write_text("name: part\nseeds: 4\ndatasets: [digits]\nmethods: [test_first_pixel]\n")
    args = ["--inline", "--store", str(tmp_path / "st"), "--no-report"]
    assert main(["run", str(s), "--seeds", "1", "--seeds", "2", *args]) == 0
    assert "2 ok, 0 reused" in capsys.readouterr().out
    store = ResultStore(tmp_path / "st")
    assert sorted(r.seed for r in store.records()) == [1, 2]
    man = store.latest_run("part")
    assert man["only_seeds"] == [1, 2] and man["spec"]["seeds"] == [0, 1, 2, 3]  # the report shows the whole grid
    # the report lists what is missing per cell, seeds as ranges
    assert main(["report", str(s), "--store", str(tmp_path / "st"), "--out", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    assert ("2 trial(s) have no record yet: test_first_pixel/default on digits seeds 0, 3."
            in (tmp_path / "rep" / "part" / "table.md").read_text())
    # a resumed run continues what it was asked to run: seeds 0 and 3 stay unrun
    store.write_run({**man, "status": "interrupted"})
    assert main(["run", str(s), "--resume", *args]) == 0
    assert sorted(r.seed for r in store.records()) == [1, 2]
    assert main(["run", str(s), *args]) == 0  # the full run reuses 1 and 2
    assert "2 ok, 2 reused" in capsys.readouterr().out
    for bad, says in ((["--seeds", "4"], "--seeds 4: not a seed of suite 'part' (it has 0, 1, 2, 3)"),
                      (["--seeds", "1,-1"], "--seeds -1: a seed is a whole number >= 0"),
                      (["--seeds", "\u00b2"], "--seeds \u00b2: a seed is a whole number >= 0"),
                      (["--seeds", ","], "--seeds names no seed"),
                      (["--resume", "--seeds", "1"], "drop --seeds")):
        assert main(["run", str(s), *bad, *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1


def test_missing_trials_are_listed_per_cell_with_seed_ranges():
    from bench.view import MissingTrial, missing_summary, seed_ranges

    assert seed_ranges([7, 0, 1, 2, 5, 8, 2]) == "0-2, 5, 7-8" and seed_ranges([3]) == "3"
    missing = [MissingTrial("scan", "default", ds, s) for ds in ("cifar10", "stl10") for s in range(10)
               if (ds, s) != ("cifar10", 1)]
    assert missing_summary(missing) == "scan/default on cifar10 seeds 0, 2-9; scan/default on stl10 seeds 0-9"
    assert missing_summary([MissingTrial("kmeans", "default", "digits", 4)]) == "kmeans/default on digits seed 4"


def test_dry_run_of_a_resume_plans_what_the_resume_would_run(tmp_path, capsys):
    """`bench run --resume --dry-run` of a run started with --seeds 1 listed every seed of the suite (the resume itself
    runs only seed 1's unfinished trial): the dry run ignored the resumed run's narrowing and run id."""
    s = tmp_path / "s.yaml"
    s.write_text("name: narrow\nseeds: 3\ndatasets: [digits]\nmethods: [kmeans]\n")
    st = tmp_path / "st"
    assert main(["run", str(s), "--inline", "--no-report", "--store", str(st), "--seeds", "1"]) == 0
    (path,) = (st / "runs").glob("*.json")
    man = json.loads(path.read_text())
    man["status"] = "interrupted"
    man["trials"][0]["status"] = "interrupted"
    path.write_text(json.dumps(man))
    (st / "records" / f"{man['trials'][0]['key']}.json").unlink()
    capsys.readouterr()
    assert main(["run", str(s), "--inline", "--no-report", "--store", str(st), "--resume", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 trial(s) in 1 unit(s)" in out and "seeds [1]" in out, out

"""Issue 16, a newcomer's day: start-up imports, progress and logs, the report as the store's view, single
trials' own listing, where the store goes, readable `bench list`, `bench doctor`, audit provenance, LaTeX marks."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "torchvision", "sklearn", "pandas")


def _modules_after(argv: list[str]) -> tuple[set[str], int]:
    """Run `bench ARGV` in a fresh interpreter; which heavy modules got imported, and the exit code."""
    code = "\n".join([
        "import sys", "from bench.cli import main", "try:", f"    rc = main({argv!r})",
        "except SystemExit as e:", "    rc = e.code",
        f"print('MODS', ','.join(m for m in {HEAVY!r} if m in sys.modules)); print('RC', rc)"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120).stdout
    mods = next(line for line in out.splitlines() if line.startswith("MODS")).split(" ", 1)[1]
    rc = next(line for line in out.splitlines() if line.startswith("RC")).split(" ", 1)[1]
    return set(filter(None, mods.split(","))), int(rc) if rc.lstrip("-").isdigit() else 0


def test_help_argument_errors_and_suite_validation_import_neither_torch_nor_ray(tmp_path):
    assert _modules_after(["--help"]) == (set(), 0)
    assert _modules_after(["run", "--no-such-flag"]) == (set(), 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseeds: [0]\ndatasets: [digits]\nmethods: [kmeans]\nbogus_key: 1\n")
    mods, rc = _modules_after(["run", str(bad), "--store", str(tmp_path / "s")])
    assert rc == 2 and not mods & {"torch", "ray"}
    assert not (tmp_path / "s").exists()


def test_bench_list_reads_metadata_without_networks_or_ray():
    mods, rc = _modules_after(["list"])
    assert rc == 0 and "torch" in mods and not mods & {"ray", "torchvision", "sklearn", "pandas"}


def test_bench_list_prints_readable_types_and_defaults(capsys):
    from bench.registry import describe_method, method_names

    for name in method_names():
        text = describe_method(name)
        for leak in ("PydanticUndefined", "Literal", "typing.", "<class", "NoneType"):
            assert leak not in text, (name, leak)
    dec = describe_method("dec")
    assert "hidden_dims: list[int] = [500, 500, 2000, 10]" in dec and "optimizer: 'sgd'" in dec
    assert "max_minutes: float | None = None" in describe_method("cc")
    assert "variant ich_only: heads='ich'" in describe_method("cc")


def _suite(tmp_path, methods="[test_first_pixel, test_nan]") -> Path:
    s = tmp_path / "s.yaml"
    s.write_text(f"name: view\nseeds: 2\ndatasets: [digits]\nmethods: {methods}\n")
    return s


def test_progress_view_logs_in_the_run_folder_and_failed_trial_tail(tmp_path, capsys):
    args = ["--inline", "--store", str(tmp_path / "st"), "--out", str(tmp_path / "rep")]
    assert main(["run", str(_suite(tmp_path)), *args]) == 1  # test_nan fails seed 1 (NaN loss)
    out, err = capsys.readouterr()
    run_id = json.loads(next((tmp_path / "st/runs").glob("*.json")).read_text())["run_id"]
    logs = tmp_path / "st" / "logs" / run_id
    assert f"logs in {logs}/" in out
    assert (logs / "driver.log").exists() and (logs / "test_nan-default-digits-s1.log").exists()
    assert "FAILED test_nan/default on digits, seed(s) 1: NonFiniteLossError" in err
    assert "last" in err and "test_nan-default-digits-s1.log" in err and "| " in err  # the log's last lines
    assert "4/4 done" in err and "1 failed" in err and "elapsed" in err
    assert (out + err).count("\n") <= 25  # terminal lines; the bar redraws itself with \\r


def test_report_is_the_store_view_only_does_not_hide_methods(tmp_path, capsys):
    s = _suite(tmp_path, "[test_first_pixel, kmeans]")
    store = tmp_path / "st"
    args = ["--inline", "--store", str(store), "--out", str(tmp_path / "rep")]
    assert main(["run", str(s), *args]) == 0
    assert main(["run", str(s), "--only", "kmeans", "--force", *args]) == 0
    out = capsys.readouterr().out
    assert "| test_first_pixel | " in out and "| k-means | " in out  # DEC-like rows do not vanish
    runs = sorted(json.loads(p.read_text())["started_at"] + " " + p.stem for p in (store / "runs").glob("*.json"))
    first, last = runs[0].split()[1], runs[-1].split()[1]
    md = (tmp_path / "rep/view/table.md").read_text()
    assert first in md and last in md  # the report says which runs its records come from
    assert main(["report", "view", "--run", last, "--store", str(store), "--out", str(tmp_path / "r2")]) == 0
    per_run = (tmp_path / "r2/view/table.md").read_text()
    assert "k-means" in per_run and "test_first_pixel" not in per_run.split("Protocol, data")[0]


def test_single_trials_have_their_own_listing_not_a_pseudo_suite(tmp_path, capsys):
    store = ["--store", str(tmp_path / "st")]
    assert main(["trial", "test_first_pixel", "digits", "--set", "pixel=30", *store]) == 0
    capsys.readouterr()
    assert main(["trials", *store]) == 0
    out = capsys.readouterr().out
    assert "| test_first_pixel | digits | 0 | ok |" in out and "pixel=30" in out
    assert main(["history", *store]) == 2  # no suite run: the trial is not one
    assert main(["report", *store]) == 2


def test_default_store_is_the_user_data_dir_and_overridable(tmp_path, monkeypatch):
    from bench.store import default_store_root

    monkeypatch.delenv("BENCH_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_root() == tmp_path / "xdg" / "clusterbench" / "results"
    assert ROOT not in default_store_root().parents
    monkeypatch.setenv("BENCH_STORE", str(tmp_path / "env"))
    assert default_store_root() == tmp_path / "env"


def test_suite_name_or_path_accepted_everywhere(tmp_path, capsys):
    from bench.cli import DEFAULT_SUITE, suite_file, suite_name

    assert suite_file("default") == DEFAULT_SUITE and suite_file(None) == DEFAULT_SUITE
    assert suite_name(str(DEFAULT_SUITE)) == "default" and suite_name("nightly") == "nightly"
    s = _suite(tmp_path, "[test_first_pixel]")
    args = ["--store", str(tmp_path / "st")]
    assert main(["run", str(s), "--inline", "--no-report", *args]) == 0
    assert main(["history", str(s), *args]) == 0  # a path where a name was expected
    assert "| view-" in capsys.readouterr().out
    assert main(["run", "no_such_suite", *args]) == 2
    assert "no suite 'no_such_suite'" in capsys.readouterr().err


def test_doctor_one_line_per_check_and_a_corrupt_file_fails(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "USPS").mkdir(parents=True)
    (data / "USPS" / "usps.h5").write_bytes(b"not the pinned file")
    rc = main(["doctor", "--store", str(tmp_path / "st"), "--data", str(data)])
    out = capsys.readouterr().out
    assert rc == 1 and out.strip().endswith("problem(s) to fix")
    usps = next(line for line in out.splitlines() if "data usps" in line)
    assert usps.startswith("FAIL") and "md5" in usps
    assert any(line.startswith("ok") and "store" in line and str(tmp_path / "st") in line for line in out.splitlines())
    assert any(line.split()[:2] == ["ok", "disk"] for line in out.splitlines())
    assert any(line.startswith(("ok", "warn")) and " gpu " in f" {line} " for line in out.splitlines())


def test_doctor_says_when_the_ray_cluster_does_not_answer(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["doctor", "--store", str(tmp_path / "st"), "--address", f"127.0.0.1:{port}"]) == 1
    ray_line = next(line for line in capsys.readouterr().out.splitlines() if line.split()[1:2] == ["ray"])
    assert ray_line.startswith("FAIL") and f"nothing answers at 127.0.0.1:{port}" in ray_line


def test_audit_says_which_records_it_used(tmp_path):
    from bench.audit import audit, markdown
    from bench.claims import Claim
    from bench.records import ResultRecord

    recs = [ResultRecord(key=f"k{s}", run_id="core-1", method="dec", dataset="mnist", seed=s, status="ok",
                         metrics={"acc": 0.85 + 0.001 * s, "nmi": 0.8, "ari": 0.7}, env={"code_version": "abc123"},
                         config={}, protocol={}, data_md5="m") for s in range(3)]
    claim = Claim(method="dec", variant="default", dataset="mnist", metric="acc", value=0.843, report="single",
                  paper="P", table="T2", source="s")
    md = markdown(audit([claim], recs))
    assert "85.1 (mean)" in md and "3 seed(s) from core-1; code abc123" in md


def test_latex_bold_only_when_significantly_better_else_ties():
    from bench.report import best_marks

    clear = best_marks({"a": 0.9, "b": 0.5}, {"a": [0.90, 0.91, 0.89], "b": [0.50, 0.51, 0.49]})
    assert clear == {"a": "bold"}
    close = best_marks({"a": 0.80, "b": 0.79}, {"a": [0.7, 0.9, 0.8], "b": [0.69, 0.89, 0.79]})
    assert close == {"a": "tie", "b": "tie"}

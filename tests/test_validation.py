"""Every bad input is refused before anything runs: one `error:` line of at most 300 characters, exit 2,
nothing written. One named test per case of issue 12 (the fuzz tests in test_fuzz.py sweep the rest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import MAX_LINE, BenchError, one_line
from bench.suite import MAX_SEEDS, check_gpus, load_suite, parse_suite, safe_yaml
from tests.conftest import ROOT

GOOD = "name: t\nseeds: [0]\ndatasets: [digits]\nmethods: [kmeans]\n"
HAS_GPU = subprocess.run([sys.executable, "-c", "import torch,sys; sys.exit(torch.cuda.is_available())"]).returncode


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A store holding one earlier record and report, and a data cache, all of which must stay as they are."""
    store = tmp_path / "store"
    (store / "records").mkdir(parents=True)
    (store / "records" / "earlier.json").write_text("{}")
    out = tmp_path / "reports"
    (out / "t").mkdir(parents=True)
    (out / "t" / "table.md").write_text("good table")
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*")) if not p.is_fifo()}


def refused(env: Path, capsys, *argv, pattern: str) -> str:
    """Run the CLI in-process; assert exit 2, one short `error:` line containing pattern, nothing written."""
    before = snapshot(env)
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err[-500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-500:]
    assert len(lines[0]) <= MAX_LINE, len(lines[0])
    assert pattern in lines[0], lines[0]
    assert snapshot(env) == before, "a refused command wrote something"
    return lines[0]


def run_suite_text(env: Path, capsys, body: str | bytes, pattern: str, *extra: str) -> str:
    suite = env / "s.yaml"
    suite.write_bytes(body if isinstance(body, bytes) else body.encode())
    return refused(env, capsys, "run", suite, "--inline", "--store", env / "store", "--out", env / "reports",
                   *extra, pattern=pattern)


# -- the suite file itself -------------------------------------------------------------------------------------

def test_suite_path_is_a_folder(env, capsys):
    refused(env, capsys, "run", env / "reports", "--store", env / "store", pattern="is a folder")


def test_suite_path_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "suite.yaml"
    os.mkfifo(fifo)
    # a blocking open() of a FIFO with no writer never returns: run the real CLI with a timeout
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(fifo), "--store", str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "not a regular file (a FIFO" in proc.stderr and not (tmp_path / "st").exists()


def test_suite_symlink_loop_and_missing(env, capsys):
    loop = env / "loop.yaml"
    os.symlink(loop, loop)
    refused(env, capsys, "run", loop, "--store", env / "store", pattern="symlink loop")
    refused(env, capsys, "run", env / "missing.yaml", "--store", env / "store", pattern="cannot read suite file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_suite_unreadable(env, capsys):
    suite = env / "s.yaml"
    suite.write_text(GOOD)
    suite.chmod(0)
    refused(env, capsys, "run", suite, "--store", env / "store", pattern="Permission denied")


def test_non_utf8_suite(env, capsys):
    run_suite_text(env, capsys, b"name: caf\xe9\nseeds: [0]\n", "not UTF-8 text (byte 9")


def test_yaml_alias_bomb_is_refused_quickly_without_echo(env, capsys):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 strings expanded
    line = run_suite_text(env, capsys, "\n".join(lines) + "\n", "once its aliases are expanded")
    assert "lol" not in line


def test_yaml_deep_nesting(env, capsys):
    run_suite_text(env, capsys, "name: " + "[" * 20000 + "]" * 20000 + "\n", "nested more than 32 levels")
    run_suite_text(env, capsys, "name: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nested more than 32 levels")


@pytest.mark.parametrize("tagged", ["name: !!python/object/apply:os.system [echo hi]", "seeds: !!set {1, 2}",
                                    "name: !!binary aGk=", "name: !custom x", "seeds: !!timestamp 2001-12-14"])
def test_yaml_tags(env, capsys, tagged):
    run_suite_text(env, capsys, tagged + "\n", "is not allowed")


def test_recursive_alias_and_repeated_key(env, capsys):
    run_suite_text(env, capsys, "name: &x [a, *x]\n", "refers to the node that contains it")
    run_suite_text(env, capsys, GOOD + "seeds: [1]\n", "key 'seeds' appears twice")


@pytest.mark.parametrize("body,pattern", [("", "the suite is empty"), ("# only a comment\n", "the suite is empty"),
                                          ("- kmeans\n", "must be a YAML mapping"), ("42\n", "must be a YAML mapping"),
                                          ("a: 1\n---\nb: 2\n", "not valid YAML")])
def test_empty_or_non_mapping_file(env, capsys, body, pattern):
    run_suite_text(env, capsys, body, pattern)


# -- keys, types, values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,pattern", [
    (GOOD + "sedes: 3\n", "sedes: unknown key (did you mean 'seeds'?)"),
    (GOOD.replace("methods: [kmeans]", "methods: [{name: kmeans, confg: {}}]"),
     "methods[0].confg: unknown key (did you mean 'config'?)"),
    (GOOD + "resources: {gpu_per_trial: 1}\n", "resources.gpu_per_trial: unknown key (did you mean 'gpus_per_trial'"),
    (GOOD + "tables: [{title: x, rows: [{methd: kmeans}]}]\n", "tables[0].rows[0].methd: unknown key (did you mean"),
])
def test_unknown_keys_suggest_the_closest(env, capsys, body, pattern):
    run_suite_text(env, capsys, body, pattern)


@pytest.mark.parametrize("body,pattern", [
    (GOOD.replace("seeds: [0]", "seeds: zero"), "seeds: Input should be a valid list"),
    (GOOD.replace("seeds: [0]", "seeds: [true]"), "seeds[0]: Input should be a valid integer"),
    (GOOD.replace("seeds: [0]", "seeds: [1.5]"), "seeds[0]: Input should be a valid integer"),
    (GOOD.replace("name: t", "name: 12"), "name: Input should be a valid string"),
    (GOOD + "deterministic: maybe\n", "deterministic: Input should be a valid boolean"),
    (GOOD + "device: tpu\n", "device: Input should be 'auto', 'cpu' or 'cuda'"),
    (GOOD + "resources: {cpus_per_trial: -1}\n", "cpus_per_trial: Input should be greater than 0"),
    (GOOD + "resources: {gpus_per_trial: .nan}\n", "gpus_per_trial: Input should be a finite number"),
    (GOOD + "resources: {gpus_per_trial: 1.5}\n", "a GPU share must be a whole number"),
    (GOOD.replace("methods: [kmeans]", "methods: [{name: kmeans, seed_batch: 0}]"), "seed_batch"),
    (GOOD.replace("methods: [kmeans]", "methods: kmeans"), "methods: Input should be a valid list"),
    (GOOD.replace("methods: [kmeans]", "methods: [{name: kmeans, config: {n_init: many}}]"), "config key 'n_init'"),
])
def test_wrong_types(env, capsys, body, pattern):
    run_suite_text(env, capsys, body, pattern)


@pytest.mark.parametrize("seeds,pattern", [
    ("-3", f"a seed count must be between 1 and {MAX_SEEDS}"), ("0", "between 1 and"),
    ("10000000", f"between 1 and {MAX_SEEDS} (got 10000000)"), ("99999999999999999999999999", "between 1 and"),
    ("[-1]", "greater than or equal to 0"), ("[4294967296]", "less than or equal to 2147483647"),
    (str(list(range(MAX_SEEDS + 1))), f"at most {MAX_SEEDS} items"), ("[0, 0]", "seeds repeat"),
])
def test_negative_or_absurd_seeds_state_the_limit(env, capsys, seeds, pattern):
    run_suite_text(env, capsys, GOOD.replace("seeds: [0]", f"seeds: {seeds}"), pattern)


@pytest.mark.parametrize("bad", ["../../etc", "a b", ".hidden", "x/y", "-rf", "é", "a" * 65, "nul\\0"])
def test_names_must_be_plain_because_they_name_files(env, capsys, bad):
    for field in ("name: t", "datasets: [digits]", "methods: [kmeans]"):
        key = field.split(":")[0]
        value = f'"{bad}"' if key == "name" else f'["{bad}"]'
        run_suite_text(env, capsys, GOOD.replace(field, f"{key}: {value}"), "must be a plain name")
    assert not list(env.rglob("etc"))


def test_method_with_no_variants_and_empty_grid(env, capsys):
    run_suite_text(env, capsys, GOOD.replace("methods: [kmeans]", "methods: [{name: kmeans, variants: []}]"),
                   "variants is empty, so nothing would run")
    for key in ("seeds", "datasets", "methods"):
        line = GOOD.split("\n")[["name", "seeds", "datasets", "methods"].index(key)]
        run_suite_text(env, capsys, GOOD.replace(line, f"{key}: []"), f"the grid is empty ({key} has no entries)")
    run_suite_text(env, capsys, GOOD.replace("methods: [kmeans]", "methods: [{name: kmeans, datasets: []}]"),
                   "datasets is empty")


def test_absurd_grid_is_refused_before_planning(env, capsys):
    body = GOOD.replace("seeds: [0]", "seeds: 1000").replace("datasets: [digits]", "datasets: [" + ", ".join(
        f"d{i}" for i in range(101)) + "]")
    run_suite_text(env, capsys, body, "more than the 100,000 one suite may plan")


@pytest.mark.skipif(bool(HAS_GPU), reason="needs a machine without a GPU")
@pytest.mark.parametrize("extra,pattern", [("device: cuda\n", "asks for device: cuda but this machine"),
                                           ("resources: {gpus_per_trial: 0.25}\n", "gpus_per_trial = 0.25, but"),
                                           ("methods: [{name: kmeans, gpus_per_trial: 1}]\n", "has no GPU")])
def test_gpu_requests_without_a_gpu(env, capsys, extra, pattern):
    body = GOOD.replace("methods: [kmeans]\n", "") if extra.startswith("methods") else GOOD
    run_suite_text(env, capsys, body + extra, pattern)
    suite = env / "s.yaml"
    refused(env, capsys, "run", suite, "--dry-run", "--store", env / "store", pattern=pattern)


@pytest.mark.skipif(bool(HAS_GPU), reason="needs a machine without a GPU")
def test_trial_on_cuda_without_a_gpu(env, capsys):
    refused(env, capsys, "trial", "kmeans", "digits", "--device", "cuda", "--store", env / "store",
            pattern="asks for device: cuda but this machine")


def test_gpu_check_itself():
    spec = parse_suite(safe_yaml(GOOD + "resources: {gpus_per_trial: 2}\n"))
    with pytest.raises(BenchError, match="only 1 GPU"):
        check_gpus(spec, 1.0)
    check_gpus(spec, 2.0)
    check_gpus(spec.model_copy(update={"device": "cpu"}), 0.0)  # device: cpu ignores GPU shares


def test_cpu_share_larger_than_the_machine_is_refused():
    """Ray would keep such a trial PENDING forever (found by a hostile run: cpus_per_trial: 1000)."""
    spec = parse_suite(safe_yaml(GOOD + "resources: {cpus_per_trial: 1000}\n"))
    with pytest.raises(BenchError, match="cpus_per_trial = 1000, but this machine .* has 2 CPU"):
        check_gpus(spec, 0.0, cpus_available=2.0)
    check_gpus(spec, 0.0)  # --inline (no Ray): resources are not used
    check_gpus(parse_suite(safe_yaml(GOOD + "resources: {cpus_per_trial: 2}\n")), 0.0, cpus_available=2.0)


@pytest.mark.parametrize("config, pattern", [
    ("{tol: .inf}", "config key 'tol': Input should be a finite number"),
    ("{tol: .nan}", "config key 'tol': Input should be a finite number"),
    ("{embedding_path: /no/such/features.npy}", "features.npy is not a file; give a .npy"),
])
def test_non_finite_config_values_and_missing_embedding_are_refused_before_running(env, capsys, config, pattern):
    body = GOOD.replace("methods: [kmeans]", f"methods: [{{name: kmeans, config: {config}}}]")
    assert body != GOOD
    run_suite_text(env, capsys, body, pattern)


# -- output folders ----------------------------------------------------------------------------------------------

def test_store_and_out_that_are_files(env, capsys):
    (env / "s.yaml").write_text(GOOD)
    (env / "afile").write_text("x")
    refused(env, capsys, "run", env / "s.yaml", "--store", env / "afile", pattern="--store")
    refused(env, capsys, "run", env / "s.yaml", "--store", env / "afile" / "sub", pattern="which is a file")
    refused(env, capsys, "run", env / "s.yaml", "--store", env / "store", "--out", env / "afile",
            pattern="--out")
    refused(env, capsys, "report", "t", "--store", env / "store", "--out", env / "afile", pattern="--out")
    refused(env, capsys, "audit", "--store", env / "store", "--out", env / "afile", pattern="--out")
    refused(env, capsys, "regress", "t", "--store", env / "afile", pattern="--store")
    refused(env, capsys, "history", "--store", env / "afile", pattern="--store")
    refused(env, capsys, "trial", "kmeans", "digits", "--store", env / "afile", pattern="--store")
    (env / "store" / "runs").write_text("not a folder")
    refused(env, capsys, "run", env / "s.yaml", "--store", env / "store", pattern="its runs/ folder")


def test_read_only_store(env, capsys):
    (env / "s.yaml").write_text(GOOD)
    if os.geteuid() != 0:
        records = env / "store" / "records"
        records.chmod(0o555)
        try:
            refused(env, capsys, "run", env / "s.yaml", "--inline", "--store", env / "store", pattern="not writable")
        finally:
            records.chmod(0o755)
    # /proc takes no new files, even from root: a store there cannot be written
    line = refused(env, capsys, "run", env / "s.yaml", "--inline", "--store", "/proc/clusterbench-store",
                   pattern="not writable")
    assert "/proc" in line


def test_data_cache_that_is_a_file(env, capsys, monkeypatch):
    (env / "s.yaml").write_text(GOOD)
    (env / "cachefile").write_text("x")
    monkeypatch.setenv("BENCH_CACHE", str(env / "cachefile"))
    refused(env, capsys, "run", env / "s.yaml", "--inline", "--store", env / "store", pattern="$BENCH_CACHE")


@pytest.mark.parametrize("var,value,pattern", [
    ("BENCH_CUDA_GRAPHS", "false", "BENCH_CUDA_GRAPHS='false' is neither 0 nor 1"),  # was silently "graphs on"
    ("BENCH_CUDA_GRAPHS", "off", "set BENCH_CUDA_GRAPHS=0"),
    ("BENCH_CHECKPOINT_S", "abc", "BENCH_CHECKPOINT_S='abc' is not a number of seconds >= 0"),
    ("BENCH_CHECKPOINT_S", "-5", "BENCH_CHECKPOINT_S='-5'"),
    ("BENCH_CHECKPOINT_S", "nan", "BENCH_CHECKPOINT_S='nan'"),
    ("BENCH_FAULT_NAN", "1@cluster", "BENCH_FAULT_NAN item '1@cluster' is not SEED@STAGE:ITER"),
    ("BENCH_FAULT_NAN", "x@cluster:3", "is not SEED@STAGE:ITER"),
    ("BENCH_FAULT_NAN", "1@clustr:40", "no loop named 'clustr' injects faults"),  # a typo never fires
])
@pytest.mark.parametrize("command", ["run", "trial"])
def test_malformed_environment_switches_are_refused_before_anything_runs(env, capsys, monkeypatch, var, value,
                                                                          pattern, command):
    """A switch the harness reads from the environment is parsed before planning: one error line, exit 2, nothing
    written (a trial would otherwise raise deep inside, or ignore the value and do the opposite of what was asked)."""
    (env / "s.yaml").write_text(GOOD)
    monkeypatch.setenv(var, value)
    argv = ["run", env / "s.yaml", "--inline", "--out", env / "reports"] if command == "run" else \
        ["trial", "kmeans", "digits"]
    refused(env, capsys, *argv, "--store", env / "store", pattern=pattern)


def test_environment_switches_parse_their_valid_forms(monkeypatch):
    from bench.env import FaultSpec, checkpoint_interval_s, cuda_graphs_enabled, fault_nan_specs

    for var in ("BENCH_CUDA_GRAPHS", "BENCH_CHECKPOINT_S", "BENCH_FAULT_NAN"):
        monkeypatch.delenv(var, raising=False)
    assert cuda_graphs_enabled() and checkpoint_interval_s() == 120.0 and fault_nan_specs() == []
    monkeypatch.setenv("BENCH_CUDA_GRAPHS", " 0 ")
    monkeypatch.setenv("BENCH_CHECKPOINT_S", "0.5")
    monkeypatch.setenv("BENCH_FAULT_NAN", "1@pretrain_layer2:40, 2@cluster:0")
    assert not cuda_graphs_enabled() and checkpoint_interval_s() == 0.5
    assert fault_nan_specs() == [FaultSpec(1, "pretrain_layer2", 40), FaultSpec(2, "cluster", 0)]
    monkeypatch.setenv("BENCH_CUDA_GRAPHS", "1")
    assert cuda_graphs_enabled()


# -- command-line arguments --------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,pattern", [
    (["trial", "kmeans", "digits", "--seed", "x"], "argument --seed: invalid int value"),
    (["trial", "kmeans", "digits", "--seed", "-1"], "seeds[0]: Input should be greater than or equal to 0"),
    (["trial", "kmeans", "digits", "--seed", "123456789012345678901234567890"], "less than or equal to 2147483647"),
    (["trial", "kmeans", "digits", "--set", "n_init"], "--set expects key=value"),
    (["trial", "kmeans", "digits", "--set", "=3"], "the key is empty"),
    (["trial", "kmeans", "digits", "--set", "n_init=[1"], "not valid YAML"),
    (["trial", "kmeans", "digits", "--set", "n_init=!!python/name:os.system"], "is not allowed"),
    (["trial", "kmeans", "digits", "--set", "n_inti=3"], "did you mean 'n_init'"),
    (["trial", "kmeans", "digits", "--set", "n_init=-4"], "config key 'n_init'"),
    (["trial", "kmeans", "digits", "--variant", "../x"], "--variant '../x': must be a plain name"),
    (["trial", "kmeans", "digits", "--variant", "fast"], "no variant 'fast'"),
    (["trial", "kmeans", "digits", "--device", "tpu"], "argument --device: invalid choice"),
    (["trial", "k/means", "digits"], "method 'k/means': must be a plain name"),
    (["trial", "kmeans", "digitz"], "unknown dataset 'digitz' (did you mean 'digits'?)"),
    (["trial", "kmeans"], "the following arguments are required: dataset"),
    (["run", "SUITE", "--only", ","], "--only names no method"),
    (["run", "SUITE", "--only", "dec"], "--only dec: not a method of suite"),
    (["run", "SUITE", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "SUITE", "--dry-run", "--address", "auto"], "leave out --address"),
    (["regress", "t", "--window", "0"], "--window 0"),
    (["regress", "t", "--window", "many"], "invalid int value"),
    (["regress", "../t"], "suite '../t': must be a plain name"),
    (["report", "t", "--run", "nope"], "no run 'nope'"),
    (["list", "deck"], "did you mean 'dec'"),
    (["fly"], "invalid choice: 'fly'"),
    ([], "the following arguments are required: command"),
])
def test_cli_argument_errors(env, capsys, argv, pattern):
    (env / "s.yaml").write_text(GOOD)
    argv = [str(env / "s.yaml") if a == "SUITE" else a for a in argv]
    if argv and argv[0] in ("run", "trial", "report", "regress"):
        argv += ["--store", str(env / "store")]
    refused(env, capsys, *argv, pattern=pattern)


def test_error_line_is_capped_and_keeps_hashes_and_hint():
    path = "/very/" + "long/" * 80 + "train-images-idx3-ubyte.gz"
    msg = f"dataset 'mnist': {path} has md5 {'a' * 32} but data.dvc pins {'b' * 32}; restore it with `dvc pull`"
    line = "error: " + one_line(msg)
    assert len(line) <= MAX_LINE and "a" * 32 in line and "b" * 32 in line and line.endswith("`dvc pull`")
    assert "\n" not in one_line("two\nlines\x1b[31m") and "\x1b" not in one_line("x\x1b[31m")


def test_suite_validation_imports_neither_torch_nor_ray():
    code = ("import sys; from bench.suite import load_suite, check_folder; "
            f"load_suite({str(ROOT / 'suites' / 'default.yaml')!r}); check_folder('.', '--out'); "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_good_suites_still_load():
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        assert load_suite(path).methods

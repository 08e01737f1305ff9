"""Hypothesis-generated suite files and command lines, with a fixed budget (1,002 examples, derandomized):
every one is either accepted or refused with one `error:` line of at most 300 characters; none raises,
none hangs. Most run in-process; a few go through the real console entry in a subprocess.
`python -m bench.perf.fuzz_suites` is the larger drill with the same strategies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import MAX_LINE, BenchError
from bench.perf.fuzz_suites import judge, run_cli, suite_bytes
from bench.suite import SuiteSpec, check_gpus, load_suite
from tests.conftest import ROOT

FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
PER_EXAMPLE_S = 20  # an example still running after this long is a hang (the issue found one at 10 M seeds)


class Hang(Exception):
    pass


class Reached(Exception):
    """run_suite was called: every check before running passed (nothing trains in the fuzz)."""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A scratch folder as the working directory (so no default path lands in the repo), an empty data
    root and data cache, and run_suite replaced by a marker."""
    import bench.runner

    root = tmp_path_factory.mktemp("fuzz")
    (root / "data").mkdir()
    (root / "good.yaml").write_text("name: t\nseeds: [0]\ndatasets: [digits]\nmethods: [kmeans]\n")
    (root / "bad.yaml").write_bytes(b"name: \xff\nseeds: -1\n")
    (root / "afile").write_text("x")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("BENCH_DATA", str(root / "data"))
        mp.setenv("BENCH_CACHE", str(root / "cache"))

        def reached(*args, **kwargs):
            raise Reached

        mp.setattr(bench.runner, "run_suite", reached)
        yield root


def alarm(seconds: float):
    def on_alarm(signum, frame):
        raise Hang(f"example still running after {seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def validate(path: Path) -> SuiteSpec | BenchError:
    alarm(PER_EXAMPLE_S)
    try:
        spec = load_suite(path)
        check_gpus(spec, 0.0)  # the CPU-only CI machine
        return spec
    except BenchError as exc:
        return exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@settings(FUZZ, max_examples=650)
@given(raw=suite_bytes)
def test_fuzzed_suite_files_are_accepted_or_refused_in_one_line(work, raw):
    path = work / "fuzz.yaml"
    path.write_bytes(raw)
    result = validate(path)
    if isinstance(result, BenchError):
        line = f"error: {result}"
        assert "\n" not in line and len(line) <= MAX_LINE, line
        assert result.exit_code == 2
    else:
        assert result.seeds and result.datasets and result.methods and all(m.variants for m in result.methods)


SUBCOMMANDS = ["run", "run", "trial", "trial", "report", "audit", "history", "regress", "list", "bogus"]
FLAGS = ["--inline", "--force", "--only", "--datasets", "--store", "--out", "--data", "--seed", "--set", "--variant",
         "--device", "--run", "--window", "--db", "--rebuild", "--claims", "--dry-run", "--no-report", "-v",
         "--address"]
VALUES = ["kmeans", "dec", "digits", "mnist", "GOOD", "BAD", "FILE", "-1", "0", "3", "99999999999999999999",
          "n_init=2", "n_init=[", "n_init=!!binary aGk=", "max_iter=-5", "=", "auto", "cpu", "cuda", "..", "/", "",
          "kmeans,dec", ",", "a b", "x" * 400]
WITH_STORE = {"run", "trial", "report", "audit", "history", "regress"}
WITH_OUT = {"run", "report", "audit", "regress"}


@settings(FUZZ, max_examples=350)
@given(sub=st.sampled_from(SUBCOMMANDS),
       args=st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES), st.text(max_size=12)), max_size=7))
def test_fuzzed_command_lines_are_accepted_or_refused_in_one_line(work, sub, args):
    names = {"GOOD": work / "good.yaml", "BAD": work / "bad.yaml", "FILE": work / "afile"}
    argv = [sub] + [str(names.get(a, a)) for a in args]
    if sub in WITH_STORE:
        argv += ["--store", str(work / "store")]
    if sub in WITH_OUT:
        argv += ["--out", str(work / "out")]
    try:
        outcome, code, detail = run_cli(argv, PER_EXAMPLE_S)
    except Reached:
        return  # a valid command line: everything checked, run_suite called
    if outcome == "traceback" and "Reached" in detail:
        return
    assert outcome in ("ok", "refused"), (argv, outcome, detail)


@settings(FUZZ, max_examples=2)
@given(raw=suite_bytes)
def test_a_few_fuzzed_suites_through_the_console_entry(work, raw):
    """The real process: import-time behaviour, exit status and stderr as a user sees them."""
    path = work / "sub.yaml"
    path.write_bytes(raw)
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--dry-run", "--store",
                           str(work / "store")], capture_output=True, text=True, timeout=300, cwd=work,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    outcome, code, detail = judge(proc.returncode, proc.stderr)
    assert outcome in ("ok", "refused") and "Traceback" not in proc.stderr, (raw[:200], proc.stderr[-1000:])

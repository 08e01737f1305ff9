"""Hostile values of the BENCH_* variables, the way a user sets them: a real `bench` process, its exit code
and output. A value the harness cannot use is one `error:` line (or a doctor FAIL line), never a traceback
and never an all-clear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)


@pytest.mark.parametrize("value", ["nosuchplugin", " ", "/tmp/a-folder-not-a-py-file", "json.nosuch"])
def test_a_plugin_that_is_no_module_is_one_error_line(tmp_path, value):
    # used to be a ModuleNotFoundError traceback, exit 1, from every command that lists methods
    r = bench("trial", "kmeans", "digits", "--store", str(tmp_path / "st"), BENCH_PLUGINS=value)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines() == [
        f"error: BENCH_PLUGINS names {value!r}, which is neither an importable module nor a path ending in .py; "
        "fix or unset BENCH_PLUGINS"]
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("var,value,says", [
    ("BENCH_CHECKPOINT_S", "abc", "FAIL  environment       BENCH_CHECKPOINT_S='abc' is not a number"),
    ("BENCH_CUDA_GRAPHS", "false", "FAIL  environment       BENCH_CUDA_GRAPHS='false' is neither 0 nor 1"),
    ("BENCH_FAULT_NAN", "1@cluster", "FAIL  environment       BENCH_FAULT_NAN item '1@cluster'"),
    ("BENCH_PLUGINS", "nosuchplugin", "FAIL  environment       BENCH_PLUGINS names 'nosuchplugin'"),
    ("BENCH_CACHE", "A_FILE", "is a file, not a folder; set BENCH_CACHE"),
])
def test_doctor_fails_a_switch_that_bench_run_refuses(tmp_path, var, value, says):
    # `bench doctor` used to say "ready to run" (exit 0) while `bench run` refused these values
    if value == "A_FILE":
        value = str(tmp_path / "file")
        Path(value).write_text("x")
    r = bench("doctor", "--store", str(tmp_path / "st"), "--data", str(tmp_path / "data"), **{var: value})
    assert r.returncode == 1 and says in r.stdout, r.stdout + r.stderr
    assert "ready to run" not in r.stdout and "Traceback" not in r.stderr


def test_doctor_says_the_switches_parse(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    r = subprocess.run([sys.executable, "-m", "bench", "doctor", "--store", str(tmp_path / "st")], cwd=ROOT,
                       capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert "ok    environment       the BENCH_* switches and plugins parse" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("value", ["-1@cluster:40", "1@cluster:-5"])
def test_a_fault_that_can_never_fire_is_refused(tmp_path, value):
    # used to be accepted: no seed or iteration is negative, so the run ended ok as if isolation had been tested
    r = bench("trial", "kmeans", "digits", "--store", str(tmp_path / "st"), BENCH_FAULT_NAN=value)
    assert r.returncode == 2 and f"BENCH_FAULT_NAN item {value!r} is not SEED@STAGE:ITER" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "st").exists()

"""Fuzz drill: generated suite files through the real CLI entry (in-process), counting tracebacks and hangs.

    python -m bench.perf.fuzz_suites [--examples 1200] [--seed 0] [--timeout 20]

Each example is a suite file written to a temporary folder (valid suites, suites with wrong keys, types
and values, YAML with tags, aliases, alias bombs, deep nesting, invalid UTF-8, ...) and run as
``bench run FILE --dry-run --store TMP --data TMP`` through :func:`bench.cli.main`: everything is
checked and planned, nothing trains. An example passes when the command exits 0 (a valid suite, planned)
or 2 with exactly one ``error: ...`` line of at most 300 characters. A *traceback* is any exception
that escapes ``main``; a *hang* is an example still running after ``--timeout`` seconds (SIGALRM).
Prints the counts by outcome and the first few offenders; exit status 1 when any example failed.

The strategies here are also what tests/test_fuzz.py draws from (with a smaller, fixed budget).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bench.errors import MAX_LINE

METHODS = ["kmeans", "dec", "idec", "ae_kmeans", "cc", "simclr_kmeans"]
DATASETS = ["digits", "mnist", "usps", "cifar10", "stl10"]
TOP_KEYS = ["name", "description", "seeds", "datasets", "methods", "protocol", "resources", "device",
            "deterministic", "tables"]
TYPOS = ["sedes", "method", "dataset", "resource", "Name", "seed", "devices", "table", ""]

scalars = st.one_of(st.sampled_from([None, True, False, 0, -1, 3, 2**31, 2**64, -(2**70), 0.5, -0.0, float("nan"),
                                     float("inf"), "", "../x", "a b", "é", "/etc/passwd", "-rf", ".hidden", "x" * 80,
                                     "1e-3", "kmeans", "digits", "default"]),
                    st.integers(), st.floats(), st.text(max_size=16))
#: any YAML-able value: what a confused or hostile user might put anywhere (kept small: generation is the
#: fuzz tests' main cost)
junk = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=5)


def maybe(valid):
    """Mostly valid values, sometimes junk."""
    return st.one_of(valid, valid, junk)


names = st.one_of(st.sampled_from(["t", "nightly", "a-b_c", "fuzz1"]), st.text(max_size=70))
seeds = st.one_of(st.integers(-5, 12), st.integers(-(2**40), 2**40), st.sampled_from([10_000_000, 1000, 1001]),
                  st.lists(st.integers(-3, 2**33), max_size=6), st.lists(st.integers(0, 5), max_size=4, unique=True))
configs = st.dictionaries(st.sampled_from(["n_init", "max_iter", "lr", "finetune_iters", "update_interval", "bogus"]),
                          st.one_of(st.integers(-5, 500), st.floats(-1, 1e3), junk), max_size=3)
method_entries = st.one_of(
    st.sampled_from(METHODS + ["kmeanz", "../dec"]),
    st.fixed_dictionaries({"name": maybe(st.sampled_from(METHODS))}, optional={
        "variants": maybe(st.lists(st.sampled_from(["default", "fast", "ich_only", "id"]), max_size=3)),
        "config": maybe(configs),
        "config_by_dataset": maybe(st.dictionaries(st.sampled_from(DATASETS), configs, max_size=2)),
        "datasets": maybe(st.lists(st.sampled_from(DATASETS), max_size=3)),
        "gpus_per_trial": maybe(st.floats(-1, 4)),
        "seed_batch": maybe(st.integers(-2, 2000)),
        "confg": junk,
    }))
resources = st.fixed_dictionaries({}, optional={
    "cpus_per_trial": maybe(st.floats(-1, 64)), "gpus_per_trial": maybe(st.floats(-1, 3)),
    "max_concurrent_trials": maybe(st.integers(-1, 100)), "gpu_per_trial": junk})
tables = st.lists(st.fixed_dictionaries({"title": maybe(st.text(max_size=20)), "rows": maybe(st.lists(
    st.fixed_dictionaries({"method": maybe(st.sampled_from(METHODS))}, optional={"variant": junk, "label": junk}),
    max_size=3))}, optional={"metrics": maybe(st.lists(st.sampled_from(["acc", "nmi", "ari", "f1"]), max_size=3)),
                             "datasets": junk}), max_size=2)
#: suites that should plan: valid names and values only (digits needs no data files)
valid_suites = st.fixed_dictionaries(
    {"name": st.sampled_from(["t", "nightly", "a-b_c", "fuzz1"]),
     "seeds": st.one_of(st.integers(1, 5), st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=4, unique=True)),
     "datasets": st.just(["digits"]),
     "methods": st.lists(st.one_of(
         st.sampled_from(METHODS[:4]),
         st.fixed_dictionaries({"name": st.sampled_from(["kmeans", "dec"])}, optional={
             "config": st.fixed_dictionaries({}, optional={"max_iter": st.integers(1, 500)}),
             "seed_batch": st.integers(1, 10), "gpus_per_trial": st.just(0)})),
         min_size=1, max_size=3, unique_by=lambda m: m if isinstance(m, str) else m["name"])},
    optional={"resources": st.fixed_dictionaries({}, optional={"cpus_per_trial": st.integers(1, 4),
                                                               "max_concurrent_trials": st.integers(1, 8)}),
              "device": st.sampled_from(["auto", "cpu"]), "deterministic": st.booleans(),
              "description": st.text(max_size=40),
              "protocol": st.fixed_dictionaries({}, optional={"train_split": st.sampled_from(["train", "all"])})})
suite_dicts = st.one_of(
    valid_suites, valid_suites,
    st.fixed_dictionaries(
        {"name": maybe(names), "seeds": maybe(seeds), "datasets": maybe(st.lists(st.sampled_from(DATASETS + ["dgits"]),
                                                                               max_size=3)),
         "methods": maybe(st.lists(method_entries, max_size=3))},
        optional={"protocol": maybe(st.fixed_dictionaries({}, optional={
                      "train_split": st.sampled_from(["train", "test", "all", "val"]),
                      "eval_split": st.sampled_from(["train", "test", "all"])})),
                  "resources": maybe(resources), "device": maybe(st.sampled_from(["auto", "cpu", "cuda", "tpu"])),
                  "deterministic": maybe(st.booleans()), "tables": maybe(tables), "description": junk}),
    st.dictionaries(st.sampled_from(TOP_KEYS + TYPOS), junk, max_size=6),
    junk,
)

SNIPPETS = ["!!python/object/apply:os.system ['true'] ", "!!binary aGk= ", "!custom ", "&a ", "*a ", "*nowhere ",
            "<<: *a\n", "\t", "\x00", "\ufeff", "[" * 40, "{" * 40, "]", "---\n", "%YAML 1.1\n", "? ", ": ", "- ",
            "'", '"', "\\", "\n  ", "!!set ", "!!timestamp "]


def bomb(width: int, depth: int) -> str:
    """The classic "billion laughs" document: width**depth strings once the aliases are expanded."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


@st.composite
def mutated(draw, base):
    """A YAML text with snippets spliced in at random places (tags, aliases, brackets, control characters)."""
    text = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=6))) + text[pos:]
    return text


def _dump(value) -> str:
    return yaml.safe_dump(value, allow_unicode=True, sort_keys=False)


suite_yaml = suite_dicts.map(_dump)
suite_texts = st.one_of(
    suite_yaml, suite_yaml, mutated(suite_yaml),
    st.builds(bomb, st.integers(2, 12), st.integers(2, 9)),
    st.integers(30, 3000).map(lambda n: "name: " + "[" * n + "]" * n + "\n"),
    st.text(max_size=200),
)
#: file contents: UTF-8 text, or text with bytes that are not UTF-8 spliced in
suite_bytes = st.one_of(
    suite_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(suite_texts, st.binary(min_size=1, max_size=4)).map(
        lambda p: p[0].encode("utf-8", "surrogatepass")[:20] + b"\xff" + p[1] + p[0].encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
)


class Hang(Exception):
    pass


def run_cli(argv: list[str], timeout_s: float) -> tuple[str, int | None, str]:
    """(outcome, exit code, detail) of one in-process CLI call: ok, refused, bad-error-line, traceback or hang."""
    from bench.cli import main

    def on_alarm(signum, frame):
        raise Hang

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except Hang:
        return "hang", None, f"still running after {timeout_s} s"
    except SystemExit as exc:  # --help
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 - that is what we count
        return "traceback", None, traceback.format_exc(limit=-3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return judge(code, err.getvalue())


def judge(code: int, stderr: str) -> tuple[str, int, str]:
    """Exit 0, or exit 2 with one `error:` line of at most MAX_LINE characters (log lines before it are fine)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code == 0:
        return "ok", code, ""
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if code == 2 and len(errors) == 1 and lines[-1] == errors[0] and len(errors[0]) <= MAX_LINE:
        return "refused", code, errors[0]
    return "bad-error-line", code, stderr[-400:]


def drill(n_examples: int, seed: int, timeout_s: float, workdir: Path) -> Counter:
    counts: Counter = Counter()
    offenders: list[str] = []
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    path = workdir / "suite.yaml"
    # warm-up, not counted: the first dry run imports torch and hashes the bundled data (tens of seconds on a
    # loaded machine), which is start-up, not a hang
    warm = run_cli(["run", "--dry-run", "--store", str(workdir / "store"), "--data", str(data)], 600)
    print(f"warm-up (suites/default.yaml, not counted): {warm[0]}", file=sys.stderr)

    @hypothesis_seed(seed)
    @settings(max_examples=n_examples, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])
    @given(suite_bytes)
    def one(raw: bytes) -> None:
        path.write_bytes(raw)
        outcome, code, detail = run_cli(["run", str(path), "--dry-run", "--store", str(workdir / "store"),
                                         "--data", str(data)], timeout_s)
        counts[outcome] += 1
        if outcome in ("traceback", "hang", "bad-error-line") and len(offenders) < 5:
            offenders.append(f"--- {outcome} (exit {code}) on {raw[:200]!r}\n{detail}")

    one()
    for o in offenders:
        print(o, file=sys.stderr)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds before an example counts as a hang")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.CRITICAL)  # the dry runs' own log lines are not what is measured
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        counts = drill(args.examples, args.seed, args.timeout, Path(tmp))
    total = sum(counts.values())
    print(f"fuzz drill: {total} generated suites through `bench run FILE --dry-run` in "
          f"{time.perf_counter() - t0:.1f} s: {counts['ok']} planned (exit 0), {counts['refused']} refused "
          f"(exit 2, one error line), {counts['traceback']} tracebacks, {counts['hang']} hangs, "
          f"{counts['bad-error-line']} bad error lines")
    return 0 if counts["traceback"] == counts["hang"] == counts["bad-error-line"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

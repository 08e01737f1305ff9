"""Developer sessions. They reuse the current interpreter (`-db none` is not needed): the heavy
dependencies (torch, ray) take minutes to install, so sessions run in the active environment."""

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session):
    """The test suite (what CI runs)."""
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session):
    session.run("ruff", "check", "bench", "methods", "tests", "noxfile.py")


@nox.session
def demo(session):
    """The embedded default suite end to end: k-means and DEC on the bundled digits, CPU."""
    session.run("bench", "run", *session.posargs)


@nox.session
def bench(session):
    """Speed benchmarks (pytest-benchmark). On a GPU machine they measure the CUDA paths."""
    session.run("python", "-m", "pytest", "tests/benchmarks", "--benchmark-enable", "--benchmark-only",
                "-q", *session.posargs)
    import torch

    if torch.cuda.is_available():  # the full DEC recipe, 1 seed vs 10 batched (minutes; GPU only)
        session.run("python", "-m", "bench.perf.dec_seeds", "--seeds", "1", "10")

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT / "data"

os.environ.setdefault("BENCH_CODE_VERSION", "test-code")  # records made by tests carry a fixed code version
# a command a test runs without --store writes to a throw-away store, never the user's or the repo's
os.environ["BENCH_STORE"] = tempfile.mkdtemp(prefix="bench-test-store-")


@pytest.fixture
def two_threads():
    """torch at 2 intra-op threads for the test (the CPU equality tests' arithmetic), restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def digits():
    """The bundled digits, all images: (uint8 images, labels as a NumPy array)."""
    import numpy as np

    from bench.data import load_dataset

    x, y = load_dataset("digits").split("all")
    return x, np.asarray(y)


@pytest.fixture
def store(tmp_path):
    from bench.store import ResultStore

    return ResultStore(tmp_path / "store")


def have_real(*rel: str) -> bool:
    return all((REAL_DATA / r).exists() for r in rel)


def skip_without(*rel: str):
    missing = [r for r in rel if not (REAL_DATA / r).exists()]
    return pytest.mark.skipif(bool(missing), reason=f"real data file(s) {missing} absent under data/: run `dvc pull`")

# test-only methods (NaN loss, wrong output length, a worker that dies), visible to Ray workers too
os.environ["BENCH_PLUGINS"] = str(Path(__file__).resolve().parent / "plugins" / "fake_methods.py")


class Cut(BaseException):
    """A kill in the middle of a trial, simulated (not an Exception: nothing records it as a failure)."""


def count_and_cut(monkeypatch, module, name: str) -> dict:
    """Wrap ``module.name`` to count its calls and raise :class:`Cut` at call ``calls["cut_at"]`` (None: never)."""
    real = getattr(module, name)
    calls = {"n": 0, "cut_at": None}

    def counting(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["cut_at"]:
            raise Cut
        return real(*a, **k)

    monkeypatch.setattr(module, name, counting)
    return calls


"""No result is ever computed from unverified bytes: flip a byte in every file and every cache a trial reads.

A flipped source file stops the trial with one line (before anything is written); a flipped, replaced or
half-written cache is rebuilt from the verified source, and the trial gives exactly the result it gave on
the good bytes. Files in the official formats are made here; the real MNIST files are used when present."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.data import load_dataset
from bench.errors import DataError
from tests.conftest import REAL_DATA, skip_without
from tests.test_data import write_idx

MNIST_RAW = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]


def flip(path: Path, offset: int | None = None) -> None:
    """Invert one byte in place (the middle one unless told), as bit rot or a bad copy would."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def dvc_project(tmp_path: Path) -> Path:
    """A project folder as `dvc add data` leaves it: data/, data.dvc and the .dir manifest in .dvc/cache."""
    proj = tmp_path / "proj"
    write_idx(proj / "data", "MNIST", n_train=60, n_test=20, seed=5)
    files = sorted(p for p in (proj / "data").rglob("*") if p.is_file())
    entries = [{"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(proj / "data").as_posix()}
               for p in files]
    blob = json.dumps(entries).encode()
    dir_md5 = hashlib.md5(blob).hexdigest() + ".dir"
    obj = proj / ".dvc" / "cache" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]
    obj.parent.mkdir(parents=True)
    obj.write_bytes(blob)
    (proj / "data.dvc").write_text(f"outs:\n- md5: {dir_md5}\n  path: data\n")
    return proj


def trial(proj: Path, store: Path, capsys) -> tuple[int, dict | None, str]:
    code = main(["trial", "kmeans", "mnist", "--set", "n_init=2", "--force", "--data", str(proj / "data"),
                 "--store", str(store)])
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    return code, (rows[0] if rows else None), out.err


def same_content(path: Path, before: bytes) -> bool:
    """The file is back as it was; a rebuilt stamp differs only in the mtimes it records."""
    if path.name != "stamp.json":
        return path.read_bytes() == before

    def md5s(raw: bytes) -> dict:
        return {k: (v["size"], v["md5"]) for k, v in json.loads(raw)["files"].items()}
    return md5s(path.read_bytes()) == md5s(before)


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "unpacked").rglob("*") if p.is_file() and p.suffix != ".lock")


def test_flipped_bytes_in_every_file_and_cache_a_trial_reads(tmp_path, monkeypatch, capsys):
    proj, store, cache = dvc_project(tmp_path), tmp_path / "store", tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    code, good, _ = trial(proj, store, capsys)
    assert code == 0 and good["status"] == "ok"
    cached = cached_files(cache)
    assert len(cached) == 8  # 4 unpacked files + their 4 stamps

    # the cache: every unpacked file and every stamp, flipped one at a time -> rebuilt, same result
    for path in cached:
        before = path.read_bytes()
        flip(path, offset=len(before) - 1 if path.name == "stamp.json" else None)
        code, row, err = trial(proj, store, capsys)
        assert code == 0 and row["metrics"] == good["metrics"], (path, row)
        assert same_content(path, before), f"{path} was not rebuilt"

    # a flip whose mtime is put back is still seen (ctime moves), and so is a truncated copy
    target = next(p for p in cached if p.name == "train-images-idx3-ubyte")
    st = target.stat()
    flip(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, row, _ = trial(proj, store, capsys)
    assert code == 0 and row["metrics"] == good["metrics"] and target.stat().st_size == st.st_size
    target.write_bytes(target.read_bytes()[:100])
    code, row, _ = trial(proj, store, capsys)
    assert code == 0 and row["metrics"] == good["metrics"]

    # a cached file replaced by a folder, or by a symlink loop: rebuilt as well
    target.unlink()
    target.mkdir()
    code, row, _ = trial(proj, store, capsys)
    assert code == 0 and row["metrics"] == good["metrics"] and target.is_file()
    target.unlink()
    os.symlink(target, target)
    code, row, _ = trial(proj, store, capsys)
    assert code == 0 and row["metrics"] == good["metrics"] and target.is_file() and not target.is_symlink()

    # the sources: each flipped byte stops the trial with one line naming the file; nothing is written
    records = sorted(p.name for p in (store / "records").iterdir())
    for name in MNIST_RAW:
        src = proj / "data" / "MNIST" / "raw" / name
        before = src.read_bytes()
        flip(src)
        code, row, err = trial(proj, store, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and row is None and lines[-1].startswith("error: ") and name in lines[-1]
        assert "md5" in lines[-1] and len(lines[-1]) <= 300
        src.write_bytes(before)
    assert sorted(p.name for p in (store / "records").iterdir()) == records


def test_source_changed_between_planning_and_loading_fails_the_seed(tmp_path, store):
    """The worker re-verifies what the driver planned with: a file changed in between fails the trial."""
    from bench.plan import plan_suite
    from bench.suite import parse_suite
    from bench.trial import execute_unit

    proj = dvc_project(tmp_path)
    spec = parse_suite({"name": "c", "seeds": [0], "datasets": ["mnist"], "methods": ["kmeans"]})
    plan = plan_suite(spec, store, proj / "data", cache_dir=tmp_path / "cache")
    flip(proj / "data" / "MNIST" / "raw" / MNIST_RAW[0])
    (rec,) = execute_unit(plan.units[0])
    assert rec.status == "failed" and "DataError" in rec.error and MNIST_RAW[0] in rec.error and not rec.metrics


@pytest.mark.parametrize("case,pattern", [("folder", "is a folder where a file belongs"),
                                          ("loop", "is a symlink loop"), ("fifo", "not a regular file"),
                                          ("unreadable", "cannot be read")])
def test_data_file_replaced_by_something_else_is_one_line(tmp_path, capsys, monkeypatch, case, pattern):
    if case == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    proj = dvc_project(tmp_path)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    src = proj / "data" / "MNIST" / "raw" / MNIST_RAW[1]
    if case == "unreadable":
        src.chmod(0)
    else:
        src.unlink()
        {"folder": src.mkdir, "loop": lambda: os.symlink(src, src), "fifo": lambda: os.mkfifo(src)}[case]()
    code, row, err = trial(proj, tmp_path / "store", capsys)
    lines = err.strip().splitlines()
    assert code == 2 and row is None and lines[-1].startswith("error: ") and pattern in lines[-1], err
    assert MNIST_RAW[1] in lines[-1] and not (tmp_path / "store" / "runs").exists()


def _tiny_cifar(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(7)
    folder = tmp_path / "build" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (4, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, 4)
        rec.tofile(folder / name)
    archive = tmp_path / "data" / "cifar-10-batches-bin.tar.xz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    return {"cifar-10-batches-bin.tar.xz": hashlib.md5(archive.read_bytes()).hexdigest()}


def test_cifar10_unpacked_members_are_verified_and_rebuilt(tmp_path):
    pinned = _tiny_cifar(tmp_path)
    root, cache = tmp_path / "data", tmp_path / "cache"
    good = load_dataset("cifar10", root, cache, pinned=pinned).split("all")
    members = cached_files(cache)
    assert len(members) == 7  # six batches and the stamp
    for path in members:
        before = path.read_bytes()
        flip(path, offset=len(before) - 1 if path.name == "stamp.json" else None)
        again = load_dataset("cifar10", root, cache, pinned=pinned).split("all")
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(good, again)), path
        assert same_content(path, before)
    extra = members[0].parent / "data_batch_1.bin"
    extra.unlink()  # a half-extracted copy (a crash mid-unpack) is rebuilt, not read
    again = load_dataset("cifar10", root, cache, pinned=pinned).split("all")
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(good, again))
    flip(root / "cifar-10-batches-bin.tar.xz")
    with pytest.raises(DataError, match="cifar-10-batches-bin.tar.xz has md5"):
        load_dataset("cifar10", root, cache, pinned=pinned)


@pytest.mark.realdata
@skip_without(*(f"MNIST/raw/{n}" for n in MNIST_RAW))
def test_real_mnist_cache_flips_are_rebuilt(tmp_path):
    """The real files under data/ are only read; their unpacked copies in a temporary cache are flipped."""
    cache = tmp_path / "cache"
    good = load_dataset("mnist", REAL_DATA, cache).split("all")
    unpacked = [p for p in cached_files(cache) if p.name != "stamp.json"]
    assert sorted(p.name for p in unpacked) == sorted(n[:-3] for n in MNIST_RAW)
    for path in unpacked:
        before = hashlib.md5(path.read_bytes()).hexdigest()
        flip(path)
        again = load_dataset("mnist", REAL_DATA, cache).split("all")
        assert np.array_equal(good[0].numpy(), again[0].numpy()) and np.array_equal(good[1].numpy(),
                                                                                    again[1].numpy())
        assert hashlib.md5(path.read_bytes()).hexdigest() == before

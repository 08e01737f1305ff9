"""Dataset registry: md5 checks, parsers on tiny files in the official formats, splits; real files when present."""

import bz2
import gzip
import hashlib
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import DATASETS, combined_md5, dvc_manifest, get_dataset_spec, load_dataset, md5_file
from bench.errors import BenchError, DataError
from tests.conftest import ROOT, skip_without


def _md5s(root: Path, rels) -> dict:
    return {r: hashlib.md5((root / r).read_bytes()).hexdigest() for r in rels}


def write_idx(root: Path, folder: str, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">iiii", 2051, n, 28, 28) + x.tobytes())
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">ii", 2049, n) + y.tobytes())
        arrays[prefix] = (x, y)
    return arrays


def test_mnist_parser_on_tiny_idx_files(tmp_path):
    arrays = write_idx(tmp_path, "MNIST")
    spec = get_dataset_spec("mnist")
    ds = load_dataset("mnist", tmp_path, tmp_path / "cache", pinned=_md5s(tmp_path, spec.files))
    xtr, ytr = ds.split("train")
    assert xtr.shape == (12, 1, 28, 28) and xtr.dtype == torch.uint8
    assert np.array_equal(xtr[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(ytr.numpy(), arrays["train"][1])
    xall, yall = ds.split("all")
    assert xall.shape[0] == 17 and torch.equal(yall[12:], torch.as_tensor(arrays["t10k"][1]).long())
    assert ds.md5 == combined_md5(ds.file_md5s)
    # the DVC-tracked folder stays untouched: the gunzipped copies live in the cache
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(Path(r).name for r in spec.files)


def test_md5_mismatch_names_file_and_both_hashes_and_stops(tmp_path):
    write_idx(tmp_path, "MNIST")
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", tmp_path, tmp_path / "cache", pinned={})  # the official md5s do not match fakes
    msg = str(exc.value)
    assert "train-images-idx3-ubyte.gz" in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert "dvc" in msg and "\n" not in msg
    have = md5_file(tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz")
    assert have in msg


def test_missing_file_names_file_and_fetch_command(tmp_path):
    with pytest.raises(DataError, match=r"missing file .*train-images-idx3-ubyte\.gz.*dvc pull"):
        load_dataset("fashion-mnist", tmp_path)  # wrong: FashionMNIST folder absent
    with pytest.raises(DataError, match="FashionMNIST"):
        load_dataset("fashion-mnist", tmp_path)


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(BenchError, match="did you mean 'mnist'"):
        get_dataset_spec("mnsit")


def test_cifar10_binary_archive(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "build" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    expected = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (3, 3073), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, 3)
        rec.tofile(folder / name)
        expected[name] = rec
    with tarfile.open(tmp_path / "cifar-10-batches-bin.tar.xz", "w:xz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    ds = load_dataset("cifar10", tmp_path, tmp_path / "cache",
                      pinned=_md5s(tmp_path, ["cifar-10-batches-bin.tar.xz"]))
    xtr, ytr = ds.split("train")
    xte, yte = ds.split("test")
    assert xtr.shape == (15, 3, 32, 32) and xte.shape == (3, 3, 32, 32)
    rec = expected["data_batch_1.bin"]
    assert np.array_equal(xtr[0].numpy().ravel(), rec[0, 1:]) and ytr[0] == rec[0, 0]  # R, G, B planes in order
    assert np.array_equal(yte.numpy(), expected["test_batch.bin"][:, 0])


def test_cifar100_uses_the_20_official_superclasses(tmp_path):
    rng = np.random.default_rng(2)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 6), ("test", 4)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "coarse_labels": list(range(n)),
                 "fine_labels": [99] * n}
        (d / name).write_bytes(pickle.dumps(entry))
    spec = get_dataset_spec("cifar100-20")
    ds = load_dataset("cifar100-20", tmp_path, pinned=_md5s(tmp_path, spec.files))
    _, y = ds.split("all")
    assert y.tolist() == list(range(6)) + list(range(4)) and spec.n_classes == 20


def test_stl10_through_torchvision_parser(tmp_path):
    from torchvision.datasets import STL10

    rng = np.random.default_rng(3)
    d = tmp_path / "stl10_binary"
    d.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(d / f"{split}_X.bin")
        np.array([1, 10, 5][:n], dtype=np.uint8).tofile(d / f"{split}_y.bin")
    rng.integers(0, 256, (4, 3, 96, 96), dtype=np.uint8).tofile(d / "unlabeled_X.bin")
    spec = get_dataset_spec("stl10")
    assert "stl10_binary/unlabeled_X.bin" in spec.files  # verified like every other file a trial may read
    ds = load_dataset("stl10", tmp_path, pinned=_md5s(tmp_path, spec.files))
    x, y = ds.split("train")
    assert x.shape == (3, 3, 96, 96) and y.tolist() == [0, 9, 4]  # stored 1..10, reported 0..9
    # the unlabeled split: never in a labelled split, same orientation as torchvision's parser (H/W transposed)
    xu = ds.splits.x_unlabeled
    assert xu.shape == (4, 3, 96, 96) and xu.dtype == torch.uint8 and ds.split("all")[0].shape[0] == 5
    unchecked = type("Unchecked", (STL10,), {"_check_integrity": lambda self: True})
    assert np.array_equal(xu.numpy(), unchecked(str(tmp_path), split="unlabeled").data)
    assert np.array_equal(x.numpy(), unchecked(str(tmp_path), split="train").data)


def test_stl10_unlabeled_file_is_checked(tmp_path):
    rng = np.random.default_rng(5)
    d = tmp_path / "stl10_binary"
    d.mkdir()
    for split, n in (("train", 2), ("test", 2)):
        rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(d / f"{split}_X.bin")
        np.array([1, 2][:n], dtype=np.uint8).tofile(d / f"{split}_y.bin")
    spec = get_dataset_spec("stl10")
    pinned = _md5s(tmp_path, [f for f in spec.files if "unlabeled" not in f])
    with pytest.raises(DataError, match="missing file .*unlabeled_X.bin"):
        load_dataset("stl10", tmp_path, pinned=pinned)
    (d / "unlabeled_X.bin").write_bytes(bytes(3 * 96 * 96 + 7))  # pinned as it is, but not whole images
    with pytest.raises(DataError, match="not a whole, non-zero number"):
        load_dataset("stl10", tmp_path, pinned=_md5s(tmp_path, spec.files))


def test_usps_reads_h5_and_cross_checks_labels_with_torchvision(tmp_path):
    h5py = pytest.importorskip("h5py")
    d = tmp_path / "USPS"
    d.mkdir()
    rng = np.random.default_rng(4)
    xtr = rng.random((5, 256), dtype=np.float32)
    with h5py.File(d / "usps.h5", "w") as f:
        f.create_dataset("train/data", data=xtr)
        f.create_dataset("train/target", data=np.arange(5))
        f.create_dataset("test/data", data=xtr[:2])
        f.create_dataset("test/target", data=np.arange(2))
    lines = []
    for label in (3, 10):
        vals = rng.uniform(-1, 1, 256)
        lines.append(f"{label} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(vals)))
    (d / "usps.t.bz2").write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    spec = get_dataset_spec("usps")
    with pytest.raises(DataError, match="test labels"):  # h5 test labels 0, 1 vs LIBSVM 3, 10
        load_dataset("usps", tmp_path, pinned=_md5s(tmp_path, spec.files))
    with h5py.File(d / "usps.h5", "a") as f:
        f["test/target"][...] = np.array([2, 9])
    ds = load_dataset("usps", tmp_path, pinned=_md5s(tmp_path, spec.files))
    x, y = ds.split("train")
    assert x.shape == (5, 1, 16, 16) and x.dtype == torch.uint8
    assert np.abs(x.numpy().reshape(5, 256) / 255.0 - xtr).max() <= 0.5 / 255 + 1e-6
    xte, yte = ds.split("test")
    assert yte.tolist() == [2, 9] and xte.shape == (2, 1, 16, 16)


def test_digits_needs_no_file_and_has_one_split():
    ds = load_dataset("digits")
    x, y = ds.split("all")
    assert x.shape == (1797, 1, 8, 8) and int(x.max()) == 255 and len(set(y.tolist())) == 10
    with pytest.raises(BenchError, match="no test split"):
        ds.split("test")


@pytest.mark.realdata
@skip_without("MNIST/raw/train-images-idx3-ubyte.gz")
def test_registry_md5s_equal_the_dvc_manifest():
    manifest = dvc_manifest(ROOT)
    if manifest is None:
        pytest.skip("DVC's .dir manifest is in neither .dvc/cache nor the local remote: run `dvc pull`")
    for spec in DATASETS.values():
        for rel, md5 in spec.files.items():
            if rel in manifest:
                assert manifest[rel] == md5, rel


@pytest.mark.realdata
@skip_without("MNIST/raw/train-images-idx3-ubyte.gz", "MNIST/raw/t10k-images-idx3-ubyte.gz")
def test_real_mnist_has_70000_images():
    ds = load_dataset("mnist", ROOT / "data")
    x, y = ds.split("all")
    assert x.shape == (70000, 1, 28, 28)
    assert torch.bincount(y).tolist()[:2] == [6903, 7877]


@pytest.mark.realdata
@skip_without("USPS/usps.h5", "USPS/usps.t.bz2")
def test_real_usps_splits():
    ds = load_dataset("usps", ROOT / "data")
    x, y = ds.split("all")
    assert x.shape == (9298, 1, 16, 16) and torch.bincount(y).tolist()[0] == 1553


@pytest.mark.realdata
@skip_without("cifar-10-batches-bin.tar.xz")
def test_real_cifar10_members_verified_and_balanced(tmp_path):
    ds = load_dataset("cifar10", ROOT / "data")
    x, y = ds.split("all")
    assert x.shape == (60000, 3, 32, 32) and torch.bincount(y).tolist() == [6000] * 10


def test_corrupt_file_is_reported_even_with_bytes_of_right_size(tmp_path):
    arrays = write_idx(tmp_path, "MNIST")
    pinned = _md5s(tmp_path, get_dataset_spec("mnist").files)
    target = tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz has md5"):
        load_dataset("mnist", tmp_path, tmp_path / "cache", pinned=pinned)
    assert arrays  # files were written



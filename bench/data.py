"""Dataset registry: files pinned by md5, read with torchvision's parsers, split per protocol.

Files live under ``data/`` in torchvision's layout and are pinned by ``data.dvc`` (``dvc pull``
restores them). Before anything trains, every file of the dataset is hashed and compared with the
md5 that DVC's manifest for ``data.dvc`` records (or, where that manifest is not available locally,
with the official md5 listed here, which is the same value). A missing file or a mismatch stops
the trial with one line naming the file, both hashes and the command that fixes it; so does a file
that is a folder, a symlink loop or unreadable.

Caches are verified too: an archive is unpacked into ``$BENCH_CACHE/unpacked/<archive md5>/`` while its
bytes are hashed (the unpacked copy comes from exactly the pinned bytes), and a stamp (``stamp.json``)
records each unpacked file's size, mtime and md5. Each process re-hashes a cached file the first time it
uses it, and again whenever its inode, size, mtime or ctime change; a copy that does not match its stamp
(or has none) is rebuilt from the verified source, never read.

Splits: ``train``, ``test`` and ``all`` (= train + test, the DEC/CC protocol). Images come back as
``uint8 [N, C, H, W]``; labels as ``int64 [N]``; labels stay with the harness.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import json
import logging
import os
import pickle
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from bench.errors import BenchError, DataError

FETCH_HINT = "run `dvc pull` in the project root (README: Data)"
RESTORE_HINT = "restore it with `dvc checkout data` or `dvc pull`"
log = logging.getLogger("bench.data")


@dataclasses.dataclass(frozen=True)
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    #: images without labels that some papers add to training only (STL-10's 100,000); never evaluated.
    #: May be a lazy (memory-mapped) view: nothing is read until a method uses it.
    x_unlabeled: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    n_classes: int
    #: relative path under the data root -> official md5
    files: dict[str, str]
    #: reads the verified files: (root, cache_dir, files) -> Splits
    reader: Callable[[Path, Path, dict[str, str]], Splits]
    description: str = ""
    fetch_hint: str = FETCH_HINT
    #: datasets without files (sklearn's bundled digits) hash this instead
    bundled_file: Callable[[], Path] | None = None


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def get_dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BenchError(f"unknown dataset {name!r}{hint}; known datasets: {', '.join(sorted(DATASETS))}") from None


# ---------------------------------------------------------------------------------------------
# md5 checks
# ---------------------------------------------------------------------------------------------

def md5_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def combined_md5(file_md5s: dict[str, str]) -> str:
    """One identity for a dataset: md5 over its sorted (path, md5) lines."""
    lines = "".join(f"{p} {m}\n" for p, m in sorted(file_md5s.items()))
    return hashlib.md5(lines.encode()).hexdigest()


def dvc_manifest(project_root: Path) -> dict[str, str] | None:
    """Per-file md5s that ``data.dvc`` pins, read from DVC's .dir object (local cache or the
    configured local remote). None when neither is available (then the built-in md5s are used)."""
    dvc_file = project_root / "data.dvc"
    if not dvc_file.exists():
        return None
    import yaml

    try:
        dir_md5 = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    except (KeyError, IndexError, TypeError, yaml.YAMLError):
        raise BenchError(f"{dvc_file} is not a valid DVC file; restore it with `git checkout data.dvc`") from None
    rel = Path("files") / "md5" / dir_md5[:2] / dir_md5[2:]
    candidates = [project_root / ".dvc" / "cache" / rel]
    candidates += [Path(url) / rel for url in _local_remote_urls(project_root)]
    for cand in candidates:
        if cand.exists():
            try:
                entries = json.loads(cand.read_text())
                return {e["relpath"]: e["md5"] for e in entries}
            except (OSError, ValueError, KeyError, TypeError):
                raise BenchError(f"DVC's manifest {cand} for data.dvc is unreadable or corrupt; delete it and run "
                                 "`dvc pull` to restore it") from None
    return None


def _local_remote_urls(project_root: Path) -> list[Path]:
    import configparser

    urls = []
    for name in ("config", "config.local"):
        cfg = project_root / ".dvc" / name
        if not cfg.exists():
            continue
        parser = configparser.ConfigParser()
        try:
            parser.read(cfg)
        except configparser.Error:
            continue
        for section in parser.sections():
            url = parser[section].get("url")
            if section.startswith("'remote") or section.startswith('remote'):
                if url and "://" not in url:
                    p = Path(url)
                    urls.append(p if p.is_absolute() else (cfg.parent / p).resolve())
    return urls


def verify_files(spec: DatasetSpec, root: Path, pinned: dict[str, str] | None = None) -> dict[str, str]:
    """Hash every file of ``spec`` under ``root``; raise DataError on a missing file or a mismatch."""
    expected = dict(spec.files)
    if pinned:
        expected.update({p: m for p, m in pinned.items() if p in expected})
    got = {}
    for rel, want in expected.items():
        path = root / rel
        have = _md5_data_file(path, spec)
        if have != want:
            raise DataError(f"dataset {spec.name!r}: {path} has md5 {have} but data.dvc pins {want}; the file is "
                            f"corrupt or a different version: {RESTORE_HINT}")
        got[rel] = have
    return got


def _md5_data_file(path: Path, spec: DatasetSpec) -> str:
    """md5 of a pinned file, or one DataError line for a missing, odd or unreadable one."""
    where = f"dataset {spec.name!r}: {path}"
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"dataset {spec.name!r}: missing file {path}; {spec.fetch_hint}") from None
    except OSError as exc:
        why = "is a symlink loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        raise DataError(f"{where} {why}; {RESTORE_HINT}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{where} is a folder where a file belongs; remove it, then {RESTORE_HINT}")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{where} is not a regular file (a FIFO, socket or device); remove it, then {RESTORE_HINT}")
    try:
        return md5_file(path)
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc.strerror or type(exc).__name__}); fix its permissions or "
                        f"{RESTORE_HINT}") from None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def default_data_root() -> Path:
    return Path(os.environ.get("BENCH_DATA", "data")).expanduser().resolve()


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "clusterbench")).expanduser().resolve()


@dataclasses.dataclass(frozen=True)
class LoadedDataset:
    name: str
    splits: Splits
    md5: str
    file_md5s: dict[str, str]

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.splits
        if which == "train":
            return s.x_train, s.y_train
        if s.x_test is None:
            if which == "all":
                return s.x_train, s.y_train  # e.g. digits: one split only
            raise BenchError(f"dataset {self.name!r} has no test split; use train_split/eval_split 'train' or 'all'")
        if which == "test":
            return s.x_test, s.y_test
        if which == "all":
            return torch.cat([s.x_train, s.x_test]), torch.cat([s.y_train, s.y_test])
        raise BenchError(f"unknown split {which!r}; use 'train', 'test' or 'all'")


def load_dataset(name: str, root: Path | None = None, cache_dir: Path | None = None,
                 pinned: dict[str, str] | None = None) -> LoadedDataset:
    """Verify then read one dataset. ``pinned`` overrides expected md5s (DVC manifest, tests)."""
    spec = get_dataset_spec(name)
    root = Path(root) if root is not None else default_data_root()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    md5, file_md5s = dataset_identity(spec, root, pinned)
    splits = spec.reader(root, cache_dir, file_md5s)
    return LoadedDataset(name=name, splits=splits, md5=md5, file_md5s=file_md5s)


def dataset_identity(spec: DatasetSpec, root: Path, pinned: dict[str, str] | None = None
                     ) -> tuple[str, dict[str, str]]:
    """(dataset md5, per-file md5s) after checking every file; raises DataError on a missing or changed file.

    ``pinned`` defaults to DVC's manifest for ``<root>/../data.dvc``."""
    if spec.bundled_file is not None:
        md5 = md5_file(spec.bundled_file())
        return md5, {spec.bundled_file().name: md5}
    if pinned is None:
        pinned = dvc_manifest(root.parent)
    file_md5s = verify_files(spec, root, pinned)
    return combined_md5(file_md5s), file_md5s


class _HashingReader:
    """A read-only file wrapper that hashes every byte read (archives are unpacked from the very bytes
    that are checked against the pin, not from a second read of the file)."""

    def __init__(self, fh):
        self._fh, self.md5 = fh, hashlib.md5()

    def read(self, n: int = -1) -> bytes:
        block = self._fh.read(n)
        self.md5.update(block)
        return block

    def drain(self) -> str:
        while self.read(1 << 22):
            pass
        return self.md5.hexdigest()


def _unpack_verified(src: Path, md5: str, unpack: Callable[[_HashingReader, Path], None], into: Path) -> None:
    """Unpack ``src`` into ``into`` while hashing it; DataError when its bytes are not the pinned ones."""
    with open(src, "rb") as fh:
        reader = _HashingReader(fh)
        unpack(reader, into)
        have = reader.drain()
    if have != md5:
        raise DataError(f"{src} changed while being unpacked (md5 {have}, pinned {md5}); {RESTORE_HINT}")


#: cached files hashed by this process: path -> (inode, size, mtime_ns, ctime_ns) when it matched its stamp
_VERIFIED: dict[str, tuple[int, int, int, int]] = {}
STAMP = "stamp.json"


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns  # ctime moves on any write, even a reset mtime


def _entry_ok(entry: Path) -> bool:
    """Every file the stamp lists is a regular file with its stamped size and md5 (hashed once per process,
    and again when its signature changes)."""
    try:
        stamp = json.loads((entry / STAMP).read_text())
        files = stamp["files"]
        for rel, want in files.items():
            path = entry / rel
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != want["size"]:
                return False
            if _VERIFIED.get(str(path)) == _signature(st):
                continue
            if md5_file(path) != want["md5"]:
                return False
            _VERIFIED[str(path)] = _signature(os.stat(path))
        return bool(files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_stamp(folder: Path, source: Path, source_md5: str) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STAMP):
        st = path.stat()
        files[path.relative_to(folder).as_posix()] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                      "md5": md5_file(path)}
    (folder / STAMP).write_text(json.dumps({"source": source.name, "source_md5": source_md5, "files": files},
                                           indent=1))


def _remove(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def verified_cache_entry(src: Path, md5: str, cache_dir: Path,
                         unpack: Callable[[_HashingReader, Path], None]) -> Path:
    """``$BENCH_CACHE/unpacked/<md5>/``, holding ``src`` unpacked by ``unpack`` and matching its stamp.
    A missing, partial or changed entry is rebuilt from ``src`` (whose md5 must be ``md5``)."""
    entry = Path(cache_dir) / "unpacked" / md5
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock"):
            if _entry_ok(entry):
                return entry
            if entry.exists() or entry.is_symlink():
                log.warning("data cache %s does not match its stamp (changed, partial or corrupt); rebuilding it "
                            "from %s", entry, src)
                _remove(entry)
            tmp = entry.with_name(f"{md5}.part-{os.getpid()}")
            _remove(tmp)
            tmp.mkdir()
            try:
                _unpack_verified(src, md5, unpack, tmp)
                _write_stamp(tmp, src, md5)
                os.replace(tmp, entry)
            finally:
                _remove(tmp)
            if not _entry_ok(entry):  # e.g. a cache on storage that does not keep what is written
                raise DataError(f"the data cache {entry} does not hold what was just unpacked into it; check the "
                                "disk or set $BENCH_CACHE to another folder")
            return entry
    except OSError as exc:
        raise DataError(f"cannot build the data cache {entry} ({exc.strerror or type(exc).__name__}); make it "
                        "writable or set $BENCH_CACHE to another folder") from None


def _gunzip_into(name: str):
    def unpack(reader: _HashingReader, into: Path) -> None:
        with gzip.GzipFile(fileobj=reader, mode="rb") as fin, open(into / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return unpack


def _cached_copy(src: Path, md5: str, cache_dir: Path) -> Path:
    """The gunzipped copy of ``src`` in the verified cache; the DVC-tracked tree stays untouched."""
    name = src.name.rsplit(".", 1)[0]
    return verified_cache_entry(src, md5, cache_dir, _gunzip_into(name)) / name


def _nchw(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    return t.contiguous()


# -- MNIST, Fashion-MNIST (torchvision's idx parser) -------------------------------------------

def _idx_reader(folder: str):
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]

    def read(root: Path, cache: Path, md5s: dict[str, str]) -> Splits:
        from torchvision.datasets.mnist import read_image_file, read_label_file

        paths = [_cached_copy(root / folder / "raw" / n, md5s[f"{folder}/raw/{n}"], cache) for n in names]
        xtr, ytr, xte, yte = (read_image_file(str(paths[0])), read_label_file(str(paths[1])),
                              read_image_file(str(paths[2])), read_label_file(str(paths[3])))
        return Splits(_nchw(xtr), ytr.long(), _nchw(xte), yte.long())

    files = {f"{folder}/raw/{n}": "" for n in names}
    return read, files


def _register_idx(name: str, folder: str, md5s: list[str], desc: str) -> None:
    read, files = _idx_reader(folder)
    files = dict(zip(files, md5s))
    register_dataset(DatasetSpec(name, 10, files, read, desc))


_register_idx("mnist", "MNIST", ["f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                 "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"],
              "MNIST, 60,000 train + 10,000 test 28x28 digits")
_register_idx("fashion-mnist", "FashionMNIST",
              ["8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
               "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"],
              "Fashion-MNIST, 60,000 + 10,000 28x28 clothing images")


# -- USPS: both splits from the common usps.h5; torchvision's usps.t.bz2 cross-checks the labels ---

def _read_usps(root: Path, cache: Path, md5s: dict[str, str]) -> Splits:
    # The two files scale pixels differently (usps.h5 is not a rescaled copy of the LIBSVM file), so
    # train and test must come from the same file: usps.h5, the one the clustering papers' code reads.
    # torchvision's parser of usps.t.bz2 checks that the 2,007 test labels agree, image for image.
    import h5py
    from torchvision.datasets import USPS

    def split(f, name: str) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(f[name]["data"], dtype=np.float32).reshape(-1, 16, 16)
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8), np.asarray(f[name]["target"], dtype=np.int64)

    with h5py.File(root / "USPS" / "usps.h5", "r") as f:
        (xtr, ytr), (xte, yte) = split(f, "train"), split(f, "test")
    tv_test = _Unchecked(USPS)(str(root / "USPS"), train=False, download=False)
    if not np.array_equal(np.asarray(tv_test.targets), yte):
        raise DataError(f"dataset 'usps': test labels in {root / 'USPS' / 'usps.h5'} disagree with "
                        f"{root / 'USPS' / 'usps.t.bz2'}; restore both with `dvc checkout data`")
    return Splits(_nchw(xtr), torch.as_tensor(ytr), _nchw(xte), torch.as_tensor(yte))


def _Unchecked(cls):
    """torchvision dataset class whose own md5 check is skipped: ours (against data.dvc) already ran,
    and ours also accepts the small files that the tests make."""
    return type(f"Verified{cls.__name__}", (cls,), {"_check_integrity": lambda self: True})


register_dataset(DatasetSpec(
    "usps", 10,
    {"USPS/usps.h5": "355df6b942eb766252e0340bc019b0b9", "USPS/usps.t.bz2": "8ea070ee2aca1ac39742fdd1ef5ed118"},
    _read_usps, "USPS, 7,291 train + 2,007 test 16x16 digits (usps.h5; labels cross-checked with usps.t.bz2)"))


# -- CIFAR-10, binary version, packed as one tar.xz ---------------------------------------------

CIFAR10_MEMBERS = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25", "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421", "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d", "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}


def _read_cifar10(root: Path, cache: Path, md5s: dict[str, str], members: dict[str, str] | None = None) -> Splits:
    members = CIFAR10_MEMBERS if members is None else members
    archive = root / "cifar-10-batches-bin.tar.xz"

    def untar(reader: _HashingReader, into: Path) -> None:
        with tarfile.open(fileobj=reader, mode="r|xz") as tar:  # a stream: every byte goes through the hash
            tar.extractall(into, filter="data")

    folder = verified_cache_entry(archive, md5s["cifar-10-batches-bin.tar.xz"], cache, untar) / "cifar-10-batches-bin"
    # Members are checked when the archive is the official one data.dvc pins; a different archive
    # pinned on purpose (a lab's own copy, the tests' tiny one) has only its own md5 (and the stamp) to go by.
    official = md5s["cifar-10-batches-bin.tar.xz"] == DATASETS["cifar10"].files["cifar-10-batches-bin.tar.xz"]
    for name, want in members.items():
        path = folder / name
        have = md5_file(path) if path.is_file() else "(missing)"
        if official and have != want:
            raise DataError(f"dataset 'cifar10': member {name} of {archive} has md5 {have}, expected {want}; "
                            f"{RESTORE_HINT}")

    def parse(name: str) -> tuple[np.ndarray, np.ndarray]:
        rec = np.fromfile(folder / name, np.uint8).reshape(-1, 3073)
        return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)

    tr = [parse(f"data_batch_{i}.bin") for i in range(1, 6)]
    xte, yte = parse("test_batch.bin")
    return Splits(_nchw(np.concatenate([x for x, _ in tr])), torch.as_tensor(np.concatenate([y for _, y in tr])),
                  _nchw(xte), torch.as_tensor(yte))


register_dataset(DatasetSpec(
    "cifar10", 10, {"cifar-10-batches-bin.tar.xz": "1fda1ee4e0ef5d5b4519544c89c931c5"}, _read_cifar10,
    "CIFAR-10 (binary version), 50,000 train + 10,000 test 32x32 colour images"))


# -- CIFAR-100 with its 20 superclasses (torchvision's python-version layout) ------------------

def _read_cifar100_20(root: Path, cache: Path, md5s: dict[str, str]) -> Splits:
    # torchvision's CIFAR100 exposes only fine labels; the official pickles also carry the 20
    # coarse labels, which is what the clustering papers evaluate on ("CIFAR-100-20").
    def parse(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(root / "cifar-100-python" / name, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        return np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(entry["coarse_labels"], np.int64)

    xtr, ytr = parse("train")
    xte, yte = parse("test")
    return Splits(_nchw(xtr), torch.as_tensor(ytr), _nchw(xte), torch.as_tensor(yte))


register_dataset(DatasetSpec(
    "cifar100-20", 20, {"cifar-100-python/train": "16019d7e3df5f24257cddd4c9f2c3a17",
                        "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
    _read_cifar100_20, "CIFAR-100 with the 20 official superclasses as labels, 50,000 + 10,000 32x32 images",
    fetch_hint="add cifar-100-python/ (torchvision's layout) under data/, `dvc add data`, then `dvc push`"))


# -- STL-10 (torchvision's binary parser) -------------------------------------------------------

def _read_stl10(root: Path, cache: Path, md5s: dict[str, str]) -> Splits:
    from torchvision.datasets import STL10

    cls = _Unchecked(STL10)
    tr = cls(str(root), split="train", download=False)
    te = cls(str(root), split="test", download=False)
    # The 100,000 unlabeled images (2.8 GB) that CC, SCAN and PICA add to training: memory-mapped with
    # torchvision's layout (stored column-major, hence the H/W transpose), read only by a method that uses them.
    path = root / "stl10_binary" / "unlabeled_X.bin"
    size = path.stat().st_size
    if size == 0 or size % (3 * 96 * 96):
        raise DataError(f"dataset 'stl10': {path} is not a whole, non-zero number of 3x96x96 images; "
                        "restore it with `dvc checkout data`")
    raw = np.memmap(path, dtype=np.uint8, mode="c")
    unlabeled = torch.from_numpy(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
    return Splits(_nchw(tr.data), torch.as_tensor(tr.labels).long(), _nchw(te.data), torch.as_tensor(te.labels).long(),
                  x_unlabeled=unlabeled)


register_dataset(DatasetSpec(
    "stl10", 10, {"stl10_binary/train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
                  "stl10_binary/train_y.bin": "5a34089d4802c674881badbb80307741",
                  "stl10_binary/test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
                  "stl10_binary/test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
                  "stl10_binary/unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4"},
    _read_stl10, "STL-10, 5,000 train + 8,000 test 96x96 labelled images (+ 100,000 unlabeled, for training only)",
    fetch_hint="add stl10_binary/ (torchvision's layout) under data/, `dvc add data`, then `dvc push`"))


# -- scikit-learn's bundled 8x8 digits: the embedded default, no file needed --------------------

def _digits_file() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def _read_digits(root: Path, cache: Path, md5s: dict[str, str]) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return Splits(_nchw(x), torch.as_tensor(d.target).long(), None, None)


register_dataset(DatasetSpec("digits", 10, {}, _read_digits,
                             "scikit-learn's bundled 1,797 8x8 digits (one split); needs no download",
                             bundled_file=_digits_file))

__all__ = ["DATASETS", "DatasetSpec", "LoadedDataset", "Splits", "get_dataset_spec", "load_dataset", "md5_file",
           "combined_md5", "dvc_manifest", "register_dataset", "verify_files"]

"""``bench doctor``: check what a run needs before it runs, one line per check, each saying what to fix.

Checks: the GPUs torch sees (none is fine for CPU suites, and said so), the BENCH_* switches and plugins,
each dataset's files present and matching data.dvc (md5), the store writable and where it is, free disk under the
store, the data cache writable, and, with ``--address``, that the Ray cluster answers. Exit 0 when nothing needs fixing,
1 otherwise (warnings do not fail).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: below this much free space under the store, a run of the larger suites (checkpoints, stage caches)
#: may not fit
MIN_FREE_GB = 5.0


@dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL
    text: str

    def line(self) -> str:
        return f"{self.status:4s}  {self.name:17s} {self.text}"


def check_gpu() -> Check:
    import torch

    if not torch.cuda.is_available():
        fix = (f"this CUDA {torch.version.cuda} build sees no device: check `nvidia-smi` and CUDA_VISIBLE_DEVICES"
               if torch.version.cuda else "this is a CPU-only build of torch: install a CUDA build for GPU runs")
        return Check("gpu", "warn", f"torch {torch.__version__} sees no GPU, suites run on the CPU (device: auto); "
                                    f"{fix}")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check("gpu", "ok", f"torch {torch.__version__} sees {len(names)} GPU(s): {', '.join(names)}")


def check_datasets(data_root: Path) -> list[Check]:
    from bench.data import DATASETS, dataset_identity
    from bench.errors import BenchError

    out = []
    for name, spec in sorted(DATASETS.items()):
        if spec.bundled_file is not None:
            out.append(Check(f"data {name}", "ok", "bundled with scikit-learn, nothing to pull"))
            continue
        missing = [rel for rel in spec.files if not (data_root / rel).exists()]
        if len(missing) == len(spec.files):
            out.append(Check(f"data {name}", "warn", f"not pulled (no files under {data_root}); suites that use it "
                                                     f"stop before running: run `dvc pull` in the project root"))
            continue
        try:
            dataset_identity(spec, data_root)
        except BenchError as exc:
            out.append(Check(f"data {name}", "FAIL", str(exc)))
            continue
        out.append(Check(f"data {name}", "ok", f"{len(spec.files)} file(s) under {data_root} match data.dvc (md5)"))
    return out


def check_store(root: Path) -> list[Check]:
    probe_dir = root
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent  # the store is created on first use: check the folder it will be made in
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".bench-doctor-"):
            pass
    except OSError as exc:
        return [Check("store", "FAIL", f"{root} is not writable ({exc.strerror}); pass --store DIR or set "
                                       "BENCH_STORE to a writable folder")]
    where = f"{root}" + ("" if root.exists() else " (created on the first run)")
    free_gb = shutil.disk_usage(probe_dir).free / 2**30
    disk = Check("disk", "ok" if free_gb >= MIN_FREE_GB else "warn",
                 f"{free_gb:.1f} GB free under {probe_dir}" + ("" if free_gb >= MIN_FREE_GB else
                                                               f"; below {MIN_FREE_GB:.0f} GB: free space or "
                                                               "point --store elsewhere"))
    return [Check("store", "ok", f"{where} is writable (--store or BENCH_STORE to change)"), disk]


def check_environment() -> Check:
    """The BENCH_* switches `bench run` parses before it plans (bench.env) and the plugins it imports: a value
    it would refuse is a problem to fix here too, not an all-clear."""
    from bench.env import check_environment as parse_switches
    from bench.errors import BenchError
    from bench.registry import METHODS

    try:
        parse_switches()
        METHODS.names()  # imports BENCH_PLUGINS
    except BenchError as exc:
        return Check("environment", "FAIL", str(exc))
    return Check("environment", "ok", "the BENCH_* switches and plugins parse")


def check_cache(cache: Path) -> Check:
    if cache.exists() and not cache.is_dir():
        return Check("cache", "FAIL", f"{cache} is a file, not a folder; set BENCH_CACHE to a writable folder")
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return Check("cache", "ok", f"{cache} (unpacked archives) is writable")
    return Check("cache", "FAIL", f"{cache} is not writable; set BENCH_CACHE to a writable folder")


def _unreachable(address: str, timeout_s: float = 5.0) -> str:
    """'' when host:port accepts a TCP connection (or the address is 'auto'), else why not. Probed first
    because ray.init waits minutes on an address that does not answer."""
    if address == "auto":
        return ""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return f"not host:port, ray://host:port or auto: {address!r}"
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"
    return ""


def check_ray(address: str) -> Check:
    why = _unreachable(address)
    if why:
        return Check("ray", "FAIL", f"cannot reach the Ray cluster at {address}: {why}; start it with "
                                    "`ray start --head` or check `ray status` on the head node")
    try:
        import ray

        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            res = ray.cluster_resources()
            nodes = len([n for n in ray.nodes() if n.get("Alive")])
        finally:
            ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - any failure to connect is the answer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Check("ray", "FAIL", f"cannot reach the Ray cluster at {address} ({first}); start it with "
                                    "`ray start --head` or check `ray status` on the head node")
    return Check("ray", "ok", f"cluster at {address}: {nodes} node(s), {res.get('CPU', 0):g} CPU, "
                              f"{res.get('GPU', 0):g} GPU")


def run_checks(store, data_root: Path, *, address: str | None = None) -> int:
    from bench.data import default_cache_dir

    checks = [check_gpu(), check_environment(), *check_datasets(data_root), *check_store(Path(store.root)),
              check_cache(default_cache_dir())]
    if address:
        checks.append(check_ray(address))
    for c in checks:
        print(c.line(), flush=True)
    bad = [c for c in checks if c.status == "FAIL"]
    print(f"{len(bad)} problem(s) to fix" if bad else "ready to run")
    return 1 if bad else 0

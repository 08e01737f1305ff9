"""Where a result came from: code version, package versions, hardware."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("bench", "methods")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, timeout=20, check=True)
        return out.stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def code_version() -> dict[str, object]:
    """``{"code_version", "git_commit", "git_dirty"}``.

    A clean checkout's version is its commit. Uncommitted edits to ``bench/`` or ``methods/`` add a
    hash of the diff (and of untracked files there), so a changed method never reuses stale results.
    ``BENCH_CODE_VERSION`` overrides all of it (installs without git).
    """
    if env := os.environ.get("BENCH_CODE_VERSION"):
        return {"code_version": env, "git_commit": None, "git_dirty": None}
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    if commit is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("clusterbench")
        except PackageNotFoundError:
            ver = "unknown"
        return {"code_version": f"pkg-{ver}", "git_commit": None, "git_dirty": None}
    diff = _git("diff", "HEAD", "--", *CODE_DIRS) or ""
    untracked = (_git("ls-files", "--others", "--exclude-standard", "--", *CODE_DIRS) or "").split()
    h = hashlib.sha256(diff.encode())
    for rel in sorted(untracked):
        if rel.endswith(".py"):
            h.update(rel.encode())
            h.update((PROJECT_ROOT / rel).read_bytes())
    dirty = bool(diff.strip()) or any(r.endswith(".py") for r in untracked)
    version_str = commit[:12] + (f"+dirty.{h.hexdigest()[:8]}" if dirty else "")
    return {"code_version": version_str, "git_commit": commit, "git_dirty": dirty}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | None = None) -> dict[str, object]:
    """Package versions and hardware of the process that ran the trial."""
    import numpy
    import torch
    import torchvision

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    gpu = None
    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        gpu = torch.cuda.get_device_name(torch.device(device) if device else None)
    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "ray": ray_version, "numpy": numpy.__version__, "cpu": _cpu_model(), "n_cpus": os.cpu_count(),
        "gpu": gpu, "cuda": torch.version.cuda, "hostname": socket.gethostname(), "platform": platform.platform(),
    }

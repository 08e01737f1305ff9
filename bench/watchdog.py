"""Reaps a dead driver's local Ray processes.

Ray ties raylet and GCS to the driver that started them (kernel fate-sharing), but measured with
Ray 2.60 a SIGKILLed ``bench run`` still leaves ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``
behind for good. ``bench run`` therefore starts this watchdog next to the local Ray instance it
starts: it keeps a list of the driver's descendants, and once the driver is gone (however it died)
it terminates whichever of them are still alive (SIGTERM, then SIGKILL after a grace period).

    python -m bench.watchdog DRIVER_PID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 3.0


def start(driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for ``driver_pid`` (default: this process) in its own session, so a Ctrl-C or
    a signal sent to the driver's process group does not reach it."""
    return subprocess.Popen([sys.executable, "-m", "bench.watchdog", str(driver_pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _descendants(proc: psutil.Process) -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in proc.children(recursive=True)}
    except psutil.Error:
        return {}


def watch(driver_pid: int) -> int:
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, psutil.Process] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        known.update(_descendants(driver))  # psutil.Process remembers its start time: no pid-reuse mix-ups
        time.sleep(POLL_S)
    left = [p for p in known.values() if p.is_running() and p.pid != os.getpid()]
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1])))

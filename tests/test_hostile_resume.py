"""A real `bench run` SIGKILLed at a moment that matters, then `--resume`d (CPU, bundled digits, tiny configs)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.perf.fault_drill import suite_file

ROOT = Path(__file__).resolve().parent.parent
# Lengths chosen for the kill window (digits, ~0.16 s per pre-fit epoch, ~0.19 s per joint epoch on 2 CPU cores): the
# head pre-fit outlasts BENCH_CHECKPOINT_S (3 s), so it saves at least once whatever the timing (with 8 epochs,
# 1.3 s, a save happened only when the clock fell right, and the test failed when it did not); joint training
# (~3.8 s) outlasts the kill at 1 s in, and its own first save comes 3 s after it starts.
TINY_DEPICT = {"filters": [8, 8], "batch_size": 64, "pretrain_epochs": 3, "init_epochs": 30, "init_patience": 100,
               "init_n_init": 2, "epochs": 20, "stop_mse": 0.0}


@pytest.mark.slow
def test_depict_killed_before_joint_trainings_first_checkpoint_resumes_its_head_prefit(tmp_path):
    """The head pre-fit's checkpoint used to be removed when the pre-fit ended, so a kill in joint training before
    its first checkpoint (up to BENCH_CHECKPOINT_S in) lost the whole pre-fit: the resumed run started it over."""
    suite = suite_file(tmp_path, "dep", [{"name": "depict", "config": TINY_DEPICT}], seeds=1, deterministic=True)
    store = tmp_path / "st"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_CHECKPOINT_S": "3"}
    args = [sys.executable, "-m", "bench", "run", str(suite), "--inline", "--store", str(store), "--no-report"]
    run = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at, seen = None, None
    while run.poll() is None and (kill_at is None or time.time() < kill_at):
        head = glob.glob(f"{store}/artifacts/*/depict_init_head-*.ckpt.pt")
        if head and os.path.getmtime(head[0]) != seen:
            try:
                state = torch.load(head[0], weights_only=False)["engine"]
            except Exception:  # noqa: BLE001 - caught mid-replace: read it at the next poll
                continue
            seen = os.path.getmtime(head[0])
            per_epoch = sum(state["epoch_times"]) / max(1, len(state["epoch_times"]))
            # 1 s into joint training: after the pre-fit's last epoch, before joint's first checkpoint (3 s)
            kill_at = seen + (TINY_DEPICT["init_epochs"] - state["epoch"]) * per_epoch + 1.0
        time.sleep(0.01)
    assert run.poll() is None, "the run ended before the kill"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert glob.glob(f"{store}/artifacts/*/depict_init_head-*.ckpt.pt")  # the pre-fit is not lost
    again = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    log = Path(glob.glob(f"{store}/logs/*/depict*.log")[0]).read_text()
    assert "resuming from checkpoint depict_init_head-" in log
    assert not glob.glob(f"{store}/artifacts/*/*.ckpt.pt")  # the trial is done: its checkpoints are removed

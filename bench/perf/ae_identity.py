"""Same-arithmetic check for the autoencoder family's fine-tuning (DEC, IDEC, DEPICT): a sha per run.

    PYTHONPATH=$PWD python3 -m bench.perf.ae_identity [--mnist 2000] [--only dec,idec,depict]

Runs tiny configs on the CPU in deterministic mode (the bundled digits; with ``--mnist N`` also DEC and IDEC on
the first N MNIST training images), seeds 0-2 one by one and, for DEC/IDEC, as one seed batch of 3
(``run_seeds``), and prints for each run a sha of its labels, of its info and of its curve (every row's values
except wall-clock times), plus what happened (stop reason, iterations/epochs). Run it at two commits and compare
the lines: a change that keeps the arithmetic prints the same shas. The configs are small but make every rule
fire: DEC/IDEC target updates, a short last interval, the tol stop for some seeds and not others, the momentum
reset (DEC, IDEC with SGD); DEPICT's head pre-fit patience and the joint stop_mse.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.context import TrialContext
from bench.data import load_dataset
from bench.method import ClusteringData
from bench.metrics import evaluate
from bench.registry import get_method, resolve_config
from bench.trial import seed_everything

AE = {"hidden_dims": [32, 32, 64, 10], "pretrain_iters_per_layer": 40, "finetune_iters": 80,
      "pretrain_lr_step": 1000, "pretrain_batch_size": 64, "pretrain_momentum_burnin": 20}
RUNS = {
    # tols chosen so that on digits some seeds stop by tol, others run to max_iters (95: a short last interval)
    "dec": {**AE, "batch_size": 64, "update_interval": 10, "max_iters": 95, "n_init": 2, "tol": 0.05,
            "curve_eval_every": 2},
    "idec": {**AE, "batch_size": 64, "update_interval": 10, "max_iters": 95, "n_init": 2, "tol": 0.1},
    "idec_sgd": {**AE, "batch_size": 64, "update_interval": 10, "max_iters": 95, "n_init": 2, "tol": 0.02,
                 "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "momentum_reset_at_update": True,
                 "data_order": "shuffled"},
    "depict": {"filters": [8, 8], "batch_size": 50, "lr": 1e-3, "pretrain_epochs": 3, "init_epochs": 8,
               "init_patience": 1, "epochs": 8, "stop_mse": 1e-4},
    "depict_kmeans": {"filters": [8, 8], "batch_size": 50, "lr": 1e-3, "pretrain_epochs": 3, "init_epochs": 3,
                      "init_patience": 5, "epochs": 3, "init": "kmeans", "init_n_init": 2},
}
TIMING = {"elapsed_s", "epoch_s"}


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:12]


def run(name: str, data: ClusteringData, y: np.ndarray, seeds: list[int], batched: bool, root: Path) -> list[str]:
    method_name = name.split("_")[0]
    cls = get_method(method_name)
    cfg = resolve_config(method_name, "default", data.dataset, RUNS[name])
    ctxs = [TrialContext(seed=s, device="cpu", artifact_dir=root / name / f"{batched}" / str(s),
                         stage_dir=root / "stages", data_md5=data.md5, code_version="identity",
                         scorer=lambda p: evaluate(y, p), logger=logging.getLogger("bench.perf"))
            for s in seeds]
    seed_everything(seeds[0], deterministic=True)
    outs = cls(cfg).fit_seeds(data, ctxs) if batched else [cls(cfg).fit(data, ctxs[0])]
    lines = []
    for ctx, out in zip(ctxs, outs):
        curve = [{k: v for k, v in row.items() if k not in TIMING} for row in ctx.curve]
        losses = [row.get("loss") for row in ctx.curve]
        info = {k: v for k, v in out.info.items() if k != "stages"}
        what = {k: info.get(k) for k in ("stop_reason", "iterations", "epochs", "init_epochs_run") if k in info}
        lines.append(f"{data.dataset:6s} {name:13s} {'batch' if batched else 'alone'} seed {ctx.seed}: "
                     f"labels {sha(out.labels_numpy().tolist())} info {sha(info)} losses {sha(losses)} "
                     f"curve {sha(curve)} rows {len(curve)} {what}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", type=int, default=0, help="also DEC/IDEC on the first N MNIST training images")
    ap.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    ds = load_dataset("digits")
    x, y = ds.split("all")
    sets = [(ClusteringData("digits", x, x, 10, "all", "all", ds.md5), y.numpy())]
    if args.mnist:
        mn = load_dataset("mnist")
        xm, ym = mn.split("train")
        xm, ym = xm[:args.mnist], ym[:args.mnist]
        sets.append((ClusteringData("mnist", xm, xm, 10, "train", "train", mn.md5 + f"[:{args.mnist}]"), ym.numpy()))
    with tempfile.TemporaryDirectory() as tmp:
        for data, labels in sets:
            for name in names:
                if data.dataset != "digits" and name.startswith("depict"):
                    continue
                for s in (0, 1, 2):
                    print(*run(name, data, labels, [s], False, Path(tmp)), sep="\n", flush=True)
                if not name.startswith("depict"):
                    print(*run(name, data, labels, [0, 1, 2], True, Path(tmp)), sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per epoch of each SCAN stage through the method's own fit (the engine's graphed or eager steps).

    python -m bench.perf.scan_chain                        # GPU: 50,000 random CIFAR-shaped images
    BENCH_CUDA_GRAPHS=0 python -m bench.perf.scan_chain    # the same, eager steps
    python -m bench.perf.scan_chain --images 256           # CPU: only to try it out

Unlike ``scan_epoch`` (SCAN's steps in a loop of its own), this runs ``scan`` as ``bench run`` does: the
simclr_pretext stage (1 epoch), neighbour mining, the scan_clustering stage (4 epochs) and self-labelling
(3 epochs) over random uint8 images (the cost does not depend on the values; ACC is meaningless), and prints
each curve row's ``epoch_s``. The first epoch of each stage includes torch.compile and CUDA-graph capture.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from bench.context import TrialContext
    from bench.method import ClusteringData
    from bench.registry import get_method, resolve_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=50000, help="random 32 x 32 RGB training images")
    p.add_argument("--scan-epochs", type=int, default=4)
    p.add_argument("--selflabel-epochs", type=int, default=3)
    args = p.parse_args(argv)
    n = args.images
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ClusteringData("random", x, x[: max(10, n // 5)], 10, "train", "test", "md5")
    cfg = resolve_config("scan", "default", None, dict(pretext_epochs=1, scan_epochs=args.scan_epochs,
                                                       selflabel_epochs=args.selflabel_epochs))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        ctx = TrialContext(seed=0, device=dev, artifact_dir=Path(tmp) / "a", stage_dir=Path(tmp) / "s",
                           data_md5="md5", code_version="perf")
        t0 = time.perf_counter()
        get_method("scan")(cfg).fit(data, ctx)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"scan on {n} random images, {dev}, BENCH_CUDA_GRAPHS={os.environ.get('BENCH_CUDA_GRAPHS', 'default')}:"
              f" wall {time.perf_counter() - t0:.1f} s")
        for r in ctx.curve:
            if "epoch_s" in r:
                print(f"  {r.get('phase') or r.get('stage'):<16} epoch {r['epoch']:>3}  {r['epoch_s']:8.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

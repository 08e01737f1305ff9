"""Seconds per SimCLR pretext epoch on CIFAR-10's shape (issue 15 item 9: <= 2 s per epoch on one H200).

    python -m bench.perf.pretext_epoch                        # bf16 and fp32, batch 512, ResNet-18 CIFAR stem, 32 px
    python -m bench.perf.pretext_epoch --precisions bf16 --epochs 3 --json out.json

Runs the ``simclr_pretext`` stage's own training (methods.stages.simclr_pretext.train_simclr on the epoch engine:
two GPUAugment views of a uint8 batch gathered from the GPU-resident dataset, one channels-last forward over both,
SCAN's one-sided NT-Xent at tau 0.1, SGD step, the engine's hooks) over a random uint8 dataset of CIFAR-10's
training shape (50,000 x 3 x 32 x 32; the cost does not depend on the pixel values), for ``--epochs`` full epochs
(97 steps of 512, drop_last) after one warm-up epoch (torch.compile of the augmentation, cuDNN autotuning); the
epoch times are the engine's (training only, synchronised). Prints the median epoch time and pairs/s; the official
SCAN loop (DataLoader with 8 workers, fp32) is quoted in issue 15 at about 4,200 pairs/s (12 s per epoch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    import tempfile
    from pathlib import Path

    from bench.context import TrialContext
    from bench.method import ClusteringData
    from methods.stages.simclr_pretext import SimCLRPretext, train_simclr

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench.perf.pretext_epoch needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    print(f"# device: {torch.cuda.get_device_name()}  torch {torch.__version__}  N={args.n} batch={args.batch}")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, device=dev, generator=g)
    data = ClusteringData("random", x, x, 10, "train", "train", "perf")
    rows = []
    for precision in args.precisions.split(","):
        cfg = SimCLRPretext.Config(batch_size=args.batch, precision=precision, epochs=args.epochs + 1)
        with tempfile.TemporaryDirectory() as tmp:
            ctx = TrialContext(seed=0, device=dev, artifact_dir=Path(tmp) / "a", stage_dir=Path(tmp) / "s",
                               data_md5="perf", code_version="perf")
            net, epoch_s = train_simclr(cfg, data, ctx)
        times = epoch_s[1:]  # epoch 1 compiles and autotunes
        sec = statistics.median(times)
        pairs = (args.n // args.batch) * args.batch / sec
        rows.append({"precision": precision, "epoch_s": sec, "pairs_per_s": pairs, "epochs": times,
                     "peak_gb": torch.cuda.max_memory_allocated() / 2**30})
        print(f"{precision}: {sec:.3f} s/epoch (median of {len(times)}: {', '.join(f'{t:.3f}' for t in times)}), "
              f"{pairs:,.0f} pairs/s, 500 epochs = {500 * sec / 60:.1f} min, peak {rows[-1]['peak_gb']:.1f} GiB")
        del net
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

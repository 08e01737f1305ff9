"""Seconds per SimCLR pretext epoch on CIFAR-10's shape (issue 15 item 9: <= 2 s per epoch on one H200).

    python -m bench.perf.pretext_epoch                        # bf16 and fp32, batch 512, ResNet-18 CIFAR stem, 32 px
    python -m bench.perf.pretext_epoch --precisions bf16 --epochs 3 --json out.json

Runs the ``simclr_pretext`` stage's own step (methods.stages.simclr_pretext.simclr_step: two GPUAugment views of a
uint8 batch gathered from the GPU-resident dataset, one channels-last forward over both, SCAN's one-sided NT-Xent
at tau 0.1, SGD step) over a random uint8 dataset of CIFAR-10's training shape (50,000 x 3 x 32 x 32; the cost does
not depend on the pixel values), for ``--epochs`` full epochs (97 steps of 512, drop_last) after one warm-up epoch
(torch.compile of the augmentation, cuDNN autotuning). Prints the median epoch time and pairs/s; the official
SCAN loop (DataLoader with 8 workers, fp32) is quoted in issue 15 at about 4,200 pairs/s (12 s per epoch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from methods._contrastive import epoch_batches, prepare_training
    from methods.common.augment import NORMALIZATION, GPUAugment, simclr_spec
    from methods.stages.simclr_pretext import SimCLRNet, SimCLRPretext, simclr_step

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
    rows = []
    for precision in args.precisions.split(","):
        cfg = SimCLRPretext.Config(batch_size=args.batch, precision=precision)
        torch.manual_seed(0)
        net = SimCLRNet(cfg.backbone, cfg.stem, 3, cfg.head_hidden_dim, cfg.feature_dim)
        x_dev, net = prepare_training(x, net, dev)
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        augment = GPUAugment(simclr_spec(32, *NORMALIZATION[cfg.normalization]), channels_last=True)
        times = []
        for epoch in range(args.epochs + 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            loss = torch.zeros((), device=dev)
            for idx in epoch_batches(args.n, args.batch, g, dev):
                loss += simclr_step(net, opt, augment, x_dev.index_select(0, idx), g, cfg)
            torch.cuda.synchronize()
            if epoch > 0:  # epoch 0 compiles and autotunes
                times.append(time.perf_counter() - t)
        sec = statistics.median(times)
        pairs = (args.n // args.batch) * args.batch / sec
        rows.append({"precision": precision, "epoch_s": sec, "pairs_per_s": pairs, "epochs": times,
                     "peak_gb": torch.cuda.max_memory_allocated() / 2**30})
        print(f"{precision}: {sec:.3f} s/epoch (median of {len(times)}: {', '.join(f'{t:.3f}' for t in times)}), "
              f"{pairs:,.0f} pairs/s, 500 epochs = {500 * sec / 60:.1f} min, peak {rows[-1]['peak_gb']:.1f} GiB")
        del net, opt
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

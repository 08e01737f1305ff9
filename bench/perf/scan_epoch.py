"""Seconds per SCAN clustering epoch and self-labelling epoch on CIFAR-10's shape (issue 15: about a pretext epoch,
target <= 4 s per SCAN epoch on one H200).

    python -m bench.perf.scan_epoch                          # GPU: SCAN + self-label epochs, compiled and eager aug
    python -m bench.perf.scan_epoch --profile                # CPU or GPU: torch.profiler op counts of one step each
    python -m bench.perf.scan_epoch --json out.json

Runs SCAN's own steps (methods.scan.scan_step / selflabel_step: the method's ResNet-18 + 10 linear heads,
channels-last, bf16 autocast, SCAN's strong augmentation of a uint8 batch gathered from the GPU-resident dataset,
anchor and neighbour forwards, all heads' SCAN losses; then the engine's backward and Adam step) over a random uint8
dataset of CIFAR-10's training shape (50,000 x 3 x 32 x 32) with random neighbour lists (21 per image; the cost does
not depend on the values), for ``--epochs`` full epochs (390 steps of 128; self-labelling 50 steps of 1000) after
one warm-up epoch (torch.compile of the augmentation, cuDNN autotuning). A SCAN epoch here includes the method's
per-epoch eval pass (10 heads on 10,000 eval images) and the selection score. On a GPU it also checks that the
compiled augmentation equals the eager one for the same draws, and that a step never waits for the device
(``torch.cuda.set_sync_debug_mode("error")`` around a few steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter

import torch


def _setup(dev: torch.device, n: int, precision: str, compile_aug: bool):
    from methods.augment.gpu import NORMALIZATION, resize_eval
    from methods.augment.strong import ScanAugment, ScanAugmentSpec
    from methods.engine import conv_layout, prepare_training
    from methods.nn.backbones import resnet
    from methods.nn.heads import MultiHeadClassifier
    from methods.scan import SCAN

    cfg = SCAN.Config(precision=precision)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=dev, generator=g)
    nbrs = torch.randint(0, n, (n, cfg.n_neighbors + 1), device=dev, generator=g)
    torch.manual_seed(0)
    net = MultiHeadClassifier(resnet(cfg.backbone, stem=cfg.stem, in_channels=3), cfg.num_heads, 10)
    x, net = prepare_training(x, net, dev)
    mean, std = NORMALIZATION[cfg.normalization]
    strong = ScanAugment(ScanAugmentSpec(32, n_ops=cfg.strong_ops, cutout=cfg.cutout, mean=mean, std=std),
                         compile=compile_aug)

    def view(xb):
        return conv_layout(strong(xb, generator=g), dev)

    def prep(xb):
        return conv_layout(resize_eval(xb, 32, mean, std), dev)

    return cfg, g, x, nbrs, net, strong, view, prep


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _optimise(opt: torch.optim.Optimizer, out: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the engine does with a step's outputs (methods/engine/engine.py): back-propagate ``loss``, one optimizer
    step; returns the loss (detached, on the device: summed over the epoch, read once)."""
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    return out["loss"].detach()


def run_epochs(dev, n, epochs, precision, compile_aug, max_steps=None):
    from methods.engine import epoch_batches
    from methods.losses import scan_selection_loss
    from methods.scan import head_probs, scan_step, selflabel_step

    cfg, g, x, nbrs, net, strong, view, prep = _setup(dev, n, precision, compile_aug)
    x_eval, eval_nb = x[:10000], nbrs[:10000, :cfg.eval_neighbors + 1] % min(n, 10000)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.scan_lr, weight_decay=cfg.scan_weight_decay)
    out = {}
    for phase in ("scan", "selflabel"):
        times = []
        for epoch in range(epochs + 1):
            _sync(dev)
            t = time.perf_counter()
            net.train()
            sums = torch.zeros((), device=dev)
            bs = cfg.scan_batch_size if phase == "scan" else cfg.selflabel_batch_size
            for s, idx in enumerate(epoch_batches(n, bs, g, dev)):
                if max_steps is not None and s >= max_steps:
                    break
                if phase == "scan":
                    sums += _optimise(opt, scan_step(net, x, nbrs, idx, view, g, cfg))
                else:
                    sums += _optimise(opt, selflabel_step(net, x[idx], prep, view, cfg))
            if phase == "scan":  # the method's per-epoch eval pass and selection score
                probs = head_probs(net, x_eval, prep, cfg, dev)
                float(scan_selection_loss(probs, eval_nb).min())
            sums.tolist()
            _sync(dev)
            sec = time.perf_counter() - t
            # printed as it happens: a run cut by a timeout still shows what it measured
            print(f"  {phase} epoch {epoch}: {sec:.3f} s" + (" (warm-up: compile, autotune)" if epoch == 0 else ""),
                  flush=True)
            if epoch > 0:  # epoch 0 compiles and autotunes
                times.append(sec)
        out[phase] = times
        if phase == "scan":  # self-labelling continues from one head, as the method does
            net.keep_head(0)
            net = net.to(memory_format=torch.channels_last) if dev.type == "cuda" else net
            opt = torch.optim.Adam(net.parameters(), lr=cfg.selflabel_lr, weight_decay=cfg.selflabel_weight_decay)
    return out, (cfg, g, x, nbrs, net, strong, view, prep, opt)


def check_no_sync_and_compiled_equal(state) -> list[str]:
    from methods.engine import epoch_batches
    from methods.nn.backbones import resnet
    from methods.nn.heads import MultiHeadClassifier
    from methods.scan import scan_step

    cfg, g, x, nbrs, net, strong, view, prep, _ = state
    dev = x.device
    lines = []
    p = strong.sample_params(128, 32, 32, dev, g)
    xb = x[:128]
    from methods.augment.strong import _compiled_apply
    eager, comp = strong.apply(xb, p), _compiled_apply()(xb, p, strong._static)
    diff = (eager - comp).abs()
    lines.append(f"compiled vs eager augmentation (same draws, 128 images): max|diff| {diff.max().item():.2e}, "
                 f"pixels off by > 1e-3: {(diff > 1e-3).float().mean().item():.2e}")
    net = MultiHeadClassifier(resnet(cfg.backbone, stem=cfg.stem, in_channels=3), cfg.num_heads, 10).to(dev)
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.scan_lr)
    batches = list(epoch_batches(x.shape[0], cfg.scan_batch_size, g, dev))[:20]
    for idx in batches[:3]:  # warm
        _optimise(opt, scan_step(net, x, nbrs, idx, view, g, cfg))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for idx in batches[3:]:
            _optimise(opt, scan_step(net, x, nbrs, idx, view, g, cfg))
        lines.append(f"host syncs: none in {len(batches) - 3} SCAN steps (set_sync_debug_mode('error'))")
    except RuntimeError as e:
        lines.append(f"host syncs: a SCAN step synchronised: {str(e)[:200]}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return lines


def profile(dev, precision, batch: int | None) -> list[str]:
    """Op counts of one SCAN step and one self-labelling step (torch.profiler), after a warm step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from methods.engine import epoch_batches
    from methods.scan import scan_step, selflabel_step

    cfg, g, x, nbrs, net, strong, view, prep = _setup(dev, 2048, precision, compile_aug=True)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.scan_lr)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    lines = []
    sb, lb = batch or cfg.scan_batch_size, batch or cfg.selflabel_batch_size
    for name, bs, fn in ((f"SCAN step (batch {sb}, 10 heads)", sb,
                          lambda idx: _optimise(opt, scan_step(net, x, nbrs, idx, view, g, cfg))),
                         (f"self-label step (batch {lb})", lb,
                          lambda idx: _optimise(opt, selflabel_step(net, x[idx], prep, view, cfg)))):
        batches = list(epoch_batches(x.shape[0], bs, g, dev))
        fn(batches[0])
        _sync(dev)
        t = time.perf_counter()
        with tprofile(activities=acts) as prof:
            fn(batches[1])
            _sync(dev)
        wall = time.perf_counter() - t
        ops = Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        copies = sum(v for k, v in ops.items() if k in ("aten::_local_scalar_dense", "aten::nonzero",
                                                          "aten::item", "aten::lift_fresh"))
        lines.append(f"{name}: {sum(ops.values())} aten ops, {kernels} device kernels, {copies} host-reading ops "
                     f"(item/nonzero/lift_fresh), {wall * 1e3:.0f} ms profiled; top: "
                     + ", ".join(f"{k[6:]} {v}" for k, v in ops.most_common(6)))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", action="store_true", help="op counts of one step each, then stop")
    ap.add_argument("--profile-batch", type=int, default=None, help="batch of the profiled steps (CPU: small)")
    ap.add_argument("--eager-augment", action="store_true", help="also time an epoch with the eager augmentation")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    print(f"# device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}  torch {torch.__version__}  "
          f"N={args.n} precision={args.precision}")
    if args.profile:
        for line in profile(dev, args.precision, args.profile_batch):
            print(line)
        return 0
    if dev.type != "cuda":
        print("error: timing epochs needs a CUDA GPU (use --profile on a CPU)", file=sys.stderr)
        return 2
    rows = {}
    for compiled in (True, False) if args.eager_augment else (True,):
        times, state = run_epochs(dev, args.n, args.epochs, args.precision, compiled)
        tag = "compiled" if compiled else "eager"
        for phase, ts in times.items():
            sec = statistics.median(ts)
            per = 50 if phase == "scan" else 200
            rows[f"{phase}_{tag}"] = {"epoch_s": sec, "epochs": ts}
            print(f"{phase} ({tag} augmentation): {sec:.3f} s/epoch (median of {len(ts)}: "
                  f"{', '.join(f'{t:.3f}' for t in ts)}), paper's {per} epochs = {per * sec / 60:.1f} min")
        if compiled:
            for line in check_no_sync_and_compiled_equal(state):
                print(line)
        del state
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

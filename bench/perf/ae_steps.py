"""Per-step cost of the autoencoder family's training steps on one GPU (explains bench.perf.dec_seeds).

    python -m bench.perf.ae_steps [--skip-depict] [--steps 1000]     (CUDA only; about 40 s on an H200)

For S = 1 and S = 10 seeds batched into one model, it times one CUDA-graph-replayed step of each stage of
DEC's autoencoder recipe (layer-wise pretraining of layers 1-4, end-to-end fine-tuning) exactly as
``methods.nn.autoencoder`` trains it (fused SGD with Caffe's bias lr x 2, loss x 0.5, dropout 0.2,
data in order, TF32 on), on random data of MNIST's shape, and splits it into parts, each timed alone as
its own CUDA graph of the same shapes:

* ``gemm``: only the step's matrix products (forward, weight gradients, input gradients: one ``bmm``
  each, as autograd runs them), weights stored ``[S, in, out]`` as the model does; ``gemm_t``: the same
  with weights stored ``[S, out, in]`` (nn.Linear's layout), to see whether cuBLAS picks better kernels;
* ``sgd``: only the fused SGD update of the stage's parameters;
* ``rest`` = step - gemm - sgd: the elementwise work (bias, ReLU, dropout, loss, bias gradients), the
  index gather and what overlaps differently when launched together.

It extrapolates each part to the full recipe (50,000 steps per layer + 100,000 fine-tuning) and prints
the 10-seed time that would remain if all the ``rest`` were free, against 1.5 x the 1-seed time (the
issue-13 target). Then (unless ``--skip-depict``) one DEPICT step (batch 100) with cuDNN autotuning off
and on, with a kernel profile.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from methods.engine.steps import GraphedStep, SequentialIndexStreams, lr_groups, sgd
from methods.nn.autoencoder import BatchedMLPAutoencoder, denoising_layer_loss, reconstruction_loss

DIMS = [784, 500, 500, 2000, 10]
BATCH = 256
ITERS = {"layer1": 50000, "layer2": 50000, "layer3": 50000, "layer4": 50000, "finetune": 100000}


def graph_ms(fn, steps: int) -> float:
    """Milliseconds per replay of ``fn`` captured as one CUDA graph (after eager warm-up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(20):
        g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def stage_layers(stage: str) -> list[tuple[int, int, bool]]:
    """(in, out, needs input gradient) of every linear map a step of ``stage`` trains, in forward order."""
    n = len(DIMS) - 1
    if stage == "finetune":
        enc = [(DIMS[i], DIMS[i + 1], i > 0) for i in range(n)]
        dec = [(DIMS[i + 1], DIMS[i], True) for i in reversed(range(n))]
        return enc + dec
    i = int(stage[-1]) - 1
    return [(DIMS[i], DIMS[i + 1], False), (DIMS[i + 1], DIMS[i], True)]


def gemm_only(S: int, stage: str, transposed: bool, dev: torch.device):
    """A closure running only the step's matrix products, on random tensors of the step's shapes."""
    items = []
    for d_in, d_out, dgrad in stage_layers(stage):
        a = torch.randn(S, BATCH, d_in, device=dev)
        g = torch.randn(S, BATCH, d_out, device=dev)
        w = torch.randn(S, d_out, d_in, device=dev) if transposed else torch.randn(S, d_in, d_out, device=dev)
        items.append((a, g, w, dgrad))

    def run():
        for a, g, w, dgrad in items:
            if transposed:  # y = a w^T; dW = g^T a; da = g w
                torch.bmm(a, w.mT)
                torch.bmm(g.mT, a)
                if dgrad:
                    torch.bmm(g, w)
            else:           # y = a w; dW = a^T g; da = g w^T
                torch.bmm(a, w)
                torch.bmm(a.mT, g)
                if dgrad:
                    torch.bmm(g, w.mT)
    return run


def step_parts(S: int, stage: str, x: torch.Tensor, steps: int) -> dict[str, float]:
    dev = x.device
    model = BatchedMLPAutoencoder.initial(DIMS, 0.01, list(range(S))).to(dev)
    if stage == "finetune":
        def loss_fn(idx):
            return reconstruction_loss(model, x, idx, 0.5)
        weights, biases = [*model.enc_w, *model.dec_w], [*model.enc_b, *model.dec_b]
    else:
        i = int(stage[-1]) - 1
        h_in = model.encode_all(x, upto=i) if i > 0 else x

        def loss_fn(idx):
            return denoising_layer_loss(model, i, h_in, idx, 0.2, 0.5)
        weights, biases = [model.enc_w[i], model.dec_w[i]], [model.enc_b[i], model.dec_b[i]]
    opt = sgd(lr_groups(weights, biases, 2.0), 0.1, 0.9, dev)
    step = GraphedStep(loss_fn, opt, (S, BATCH), dev, n_losses=S)
    stream = SequentialIndexStreams(x.shape[0], BATCH, S, dev)
    for _ in range(50):
        step.step(stream.next())
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step.step(stream.next())
    torch.cuda.synchronize()
    full = (time.perf_counter() - t) / steps * 1e3  # host clock: includes the loop's own launch gaps
    params = [*weights, *biases]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-6
    sgd_ms = graph_ms(opt.step, steps)
    del step
    gemm = graph_ms(gemm_only(S, stage, False, dev), steps)
    gemm_t = graph_ms(gemm_only(S, stage, True, dev), steps)
    return {"step": full, "gemm": gemm, "gemm_t": gemm_t, "sgd": sgd_ms, "rest": full - gemm - sgd_ms}


def autoencoder_parts(steps: int) -> None:
    dev = torch.device("cuda")
    x = torch.rand(70000, 784, device=dev) * 5
    torch.backends.cuda.matmul.allow_tf32 = True
    totals: dict[int, dict[str, float]] = {}
    print(f"{'S':>3} {'stage':9} " + " ".join(f"{k:>8}" for k in ("step", "gemm", "gemm_t", "sgd", "rest")) +
          "   (ms per step)", flush=True)
    for S in (1, 10):
        tot = totals.setdefault(S, {})
        for stage, iters in ITERS.items():
            parts = step_parts(S, stage, x, steps)
            for k, v in parts.items():
                tot[k] = tot.get(k, 0.0) + v * iters / 1e3
            print(f"{S:3d} {stage:9} " + " ".join(f"{parts[k]:8.3f}" for k in ("step", "gemm", "gemm_t", "sgd",
                                                                                "rest")), flush=True)
        print(f"{S:3d} {'recipe s':9} " + " ".join(f"{tot[k]:8.1f}" for k in ("step", "gemm", "gemm_t", "sgd",
                                                                             "rest")), flush=True)
    one, ten = totals[1], totals[10]
    print(f"autoencoder recipe: 1 seed {one['step']:.1f} s, 10 seeds {ten['step']:.1f} s "
          f"({ten['step'] / one['step']:.2f}x); 10 seeds with the elementwise rest free: gemm + sgd = "
          f"{ten['gemm'] + ten['sgd']:.1f} s ({(ten['gemm'] + ten['sgd']) / one['step']:.2f}x one seed's steps; "
          f"1.5x = {1.5 * one['step']:.1f} s)", flush=True)


def depict_steps() -> None:
    from torch.profiler import ProfilerActivity, profile

    from methods.depict import DepictAutoencoder

    dev = torch.device("cuda")
    xi = torch.rand(70000, 1, 28, 28, device=dev) * 2 - 1
    for bench_flag in (False, True):
        torch.backends.cudnn.benchmark = bench_flag
        torch.manual_seed(0)
        m = DepictAutoencoder((1, 28, 28), 10, [50, 50], [4, 5], [2, 2], [0, 2], [0.1, 0.1, 0.0]).to(dev)
        opt = torch.optim.Adam(list(m.parameters()), lr=1e-4, capturable=True)

        def dl(idx):
            rec, logits = m.noisy_losses(xi.index_select(0, idx), 0.1)
            return rec + logits.logsumexp(1).mean() * 0.0

        step = GraphedStep(dl, opt, 100, dev)
        g = torch.Generator(device="cpu").manual_seed(0)

        def batch():
            return torch.randint(0, 70000, (100,), generator=g).to(dev)
        for _ in range(50):
            step.step(batch())
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(1000):
            step.step(batch())
        torch.cuda.synchronize()
        print(f"DEPICT step cudnn.benchmark={bench_flag}: {(time.perf_counter() - t) / 1000 * 1e3:.3f} ms/step",
              flush=True)
        if bench_flag:
            with profile(activities=[ProfilerActivity.CUDA]) as p:
                for _ in range(100):
                    step.step(batch())
                torch.cuda.synchronize()
            print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=80), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.ae_steps", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="timed steps (replays) per measurement")
    p.add_argument("--skip-depict", action="store_true", help="only the autoencoder recipe's steps")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench.perf.ae_steps needs a CUDA GPU; run it on one", file=sys.stderr)
        return 2
    autoencoder_parts(args.steps)
    if not args.skip_depict:
        depict_steps()
    return 0


if __name__ == "__main__":
    sys.exit(main())

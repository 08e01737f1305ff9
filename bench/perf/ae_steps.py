"""Per-step cost of the autoencoder family's training steps on one GPU (explains bench.perf.dec_seeds).

    python -m bench.perf.ae_steps        (CUDA only; about 40 s on an H200)

For S = 1 and S = 10 seeds batched into one model, it times one CUDA-graph-replayed SGD step of each
stage of DEC's autoencoder recipe (layer-wise pretraining of layers 1-4, end-to-end fine-tuning) with
PyTorch's foreach and fused SGD, on random data of MNIST's shape, TF32 on, and extrapolates to the
full recipe (50,000 steps per layer + 100,000 fine-tuning). Then one DEPICT step (batch 100) with
cuDNN autotuning off and on, with a kernel profile.
"""
import sys
import time

import torch

from methods.common.autoencoder import BatchedMLPAutoencoder, denoising_layer_loss, reconstruction_loss
from methods.common.train import GraphedStep, SeedIndexStreams


def main() -> int:
    if not torch.cuda.is_available():
        print("error: bench.perf.ae_steps needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    dims = [784, 500, 500, 2000, 10]
    x = torch.rand(70000, 784, device=dev) * 5
    torch.backends.cuda.matmul.allow_tf32 = True

    def timed(step, stream, steps=1500):
        for _ in range(50):
            step.step(stream.next())
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step.step(stream.next())
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / steps * 1e3

    def ae_case(S, layer, opt_kind):
        model = BatchedMLPAutoencoder.initial(dims, 0.01, list(range(S))).to(dev)
        if layer is None:
            def loss_fn(idx):
                return reconstruction_loss(model, x, idx)
            params = list(model.parameters())
        else:
            i = layer
            h_in = model.encode_all(x, upto=i) if i > 0 else x

            def loss_fn(idx):
                return denoising_layer_loss(model, i, h_in, idx, 0.2)
            params = [model.enc_w[i], model.enc_b[i], model.dec_w[i], model.dec_b[i]]
        kw = {"fused": True} if opt_kind == "fused" else {"foreach": True}
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, **kw)
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in range(S)]
        step = GraphedStep(loss_fn, opt, (S, 256), dev, n_losses=S)
        ms = timed(step, SeedIndexStreams(70000, 256, gens, dev))
        stage = "finetune" if layer is None else f"layer{layer + 1}"
        print(f"S={S:2d} {stage} {opt_kind:7s} {ms:.3f} ms/step", flush=True)
        return ms

    for S in (1, 10):
        tot = {}
        for kind in ("foreach", "fused"):
            per = [ae_case(S, i, kind) for i in range(4)]
            ft = ae_case(S, None, kind)
            tot[kind] = sum(per) * 50 + ft * 100
            print(f"S={S} {kind}: estimated full recipe {tot[kind]:.1f} s (50k/layer + 100k finetune)", flush=True)

    # DEPICT step
    from torch.profiler import ProfilerActivity, profile

    from methods.depict import DepictAutoencoder

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

        class S1:
            def next(self):
                return torch.randint(0, 70000, (100,), generator=g).to(dev)
        ms = timed(step, S1(), steps=1000)
        print(f"DEPICT step cudnn.benchmark={bench_flag}: {ms:.3f} ms/step", flush=True)
        if bench_flag:
            with profile(activities=[ProfilerActivity.CUDA]) as p:
                for _ in range(100):
                    step.step(S1().next())
                torch.cuda.synchronize()
            print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=80), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

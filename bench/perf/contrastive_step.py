"""Throughput of a full CC training step on the GPU-resident data path vs the bare backbone step.

    python -m bench.perf.contrastive_step                       # both issue-6 settings, bf16
    python -m bench.perf.contrastive_step --size 32 --arch resnet18 --batch 512
    python -m bench.perf.contrastive_step --size 224 --arch resnet34 --batch 256 --fp32
    python -m bench.perf.contrastive_step --precisions bf16,fp32 --json out.json

Data: a random uint8 tensor of CIFAR-10's training shape (50,000 x 3 x 32 x 32) kept on the GPU (no
real data needed: every step costs the same for any pixel values). Timed, on one GPU, side by side:

* ``aug``: the two CC views of a batch (GPUAugment, cc_spec(size, s=0.5), compiled) from the uint8 dataset;
  ``aug-eager`` without torch.compile; ``aug-split`` an experiment (one compiled region per jitter position).
* ``bare(2B)``: backbone forward + backward + SGD(momentum) step on a pre-made batch of 2B images in the
  network's input dtype/layout (what the full step's backbone sees: two views of B samples). The
  ratio full/bare uses this one: same backbone work, so it measures the cost of everything else.
* ``bare(B)``: the same on B images (comparable with the issue's "bare ResNet train step" figures).
* ``full``: CC's step: gather B samples -> two GPUAugment views -> backbone on both views (one
  forward over the 2B views; ``full-sep`` runs the views separately as CC's code does, per-view BN
  statistics) -> instance head (512-512-128) + cluster head (512-512-K) -> nt_xent(0.5) +
  cluster_contrastive(1.0) -> Adam(3e-4) step. Views are made in the network's input dtype (bf16 under
  bf16); ``full-f32views`` makes float32 views (GPUAugment's default, what the methods use) and lets
  autocast cast them.
* ``check``: compiled vs eager augmentation on the GPU and GPU vs CPU eager, same drawn parameters.
* ``--methods cc:cifar32,pica,idfd``: each method's own training (its ``run``: its step and its epoch loop, the
  engine since issue 14) for ``--method-epochs`` epochs on ``--method-images`` random CIFAR-shaped images,
  label-blind eval only at the end; the harness's ``epoch_s`` (training only, synced) of every epoch after the
  first (torch.compile and cuDNN autotuning land there), median -> images/s. Imports only the harness API, so
  the same file times another checkout's methods: ``PYTHONPATH=OTHER python bench/perf/contrastive_step.py``.

``img/s`` counts input samples once: B per full step (each yields two views), 2B per bare(2B) step
and B per bare(B) step, so ``full img/s x 2`` is the backbone's image rate inside the full step.
Each variant runs eagerly and, unless ``--no-graph``, as a CUDA graph replayed per step
(methods.engine.steps.GraphedStep, the path the methods use). Times are CUDA-event medians over
``--repeats`` runs of ``--steps`` steps after warm-up; peak memory is torch's max allocated per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from methods.augment.gpu import GPUAugment, _augment_images, _compiled_augment, cc_spec
from methods.engine.steps import GraphedStep, IndexStream
from methods.losses import cluster_contrastive, nt_xent
from methods.nn.backbones import resnet
from methods.nn.heads import cluster_head, mlp_head


def _time(step, steps: int, repeats: int, warmup: int) -> float:
    """Median seconds per step (CUDA events) over ``repeats`` runs of ``steps`` steps, after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    per = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(steps):
            step()
        b.record()
        b.synchronize()
        per.append(a.elapsed_time(b) / 1000 / steps)
    return statistics.median(per)


class Bench:
    def __init__(self, args, size: int, arch: str, batch: int, precision: str):
        self.args, self.size, self.arch, self.batch, self.precision = args, size, arch, batch, precision
        self.dev = torch.device("cuda")
        self.bf16 = precision == "bf16"
        self.in_dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.stem = args.stem or ("cifar" if size <= 64 else "imagenet")
        self.fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        g = torch.Generator(device=self.dev).manual_seed(0)
        self.data = torch.randint(0, 256, (args.n_data, 3, 32, 32), dtype=torch.uint8, device=self.dev, generator=g)
        self.results: list[dict] = []
        self._augs: dict[bool, GPUAugment] = {}

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16)

    def _model(self):
        torch.manual_seed(0)
        return resnet(self.arch, self.stem).to(self.dev).to(memory_format=self.fmt)

    def _aug(self, compile_: bool) -> GPUAugment:
        if compile_ not in self._augs:  # one instance per mode, so torch.compile runs once
            self._augs[compile_] = GPUAugment(cc_spec(self.size, s=0.5), compile=compile_, out_dtype=self.in_dtype,
                                              channels_last=self.args.channels_last)
        return self._augs[compile_]

    def record(self, name: str, graph: bool, sec: float, samples: int, extra: dict | None = None) -> None:
        row = {"size": self.size, "arch": self.arch, "stem": self.stem, "batch": self.batch,
               "precision": self.precision, "variant": name, "graph": graph, "ms_per_step": sec * 1e3,
               "img_per_s": samples / sec, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
        row.update(extra or {})
        self.results.append(row)
        print(f"  {name:<12} graph={int(graph)}  {sec * 1e3:8.2f} ms/step  {samples / sec:9.0f} img/s  "
              f"peak {row['peak_mem_gib']:.2f} GiB", flush=True)

    def _run(self, name, loss_fn, opt, n_idx: int, samples: int, graph: bool, extra=None):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gen = torch.Generator(device=self.dev).manual_seed(1)
        stream = IndexStream(self.args.n_data, n_idx, gen, self.dev)
        gs = GraphedStep(loss_fn, opt, n_idx, self.dev, use_graph=graph, warmup=3)
        sec = _time(lambda: gs.step(stream.next()), self.args.steps, self.args.repeats, self.args.warmup)
        loss = float(gs.mean_loss())
        if not torch.isfinite(torch.tensor(loss)):
            raise RuntimeError(f"{name}: non-finite loss {loss}")
        self.record(name, graph, sec, samples, extra)
        return sec

    def aug_alone(self, compile_: bool, split: bool = False):
        aug = self._aug(compile_)
        if split:  # experiment: one compiled region per jitter position (image materialised between them)
            aug = GPUAugment(aug.spec, compile=True, out_dtype=self.in_dtype, channels_last=self.args.channels_last)
            aug._static = aug._static._replace(split_jitter=True)
        b = self.batch
        gen = torch.Generator(device=self.dev).manual_seed(2)
        stream = IndexStream(self.args.n_data, b, gen, self.dev)
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        aug(self.data[stream.next()].repeat(2, 1, 1, 1))
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        sec = _time(lambda: aug(self.data[stream.next()].repeat(2, 1, 1, 1)), self.args.steps, self.args.repeats,
                    self.args.warmup)
        name = "aug" + ("-split" if split else "" if compile_ else "-eager")
        self.record(name, False, sec, b, {"first_call_s": first})

    def check(self):
        """Compiled vs eager augmentation on the GPU, and GPU vs CPU eager, for the same drawn parameters."""
        aug = GPUAugment(cc_spec(self.size, s=0.5), out_dtype=torch.float32)
        x = self.data[:64]
        p = aug.sample_params(64, 32, 32, self.dev, torch.Generator(device=self.dev).manual_seed(5))
        eager = _augment_images(x, p, aug._static)
        comp = _compiled_augment()(x, p, aug._static)
        cpu = _augment_images(x.cpu(), {k: v.cpu() for k, v in p.items()}, aug._static)
        e1 = (comp - eager).abs().max().item()
        e2 = (eager.cpu() - cpu).abs().max().item()
        lo, hi = comp.min().item(), comp.max().item()
        print(f"  check {self.size}px: max|compiled - eager| = {e1:.2e}, max|GPU eager - CPU eager| = {e2:.2e}, "
              f"compiled range [{lo:.7f}, {hi:.7f}]", flush=True)
        self.results.append({"size": self.size, "precision": self.precision, "variant": "check",
                             "compiled_vs_eager": e1, "gpu_vs_cpu": e2})

    def bare(self, n: int, graph: bool):
        model = self._model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.rand(n, 3, self.size, self.size, device=self.dev).to(self.in_dtype).contiguous(memory_format=self.fmt)

        def loss_fn(idx):
            with self._autocast():
                f = model(x)
            return f.float().square().mean()

        # bare(n) counts its n images once
        return self._run(f"bare({'2B' if n == 2 * self.batch else 'B'})", loss_fn, opt, 1, n, graph)

    def full(self, graph: bool, separate: bool, compile_: bool, f32_views: bool = False):
        b, k = self.batch, self.args.clusters
        model = self._model()
        inst = mlp_head(512, 512, 128).to(self.dev)
        clu = cluster_head(512, 512, k).to(self.dev)
        params = [*model.parameters(), *inst.parameters(), *clu.parameters()]
        opt = torch.optim.Adam(params, lr=3e-4, weight_decay=0.0, fused=True, capturable=graph)
        # a fresh instance, as a method makes it: its first call (the compile, if not cached) lands in the warm-up
        aug = GPUAugment(cc_spec(self.size, s=0.5), compile=compile_,
                         out_dtype=torch.float32 if f32_views else self.in_dtype, channels_last=self.args.channels_last)

        def loss_fn(idx):
            x = self.data[idx]
            views = aug(x.repeat(2, 1, 1, 1))  # 2B independent draws: view 1 = rows [0, B), view 2 = [B, 2B)
            with self._autocast():
                if separate:
                    h = torch.cat([model(views[:b]), model(views[b:])])
                else:
                    h = model(views)
                z, c = inst(h), clu(h)
            z, c = z.float(), torch.softmax(c.float(), dim=1)
            return nt_xent(z[:b], z[b:], 0.5) + cluster_contrastive(c[:b], c[b:], 1.0)

        name = ("full-sep" if separate else "full") + ("-f32views" if f32_views and self.bf16 else "")
        return self._run(name + ("" if compile_ else "-eageraug"), loss_fn, opt, b, b, graph)


def run(args) -> list[dict]:
    torch.backends.cudnn.benchmark = True
    configs = [(args.size, args.arch, args.batch)] if args.size else [(32, "resnet18", 512), (224, "resnet34", 256)]
    precisions = ["fp32"] if args.fp32 else args.precisions.split(",")
    print(f"# device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"data: random uint8 [{args.n_data}, 3, 32, 32] on GPU (CIFAR-10 shape)  "
          f"tf32 conv={torch.backends.cudnn.allow_tf32} matmul={torch.backends.cuda.matmul.allow_tf32}", flush=True)
    out: list[dict] = []
    graphs = [False] if args.no_graph else [False, True]
    for precision in precisions:
        for size, arch, batch in configs:
            print(f"== {arch} {size}px batch {batch} ({2 * batch} views) {precision} "
                  f"channels_last={args.channels_last}", flush=True)
            bn = Bench(args, size, arch, batch, precision)
            compile_ = not args.no_compile
            if compile_:  # probe: if torch.compile fails here, fall back to the eager augmentation and say so
                try:
                    t0 = time.perf_counter()
                    bn._aug(True)(bn.data[:batch].repeat(2, 1, 1, 1))
                    torch.cuda.synchronize()
                    print(f"  torch.compile of the augmentation: {time.perf_counter() - t0:.1f} s", flush=True)
                except Exception as e:
                    print(f"  torch.compile FAILED ({type(e).__name__}: {str(e)[:300]}); eager augmentation",
                          flush=True)
                    compile_ = False
            tasks = [("aug", bn.aug_alone, (compile_,))]
            if compile_ and precision == precisions[0]:
                tasks.append(("aug-eager", bn.aug_alone, (False,)))
                tasks.append(("aug-split", bn.aug_alone, (True, True)))
            for g in graphs:
                tasks.append((f"bare2B g{int(g)}", bn.bare, (2 * batch, g)))
                tasks.append((f"full g{int(g)}", bn.full, (g, False, compile_)))
            tasks.append(("bareB", bn.bare, (batch, graphs[-1])))
            if precision == precisions[0] and not args.quick:
                tasks.append(("full-sep", bn.full, (graphs[-1], True, compile_)))
                if bn.bf16:
                    tasks.append(("full-f32views", bn.full, (graphs[-1], False, compile_, True)))
            for label, fn, fn_args in tasks:
                try:
                    fn(*fn_args)
                except Exception as e:  # keep going: one failed variant must not lose the others' figures
                    print(f"  {label}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    bn.results.append({"size": size, "precision": precision, "variant": label, "error": str(e)[:300]})
            if args.check:
                try:
                    bn.check()
                except Exception as e:
                    print(f"  check: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            _summary(bn.results, graphs)
            out.extend(bn.results)
            del bn
            torch.cuda.empty_cache()
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
    return out


def _summary(rows: list[dict], graphs: list[bool]) -> None:
    ok = [r for r in rows if "error" not in r]
    for g in graphs:
        bare = [r for r in ok if r["variant"] == "bare(2B)" and r["graph"] == g]
        full = [r for r in ok if r["variant"] == "full" and r["graph"] == g]
        if bare and full:
            b, f = bare[0], full[0]
            print(f"  -> graph={int(g)}: full {f['img_per_s']:.0f} samples/s ({2 * f['img_per_s']:.0f} views/s) vs "
                  f"bare backbone {b['img_per_s']:.0f} img/s on the same 2B views: ratio "
                  f"{b['ms_per_step'] / f['ms_per_step']:.3f}; peak {f['peak_mem_gib']:.2f} GiB", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None,
                   help="output size (default: run 32/resnet18/512 and 224/resnet34/256)")
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34"])
    p.add_argument("--batch", type=int, default=512, help="samples per step (each gives two views)")
    p.add_argument("--stem", default=None, choices=["imagenet", "cifar"], help="default: cifar <= 64 px, else imagenet")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast (float32 end to end)")
    p.add_argument("--precisions", default="bf16", help="comma list of bf16,fp32 (ignored with --fp32)")
    p.add_argument("--no-graph", action="store_true", help="eager only (no CUDA-graph variants)")
    p.add_argument("--no-compile", action="store_true", help="eager augmentation (no torch.compile)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--quick", action="store_true", help="skip the separate-views variant")
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--n-data", type=int, default=50_000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", default=None, help="write all rows here")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the compiled-vs-eager / GPU-vs-CPU augmentation check")
    p.add_argument("--methods", default="", help="also time these methods' own training, e.g. cc:cifar32,pica,idfd")
    p.add_argument("--methods-only", action="store_true", help="only the --methods timings")
    p.add_argument("--method-images", type=int, default=8192)
    p.add_argument("--method-epochs", type=int, default=3)
    p.add_argument("--method-graph", default="1", help="comma list of 1,0: the methods with CUDA-graphed steps (1) "
                                                        "and/or eager (0)")
    p.add_argument("--method-graph", default="1", help="comma list of 1,0: each method with CUDA-graphed steps "
                                                        "(1, the default) and/or eager (0)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.json is None and os.environ.get("OUT"):
        args.json = os.path.join(os.environ["OUT"], "contrastive_step.json")
    rows = run(args) if not args.methods_only else []
    if args.methods:
        print(f"== methods' own epochs: {args.method_images} random images, {args.method_epochs} epochs each",
              flush=True)
        from bench.perf.method_epochs import method_epochs

        rows += method_epochs(argparse.Namespace(methods=args.methods, images=args.method_images,
                                                 epochs=args.method_epochs, graph=args.method_graph,
                                                 clusters=args.clusters))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    try:
        from torch._dynamo.utils import counters
        print(f"# dynamo: {dict(counters['stats'])}", flush=True)
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Exact k-NN mining (SCAN's neighbour stage) and k-means on 60k-1M random embeddings, on the GPU.

    python -m bench.perf.neighbours                          # N = 60,000 and 1,000,000, D = 128, k = 20, K = 10
    python -m bench.perf.neighbours --sizes 60000 --dim 512 --k 100 --clusters 10,100 --json out.json

Data: random Gaussian features (the cost does not depend on the values), float32 on the device.
Timed (CUDA-synchronised wall clock, median of ``--repeats`` after one warm-up):

* ``mine``: :func:`methods.cluster.neighbours.mine_neighbours` (cosine on L2-normalised rows, top-(k+1) with
  the sample itself, as SCAN's faiss ``IndexFlatIP`` search), at the default chunk and at ``--chunks``.
* ``check``: 512 random query rows against a float64 brute force over all N: the same neighbour sets
  (exact search; ties aside) and similarities within 1e-5.
* ``kmeans``: :func:`methods.cluster.kmeans.kmeans` with one k-means++ init and at most ``--iters`` Lloyd
  iterations (tol 0, so every run does all of them): time per init, per Lloyd iteration and for the
  k-means++ seeding alone, for each K in ``--clusters``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from methods.cluster.kmeans import kmeans, kmeans_plusplus
from methods.cluster.neighbours import mine_neighbours


def _timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (allocator, cuBLAS handles)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="60000,1000000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--chunks", default="", help="extra chunk sizes to time, e.g. 1024,4096")
    ap.add_argument("--clusters", default="10")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench.perf.neighbours needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 similarities, as faiss' flat index
    print(f"# device: {torch.cuda.get_device_name()}  torch {torch.__version__}  D={args.dim} k={args.k}")
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        g = torch.Generator(device=dev).manual_seed(n)
        x = torch.randn(n, args.dim, device=dev, generator=g)
        for chunk in [None] + [int(c) for c in args.chunks.split(",") if c]:
            sec, (idx, sim) = _timed(lambda c=chunk, x=x: mine_neighbours(x, args.k, chunk=c), args.repeats)
            used = chunk or max(1, min(n, (1 << 28) // n))
            rows.append({"op": "mine", "n": n, "chunk": used, "s": sec})
            print(f"mine    N={n:>9,}  chunk={used:>6}  {sec:8.3f} s  ({n / sec:,.0f} queries/s)")
        q = torch.randperm(n, device=dev, generator=g)[:512]
        xn = F.normalize(x.double(), dim=1)
        ref = (xn[q] @ xn.t()).topk(args.k + 1, dim=1)
        same = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx[q], ref.indices, strict=True))
        err = (sim[q].double() - ref.values).abs().max().item()
        self_first = (idx[:, 0] == torch.arange(n, device=dev)).float().mean().item()
        print(f"check   N={n:>9,}  neighbour sets equal: {same}/{512 * (args.k + 1)}  max|sim err| {err:.1e}  "
              f"self first: {self_first:.4f}")
        rows.append({"op": "check", "n": n, "same": same, "of": 512 * (args.k + 1), "sim_err": err})
        del idx, sim, xn
        for k_clusters in [int(s) for s in args.clusters.split(",") if s]:
            gk = torch.Generator(device=dev)

            def run(kc=k_clusters, gk=gk, x=x):
                gk.manual_seed(0)
                return kmeans(x, kc, n_init=1, max_iter=args.iters, tol=0.0, generator=gk)

            sec, res = _timed(run, args.repeats)
            x_sq = (x * x).sum(1)
            def seed_only(kc=k_clusters, gk=gk, x=x, x_sq=x_sq):
                return kmeans_plusplus(x, x_sq, kc, gk.manual_seed(0))

            sec_pp, _ = _timed(seed_only, args.repeats)
            per_iter = (sec - sec_pp) / max(1, res.n_iter)
            rows.append({"op": "kmeans", "n": n, "k": k_clusters, "s": sec, "iters": res.n_iter,
                         "s_per_iter": per_iter, "s_plusplus": sec_pp})
            print(f"kmeans  N={n:>9,}  K={k_clusters:<4} one init: {sec:7.3f} s ({res.n_iter} Lloyd iterations, "
                  f"{per_iter * 1e3:.2f} ms each; k-means++ {sec_pp * 1e3:.1f} ms)")
        del x
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "dim": args.dim, "k": args.k, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

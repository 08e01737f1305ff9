"""Speed benchmark: the full DEC recipe for 1 seed vs S seeds batched on one GPU.

    python -m bench.perf.dec_seeds --seeds 1 10 [--data DIR] [--dataset mnist]

Each measurement starts from an empty stage cache, so it times everything DEC does for those
seeds: layer-wise denoising pretraining (4 x 50,000 iterations), end-to-end fine-tuning (100,000),
k-means (20 restarts) and the KL self-training until its stopping rule, all with the paper's
defaults (``--set key=value`` overrides, e.g. for a quick CPU check). Data loading and CUDA start-up
are outside the timed region and printed separately. Per batch it prints wall time, peak GPU memory
(``torch.cuda.max_memory_allocated``) and, as a sanity check only, each seed's ACC; at the end the
ratio to the 1-seed time and the targets (issue 13: 10 seeds <= 1.5x one seed; one seed <= 60 s).

``--export-stages DIR`` copies the pretrained autoencoders of the largest batch into a results
store's ``stages/`` folder, where `bench run` with the same data, stage version and config finds them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.cli import parse_set
from bench.context import TrialContext
from bench.data import default_cache_dir, default_data_root, load_dataset
from bench.errors import BenchError
from bench.method import ClusteringData, ClusterOutput
from bench.metrics import evaluate
from bench.provenance import code_version, environment
from bench.registry import get_method, resolve_config
from bench.trial import pick_device, seed_everything

RATIO_TARGET = 1.5  # 10 seeds batched / 1 seed, issue 13
ONE_SEED_TARGET_S = 60.0


def measure(method_name: str, data: ClusteringData, y: np.ndarray, seeds: list[int], overrides: dict,
            device: torch.device, stage_dir: Path, code: str) -> dict:
    cls = get_method(method_name)
    config = resolve_config(method_name, "default", data.dataset, overrides)
    ctxs = [TrialContext(seed=s, device=device, artifact_dir=stage_dir / "artifacts" / str(s), stage_dir=stage_dir,
                         data_md5=data.md5, code_version=code, logger=logging.getLogger("bench.perf"))
            for s in seeds]
    seed_everything(seeds[0])
    method = cls(config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    outs = method.fit_seeds(data, ctxs) if len(ctxs) > 1 and cls.supports_seed_batch else \
        [method.fit(data, c) for c in ctxs]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    # end of the autoencoder stage (curve rows of pretrain_layer*/finetune carry elapsed time)
    stage_ends = [row["elapsed_s"] for row in ctxs[0].curve
                  if str(row.get("stage", "")).startswith(("pretrain", "finetune"))]
    accs, iters = [], []
    for out in outs:
        if isinstance(out, BaseException):
            raise out
        assert isinstance(out, ClusterOutput)
        accs.append(evaluate(y, out.labels_numpy())["acc"])
        iters.append(out.info.get("iterations"))
    return {"seeds": len(seeds), "wall_s": round(wall, 2), "per_seed_s": round(wall / len(seeds), 2),
            "autoencoder_s": max(stage_ends) if stage_ends else None,
            "peak_gpu_mib": None if peak is None else round(peak, 1), "acc": [round(a, 4) for a in accs],
            "dec_iterations": iters, "stages": [[u["reused"] for u in c.stages_used] for c in ctxs]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.dec_seeds", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 10], help="batch sizes to time (seeds 0..S-1)")
    p.add_argument("--method", default="dec", help="a seed-batching method (dec, idec, ae_kmeans)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data", default=None, help="data root (default: $BENCH_DATA or ./data)")
    p.add_argument("--subset", type=int, default=None, help="first N images only (quick CPU checks)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--export-stages", default=None, help="copy the largest batch's stages into this folder")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        device = pick_device(args.device)
        t_load = time.perf_counter()
        loaded = load_dataset(args.dataset, Path(args.data) if args.data else default_data_root(),
                              default_cache_dir())
        x, y = loaded.split("all")
        md5 = loaded.md5
        if args.subset:
            x, y, md5 = x[:args.subset], y[:args.subset], f"{md5}-first{args.subset}"
        data = ClusteringData(dataset=args.dataset, x_train=x, x_eval=x, n_clusters=int(len(torch.unique(y))),
                              train_split="all", eval_split="all", md5=md5)
        load_s = time.perf_counter() - t_load
        if device.type == "cuda":  # CUDA context and cuBLAS start-up, outside the timed region
            torch.ones(8, 8, device=device).matmul(torch.ones(8, 8, device=device))
            torch.cuda.synchronize(device)
        overrides = parse_set(args.set)
        code = str(code_version()["code_version"])
        env = environment(str(device))
        print(f"# {args.method} full recipe on {args.dataset} ({x.shape[0]} images), device {device} "
              f"({env.get('gpu') or env.get('cpu') or ''}), torch {torch.__version__}, code {code}, "
              f"load {load_s:.1f}s, overrides {overrides or 'none (paper recipe)'}", flush=True)
        rows = []
        for s in args.seeds:
            with tempfile.TemporaryDirectory(prefix="dec-bench-") as tmp:
                row = measure(args.method, data, y.numpy(), list(range(s)), overrides, device, Path(tmp), code)
                rows.append(row)
                print(f"seeds={row['seeds']:3d}  wall_s={row['wall_s']:8.2f}  per_seed_s={row['per_seed_s']:7.2f}  "
                      f"autoencoder_s={row['autoencoder_s']}  peak_gpu_mib={row['peak_gpu_mib']}  "
                      f"acc={row['acc']}  iters={row['dec_iterations']}",
                      flush=True)
                if args.export_stages and s == max(args.seeds):
                    dst = Path(args.export_stages)
                    shutil.copytree(Path(tmp), dst, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("artifacts", "*.lock", ".locks"))
        base = next((r for r in rows if r["seeds"] == 1), None)
        if base:
            for r in rows:
                if r["seeds"] > 1:
                    ratio = r["wall_s"] / base["wall_s"]
                    print(f"ratio {r['seeds']} seeds / 1 seed = {ratio:.2f}x (target <= {RATIO_TARGET:.2f}x: "
                          f"{'met' if ratio <= RATIO_TARGET else 'NOT met'})")
            print(f"1 seed = {base['wall_s']:.1f}s (target <= {ONE_SEED_TARGET_S:.0f}s: "
                  f"{'met' if base['wall_s'] <= ONE_SEED_TARGET_S else 'NOT met'})")
        if args.json:
            Path(args.json).write_text(json.dumps({"device": str(device), "env": env, "code": code, "rows": rows,
                                                   "overrides": overrides}, indent=1, default=str))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Epoch time of methods' own training (their ``run``: step and epoch loop) on random CIFAR-shaped images.

    python -m bench.perf.method_epochs --methods cc:cifar32,pica,idfd --images 30000 --epochs 3 --graph 1,0
    PYTHONPATH=OTHER_CHECKOUT python bench/perf/method_epochs.py ...   # the same timing of another checkout

Imports only the harness API (registry, context, method), so this one file times any checkout's methods (an A/B
of two code versions in one GPU command). ``epoch_s`` is the harness's training time per epoch (synced); the
median over the epochs after the first (torch.compile, cuDNN autotuning, CUDA-graph capture land there) gives
images/s. ``--graph 1,0`` runs each method with and without CUDA-graphed steps (``cuda_graph``; methods or
checkouts without the field run once). Also reached through ``contrastive_step --methods``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def method_epochs(args) -> list[dict]:
    """Epoch time of each ``--methods`` entry (``name`` or ``name:variant``) through its own ``run``."""
    from bench.context import TrialContext
    from bench.method import ClusteringData
    from bench.registry import get_method, resolve_config

    n = args.images
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ClusteringData("random", x, x, args.clusters, "all", "all", "md5")
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # (cpu: only to try this function out)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    rows = []
    graphs = [g == "1" for g in args.graph.split(",")]
    items = [(item, g) for item in args.methods.split(",") for g in graphs]
    for item, graph in items:
        name, _, variant = item.partition(":")
        cls = get_method(name)
        if "cuda_graph" not in cls.Config.model_fields and graph != graphs[0]:
            continue  # no such switch in this method (or checkout): one run is all there is
        fields = cls.Config.model_fields
        overrides = {"epochs": args.epochs, **({"eval_every": 0} if "eval_every" in fields else {})}
        if "kmeans_n_init" in fields:  # the end-of-run k-means is not what is timed
            overrides["kmeans_n_init"] = 1
        if "cuda_graph" in fields:
            overrides["cuda_graph"] = graph
        else:
            graph = None  # no switch: whatever the method does
        cfg = resolve_config(name, variant or "default", None, overrides)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                ctx = TrialContext(seed=0, device=dev, artifact_dir=Path(tmp) / "a", stage_dir=Path(tmp) / "s",
                                   data_md5="md5", code_version="perf")
                sync()
                t0 = time.perf_counter()
                method = cls(cfg)
                out = getattr(method, "fit", method.run)(data, ctx)  # fit() binds the stages (issue 14)
                sync()
                wall = time.perf_counter() - t0
        except Exception as e:  # keep going: one failed method must not lose the others' figures
            print(f"  method {item}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            rows.append({"variant": f"method:{item}", "graph": graph, "error": str(e)[:300]})
            continue
        rows_t = [r for r in ctx.curve if "epoch_s" in r]
        # a method whose training is a stage (SimCLR + k-means: the pretext) reports the stage's mean epoch (first
        # epoch included) in its info
        times = [r["epoch_s"] for r in rows_t] or [out.info[k] for k in ("pretext_mean_epoch_s",) if out.info.get(k)]
        losses = [r.get("loss") for r in rows_t]
        if not times:
            print(f"  method {item}: no per-epoch times (wall {wall:.1f} s)", flush=True)
            continue
        med = statistics.median(times[1:] or times)
        row = {"variant": f"method:{item}", "graph": graph, "losses": losses, "images": n, "epochs": len(times),
               "epoch_s": times,
               "median_epoch_s": med, "img_per_s": n / med, "wall_s": wall,
               "batch_size": cfg.batch_size, "backbone": getattr(cfg, "backbone", None),
               "image_size": getattr(cfg, "image_size", None), "precision": cfg.precision}
        rows.append(row)
        g = "-" if graph is None else int(graph)
        print(f"  method {item:<12} graph={g} {row['backbone']} {row['image_size']}px batch {cfg.batch_size} "
              f"{cfg.precision}: epoch s {', '.join(f'{t:.3f}' for t in times)}; median after the first "
              f"{med * 1e3:8.1f} ms -> {n / med:8.0f} img/s (wall {wall:.1f} s); loss "
              f"{', '.join(f'{v:.4f}' for v in losses if v is not None)}", flush=True)
    return rows



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", required=True, help="comma list of name or name:variant, e.g. cc:cifar32,pica,idfd")
    p.add_argument("--images", type=int, default=8192, help="random 32 x 32 RGB images to train on")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--graph", default="1", help="comma list of 1,0: CUDA-graphed steps on (1) and/or off (0)")
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    print(f"== methods' own epochs: {args.images} random images, {args.epochs} epochs each", flush=True)
    rows = method_epochs(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ATen operator counts of a method's own training run on the CPU: compare two checkouts without a GPU.

    python -m bench.perf.op_counts --methods cc:cifar32 --images 64 --epochs 3 > ops.txt

Runs ``bench.perf.contrastive_step``'s ``method_epochs`` (the method's ``run``: its step and its epoch loop)
under ``torch.profiler`` and prints ``count op`` per ATen operator. Two checkouts whose counts agree do the same
work per step; a per-step host copy or an extra kernel shows up as a count that grows with the steps.
"""

from __future__ import annotations

import argparse
import collections

from torch.profiler import ProfilerActivity, profile

from bench.perf.contrastive_step import method_epochs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="cc:cifar32", help="comma list of name[:variant]")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--clusters", type=int, default=10)
    a = p.parse_args(argv)
    args = argparse.Namespace(method_images=a.images, clusters=a.clusters, methods=a.methods,
                              method_epochs=a.epochs)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        method_epochs(args)
    counts = collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
    for name, n in sorted(counts.items()):
        print(n, name)


if __name__ == "__main__":
    main()

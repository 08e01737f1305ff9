"""The GPU data path every engine-trained method shares (no DataLoader, no per-step host round trip).

* The whole split goes to the device once, in its stored dtype (uint8: 184 MB for CIFAR's 60k images);
  each epoch draws a seeded permutation on the device and slices batches from it (:func:`epoch_batches`).
* On a GPU: cuDNN autotuning (every batch has the same shape), channels-last weights and batches (the layout
  the GPU augmentations emit), bf16 autocast (``precision``).
* Eval passes run without augmentation, batched, under the same precision (:func:`eval_pass`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


def autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device,
                  drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Index batches of one epoch from a seeded permutation drawn on the generator's device.

    ``drop_last`` as the official loaders do; a dataset smaller than one batch gives one batch of all.
    """
    perm = torch.randperm(n, generator=gen, device=gen.device).to(device)
    bs = min(batch_size, n)
    n_batches = n // bs if drop_last else -(-n // bs)
    for i in range(n_batches):
        yield perm[i * bs:(i + 1) * bs]


def prepare_training(x: torch.Tensor, net: torch.nn.Module,
                     device: torch.device) -> tuple[torch.Tensor, torch.nn.Module]:
    """The whole split on the device, kept in its stored dtype, and the network there (channels-last on a GPU)."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return x.to(device, non_blocking=True).contiguous(), net


def unlabeled_images(data, use: bool) -> torch.Tensor | None:
    """The dataset's training-only unlabeled images (STL-10's 100,000) when the recipe uses them, else None."""
    x = data.x_unlabeled
    return x if use and x is not None and x.shape[0] > 0 else None


def conv_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch in the network's layout from :func:`prepare_training` (channels-last on a GPU)."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@torch.no_grad()
def eval_pass(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, prep: Callable[[torch.Tensor], torch.Tensor],
              batch_size: int, device: torch.device, precision: str) -> Any:
    """``fn(prep(x[batch]))`` over ``x`` in order; tensors (or tuples of tensors/None) concatenated as float32."""
    outs: list[Any] = []
    for s in range(0, x.shape[0], batch_size):
        xb = prep(x[s:s + batch_size].to(device, non_blocking=True))
        with autocast(device, precision):
            out = fn(xb)
        outs.append(tuple(None if o is None else o.float() for o in out) if isinstance(out, tuple) else out.float())
    if isinstance(outs[0], tuple):
        return tuple(None if outs[0][i] is None else torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))
    return torch.cat(outs)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Modules in eval mode (BatchNorm running statistics, no updates) inside the block, train mode after."""
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m in modules:
            m.train()

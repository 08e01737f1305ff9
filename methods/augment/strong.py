"""SCAN's strong augmentation ("ours": flip, crop, 4 random RandAugment ops, Cutout) on the GPU, per sample.

SCAN's clustering and self-labelling steps and SPICE-Self (``aug_type="scan"``) train on
``transforms.Compose([RandomHorizontalFlip(), RandomCrop(size), Augment(4), ToTensor(), Normalize, Cutout])``
(wvangansbeke/Unsupervised-Classification ``utils/common_config.py`` and ``data/augment.py``):

* ``Augment(n)``: ``random.choices`` of ``n`` ops (with replacement) from 14, each with a magnitude uniform in
  its range: Identity, AutoContrast, Equalize, Rotate [-30, 30] deg, Solarize [0, 256], Color, Contrast,
  Brightness, Sharpness [0.05, 0.95], ShearX/ShearY [-0.1, 0.1], TranslateX/TranslateY [-0.1, 0.1] of the
  size, Posterize [4, 8] bits; rotate, shear and translate flip their sign with probability 0.5.
* ``Cutout(n_holes=1, length=L, random=True)``: a square of side ``randint(1, L)`` (clipped at the border,
  ``2 * (side // 2)`` pixels wide) centred at a uniform pixel, zeroed *after* Normalize (so it shows the
  dataset's mean colour).
* ``RandomCrop(size)`` without padding is the identity at the dataset's own size (CIFAR 32, STL 96); with
  ``crop_padding`` (SPICE's "weak": ``RandomCrop(32, padding=4)`` + flip; FixMatch's weak view) zero padding.

Here every op runs on float images in [0, 1] for the whole batch at once, with its own random draws per
sample; geometric ops are one nearest-neighbour affine gather with black fill (PIL's ``transform`` /
``rotate`` defaults, pixel centres as PIL maps them). Differences from PIL (documented, not hidden): the
images are not rounded to uint8 between ops (Equalize, Posterize and Solarize quantise their input to 256
levels, as they need integer levels); PIL's blur for Sharpness leaves the border pixels unfiltered, which is
done here too; random numbers come from torch's generator, so draws differ from Python's ``random``.

Speed (issue 15): drawing the parameters makes no host-to-device copy (the op tables are Python scalars compared
on the device), so a training step never waits for the GPU here; on CUDA inputs the image work (every op of
every slot is computed for the whole batch and selected per sample, ~250 small kernels eagerly) goes through
``torch.compile`` once per process and shape, and becomes a few fused kernels. Same output as eager
(bench/perf/scan_epoch.py checks it on the GPU).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import BenchError

#: SCAN's ``augment_list()``: (name, min, max) in its order; the op index is the position here.
OPS: tuple[tuple[str, float, float], ...] = (
    ("identity", 0, 1), ("autocontrast", 0, 1), ("equalize", 0, 1), ("rotate", -30, 30), ("solarize", 0, 256),
    ("color", 0.05, 0.95), ("contrast", 0.05, 0.95), ("brightness", 0.05, 0.95), ("sharpness", 0.05, 0.95),
    ("shear_x", -0.1, 0.1), ("translate_x", -0.1, 0.1), ("translate_y", -0.1, 0.1), ("posterize", 4, 8),
    ("shear_y", -0.1, 0.1),
)
_IDX = {name: i for i, (name, _, _) in enumerate(OPS)}
_MIRRORED = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")  # random_mirror = True
_L_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's convert("L")


@dataclass(frozen=True)
class ScanAugmentSpec:
    size: int
    n_ops: int = 4  # num_strong_augs
    cutout: int = 16  # cutout_kwargs.length (32 for STL-10); 0 = no Cutout
    crop_padding: int = 0  # RandomCrop padding (SPICE weak / FixMatch weak: 4)
    flip_p: float = 0.5
    mean: tuple | None = None
    std: tuple | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or self.n_ops < 0 or self.cutout < 0 or self.crop_padding < 0:
            raise BenchError(f"bad strong-augmentation spec {self}")


def _uniform(n, lo, hi, device, generator, shape=()):
    return torch.rand((n, *shape), device=device, generator=generator) * (hi - lo) + lo


class ScanAugment:
    """``ScanAugment(spec)(x, generator)``: uint8 [B, C, H, W] (H = W = spec.size, or padded-cropped to it)
    -> float32 [B, C, size, size], normalised when the spec has mean/std."""

    def __init__(self, spec: ScanAugmentSpec, compile: bool = True):
        self.spec = spec
        self.compile = compile  # CUDA inputs only; CPU inputs always run eagerly
        self._static = _Static(spec.size, spec.n_ops, spec.cutout, spec.crop_padding,
                               None if spec.mean is None else tuple(spec.mean),
                               None if spec.std is None else tuple(spec.std))

    def sample_params(self, n: int, height: int, width: int, device, generator=None) -> dict[str, Tensor]:
        sp = self.spec
        pad = sp.crop_padding
        op = torch.randint(len(OPS), (n, sp.n_ops), device=device, generator=generator)
        u = torch.rand((n, sp.n_ops), device=device, generator=generator)
        # each op's range, picked per draw with Python scalars (a torch.tensor table would be a host-to-device
        # copy, which waits for the GPU, on every call)
        lo, hi = torch.zeros_like(u), torch.zeros_like(u)
        for i, (_, a, b) in enumerate(OPS):
            hit = op == i
            lo, hi = torch.where(hit, float(a), lo), torch.where(hit, float(b), hi)
        mag = lo + u * (hi - lo)
        mirror = torch.rand((n, sp.n_ops), device=device, generator=generator) < 0.5
        mirrored = torch.zeros_like(mirror)
        for m in _MIRRORED:
            mirrored = mirrored | (op == _IDX[m])
        mag = torch.where(mirror & mirrored, -mag, mag)
        return {
            "flip": torch.rand(n, device=device, generator=generator) < sp.flip_p,
            "crop": torch.randint(0, 2 * pad + height - sp.size + 1, (n, 2), device=device, generator=generator),
            "op": op, "mag": mag,
            "cut_len": torch.randint(1, max(sp.cutout, 1) + 1, (n,), device=device, generator=generator),
            "cut_yx": torch.stack([torch.randint(0, sp.size, (n,), device=device, generator=generator),
                                   torch.randint(0, sp.size, (n,), device=device, generator=generator)], 1),
        }

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() != 4:
            raise BenchError(f"ScanAugment expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        p = self.sample_params(x.shape[0], x.shape[2], x.shape[3], x.device, generator)
        if self.compile and x.is_cuda:
            try:  # the first call compiles; if the compiler is unusable here, run eagerly (same output), loudly
                return _compiled_apply()(x, p, self._static)
            except Exception as e:  # noqa: BLE001 - any compiler failure means "run eagerly"
                warnings.warn(f"ScanAugment: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); running "
                              "the augmentation eagerly (slower, same output)", stacklevel=2)
                self.compile = False
        return self.apply(x, p)

    def apply(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """The image work for drawn parameters ``p`` (eager; ``__call__`` uses the compiled twin on CUDA)."""
        return _apply(x, p, self._static)


class _Static(NamedTuple):
    """What the image work reads from the spec, as constants (torch.compile guards on their values)."""
    size: int
    n_ops: int
    cutout: int
    crop_padding: int
    mean: tuple | None
    std: tuple | None


def _apply(x: Tensor, p: dict[str, Tensor], sp: _Static) -> Tensor:
    y = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    y = torch.where(p["flip"].view(-1, 1, 1, 1), y.flip(3), y)
    y = _random_crop(y, p["crop"], sp.size, sp.crop_padding)
    for slot in range(sp.n_ops):
        y = _apply_ops(y, p["op"][:, slot], p["mag"][:, slot])
    if sp.mean is not None:
        from methods.augment.gpu import _normalize
        y = _normalize(y, sp.mean, sp.std)
    if sp.cutout > 0:
        y = y * _cutout_mask(p["cut_len"], p["cut_yx"], sp.size, y.device).unsqueeze(1)
    return y


@functools.cache
def _compiled_apply():
    """``torch.compile(_apply)``, made once per process (specialised per shape and spec)."""
    return torch.compile(_apply, dynamic=False)


def _random_crop(y: Tensor, offset: Tensor, size: int, pad: int) -> Tensor:
    """RandomCrop(size, padding=pad) with zero fill; ``offset`` [B, 2] = (top, left) in the padded image."""
    if pad == 0 and y.shape[-1] == size and y.shape[-2] == size:
        return y
    yp = F.pad(y, (pad, pad, pad, pad)) if pad else y
    ar = torch.arange(size, device=y.device)
    rows = (offset[:, 0:1] + ar)[:, :, None].expand(-1, size, size)
    cols = (offset[:, 1:2] + ar)[:, None, :].expand(-1, size, size)
    b = torch.arange(y.shape[0], device=y.device)[:, None, None]
    return yp.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)


def _cutout_mask(length: Tensor, yx: Tensor, size: int, device) -> Tensor:
    half = (length // 2)[:, None]
    ar = torch.arange(size, device=device)[None]
    rows = (ar >= (yx[:, 0:1] - half).clamp(0, size)) & (ar < (yx[:, 0:1] + half).clamp(0, size))
    cols = (ar >= (yx[:, 1:2] - half).clamp(0, size)) & (ar < (yx[:, 1:2] + half).clamp(0, size))
    return 1.0 - (rows[:, :, None] & cols[:, None, :]).float()


def _gray(y: Tensor) -> Tensor:
    if y.shape[1] == 1:
        return y
    return (_L_WEIGHTS[0] * y[:, 0] + _L_WEIGHTS[1] * y[:, 1] + _L_WEIGHTS[2] * y[:, 2]).unsqueeze(1)


def _affine(y: Tensor, op: Tensor, v: Tensor) -> Tensor:
    """Rotate / shear / translate (PIL AFFINE, nearest, black fill) for the samples whose op is one of them;
    the identity for the others. Output pixel centre (u, w) samples input floor(A (u, w) + t)."""
    b, _, h, wd = y.shape
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    rad = torch.where(op == _IDX["rotate"], v, zero) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    sx = torch.where(op == _IDX["shear_x"], v, zero)
    sy = torch.where(op == _IDX["shear_y"], v, zero)
    tx = torch.where(op == _IDX["translate_x"], v * wd, zero)
    ty = torch.where(op == _IDX["translate_y"], v * h, zero)
    cx, cy = wd / 2.0, h / 2.0
    # rotation about the centre; shear about the origin (PIL's (1, v, 0, 0, 1, 0)); translation
    # PIL's rotate(angle) (counter-clockwise): input = R(-angle) (out - c) + c
    a11, a12 = cos + 0 * one, -sin + sx
    a21, a22 = sin + sy, cos + 0 * one
    t1 = cx - cos * cx + sin * cy + tx
    t2 = cy - sin * cx - cos * cy + ty
    u = torch.arange(wd, device=y.device, dtype=y.dtype) + 0.5
    w = torch.arange(h, device=y.device, dtype=y.dtype) + 0.5
    uu, ww = u[None, None, :], w[None, :, None]
    xin = a11.view(-1, 1, 1) * uu + a12.view(-1, 1, 1) * ww + t1.view(-1, 1, 1)
    yin = a21.view(-1, 1, 1) * uu + a22.view(-1, 1, 1) * ww + t2.view(-1, 1, 1)
    xi, yi = torch.floor(xin).long(), torch.floor(yin).long()
    valid = (xi >= 0) & (xi < wd) & (yi >= 0) & (yi < h)
    idx = (yi.clamp(0, h - 1) * wd + xi.clamp(0, wd - 1)).view(b, 1, h * wd).expand(-1, y.shape[1], -1)
    out = y.reshape(b, y.shape[1], h * wd).gather(2, idx).view_as(y)
    return out * valid.unsqueeze(1)


def _equalize(yi: Tensor) -> Tensor:
    """PIL ``ImageOps.equalize`` per channel on integer levels yi [B, C, H, W] (0..255) -> float [0, 1]."""
    b, c, h, w = yi.shape
    flat = yi.reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=yi.device, dtype=torch.long)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=yi.device)
    last = torch.where(hist > 0, levels, torch.zeros_like(levels)).amax(1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last)) // 255
    cum = torch.cumsum(hist, 1) - hist  # exclusive: n before level i
    lut = ((step // 2 + cum) // step.clamp_min(1)).clamp(0, 255)
    lut = torch.where(step > 0, lut, levels.expand_as(lut))
    return lut.gather(1, flat).view(b, c, h, w).float() / 255.0


def _smooth(y: Tensor) -> Tensor:
    """PIL ``ImageFilter.SMOOTH`` (3x3 [[1,1,1],[1,5,1],[1,1,1]] / 13), border pixels left as they are."""
    k = torch.full((3, 3), 1.0 / 13.0, device=y.device, dtype=y.dtype)  # filled on the device: no copy
    k[1, 1] = 5.0 / 13.0
    ch = y.shape[1]
    out = F.conv2d(y, k.expand(ch, 1, 3, 3), padding=1, groups=ch)
    border = torch.ones_like(y[:1, :1], dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    return torch.where(border, y, out)


def _apply_ops(y: Tensor, op: Tensor, v: Tensor) -> Tensor:
    """One ``Augment`` slot: every sample applies its own op ``op`` [B] with magnitude ``v`` [B]."""
    def sel(name: str) -> Tensor:
        return (op == _IDX[name]).view(-1, 1, 1, 1)

    vb = v.view(-1, 1, 1, 1)
    out = _affine(y, op, v)  # the identity for non-geometric ops
    yi = (y * 255.0).round().long().clamp(0, 255)
    # AutoContrast: per-channel min-max stretch (PIL, cutoff 0; a flat channel stays)
    lo, hi = y.amin((2, 3), keepdim=True), y.amax((2, 3), keepdim=True)
    auto = torch.where(hi > lo, (y - lo) / (hi - lo).clamp_min(1e-12), y)
    out = torch.where(sel("autocontrast"), auto, out)
    out = torch.where(sel("equalize"), _equalize(yi), out)
    out = torch.where(sel("solarize"), torch.where(yi.float() < vb, y, 1.0 - y), out)
    bits = v.floor().clamp(0, 8).long().view(-1, 1, 1, 1)
    poster = (yi & ~((1 << (8 - bits)) - 1)).float() / 255.0
    out = torch.where(sel("posterize"), poster, out)
    gray = _gray(y)
    # ImageEnhance: degenerate + f * (image - degenerate), clipped
    out = torch.where(sel("color"), (gray + vb * (y - gray)).clamp(0, 1), out)
    mean = (gray.mean((2, 3), keepdim=True) * 255.0).round() / 255.0  # int(mean + 0.5) of the L image
    out = torch.where(sel("contrast"), (mean + vb * (y - mean)).clamp(0, 1), out)
    out = torch.where(sel("brightness"), (vb * y).clamp(0, 1), out)
    sm = _smooth(y)
    out = torch.where(sel("sharpness"), (sm + vb * (y - sm)).clamp(0, 1), out)
    return out

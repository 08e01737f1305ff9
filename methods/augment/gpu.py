"""SimCLR-style two-view augmentation on the GPU, with independent random parameters for every sample.

The dataset stays on the device as uint8; :class:`GPUAugment` turns a batch of it into augmented
float views without a host round trip or a per-sample Python loop. It follows torchvision's
transforms (the official CC / SCAN / IDFD / PICA pipelines use them) step by step:

1. ``RandomResizedCrop(size, scale, ratio)``: torchvision's sampler (10 tries of area and log-ratio,
   integer box, centre-crop fallback), vectorised over the batch; then bilinear resize of the box.
2. ``RandomHorizontalFlip(flip_p)``: folded into the crop's sampling grid (mirrored x coordinates),
   so crop + resize + flip is one ``F.grid_sample`` (bilinear, half-pixel centres, edge clamping:
   the same sampling positions as torchvision's bilinear resize of the cropped box).
3. ``RandomApply([ColorJitter(b, c, s, h)], p=jitter_p)``: brightness, contrast, saturation and hue
   factors drawn per sample, applied in a random order drawn per sample (torchvision draws
   ``randperm(4)`` per call; a call is one image in the official pipelines), each followed by a clamp
   to [0, 1] as in torchvision. Brightness, contrast and saturation are one "blend" per position;
   hue converts to HSV and back (closed-form HSV->RGB, equal to torchvision's sector table).
4. ``RandomGrayscale(grayscale_p)`` (ITU-R 601-2 weights 0.2989/0.587/0.114, three equal channels).
5. Gaussian blur with probability ``blur_p`` (sigma uniform in ``blur_sigma``, ``blur_kernel`` taps,
   reflect padding), as a grouped separable convolution.
6. ``ToTensor`` scaling to [0, 1] and optional ``Normalize(mean, std)``.

Known differences from torchvision: (a) when a crop box is *larger* than the output (downscaling),
torchvision's antialiased resize low-pass filters first and this one does not (CIFAR/STL/Tiny-ImageNet
crops at 32/96/224 px are upscaled, where the two agree); (b) random numbers come from torch's
generator on the device, so the draws differ from torchvision's for a given seed (the distribution
is the same; the same seed and generator give the same output).

With ``compile=True`` the deterministic part (everything after drawing the parameters) goes through
``torch.compile`` and becomes a few fused kernels; on a CPU, or with ``compile=False``, it runs eagerly.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD_SCAN = (0.2023, 0.1994, 0.2010)  # SCAN's configs (the often-quoted "CIFAR-10 std")
CIFAR10_STD_IDFD = (0.2470, 0.2435, 0.2616)  # IDFD's main.py (the true per-pixel std)
CIFAR100_MEAN_PICA = (0.5071, 0.4866, 0.4409)  # PICA configs/cifar100.yaml
CIFAR100_STD_PICA = (0.2009, 0.1984, 0.2023)

#: Named per-dataset Normalize(mean, std) values of the official configs, one home for every method.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD_SCAN),  # SCAN configs/pretext/simclr_cifar10.yml
    "cifar20": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),  # SCAN configs/pretext/simclr_cifar20.yml
    "cifar100_pica": (CIFAR100_MEAN_PICA, CIFAR100_STD_PICA),  # PICA configs/cifar100.yaml
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # SCAN's STL-10 and PICA configs/stl10.yaml
}

_GRAY = (0.2989, 0.587, 0.114)
_BRIGHT, _CONTRAST, _SAT, _HUE = 0, 1, 2, 3


@dataclass
class AugmentSpec:
    """One view's augmentation recipe (torchvision names and defaults; probabilities per sample)."""

    size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 23
    mean: tuple | None = None
    std: tuple | None = None

    def __post_init__(self) -> None:
        if int(self.size) < 1:
            raise BenchError(f"augmentation size must be a positive number of pixels, got {self.size}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise BenchError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise BenchError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BenchError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        b, c, s, h = self.jitter
        if min(b, c, s) < 0 or not 0 <= h <= 0.5:
            raise BenchError(f"jitter must be (b, c, s >= 0, 0 <= hue <= 0.5) as in ColorJitter, got {self.jitter}")
        if self.blur_p > 0 and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise BenchError(f"blur_kernel must be a positive odd number of taps, got {self.blur_kernel}")
        if self.blur_p > 0 and not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise BenchError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if (self.mean is None) != (self.std is None):
            raise BenchError("give both mean and std for normalisation, or neither")


def cc_spec(size: int, s: float = 0.5, blur: bool = False) -> AugmentSpec:
    """CC (official ``modules/transform.py``): RandomResizedCrop(size) scale 0.08-1, flip 0.5,
    ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, grayscale 0.2, and only where ``blur`` (CC's
    ImageNet-10/Dogs) a Gaussian blur with 23 taps, sigma U[0.1, 2], p 0.5. No normalisation.
    CC uses s=0.5 for CIFAR-10/100 and Tiny-ImageNet, s=1.0 for STL-10 and ImageNet-10/Dogs."""
    return AugmentSpec(size=size, crop_scale=(0.08, 1.0), flip_p=0.5, jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                       jitter_p=0.8, grayscale_p=0.2, blur_p=0.5 if blur else 0.0, blur_sigma=(0.1, 2.0),
                       blur_kernel=23)


def simclr_spec(size: int, mean: tuple = CIFAR10_MEAN, std: tuple = CIFAR10_STD_SCAN) -> AugmentSpec:
    """SCAN's SimCLR pretext (configs/pretext/simclr_cifar10.yml): crop scale 0.2-1, flip, ColorJitter
    (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, CIFAR-10 normalisation."""
    return AugmentSpec(size=size, crop_scale=(0.2, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                       grayscale_p=0.2, mean=mean, std=std)


def idfd_spec(size: int, mean: tuple = CIFAR10_MEAN, std: tuple = CIFAR10_STD_IDFD) -> AugmentSpec:
    """IDFD (official main.py): crop scale 0.2-1, ColorJitter(0.4, 0.4, 0.4) always applied (no hue),
    grayscale 0.2, **no flip**, CIFAR-10 normalisation with std (0.2470, 0.2435, 0.2616)."""
    return AugmentSpec(size=size, crop_scale=(0.2, 1.0), flip_p=0.0, jitter=(0.4, 0.4, 0.4, 0.0), jitter_p=1.0,
                       grayscale_p=0.2, mean=mean, std=std)


def pica_spec(size: int, mean: tuple, std: tuple) -> AugmentSpec:
    """PICA (official lib/utils/transforms): crop scale 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.4) always
    applied, grayscale 0.2, flip 0.5, Normalize with the dataset's own mean/std (the official code sets
    ``tfm_means``/``tfm_stds`` in each dataset's config)."""
    return AugmentSpec(size=size, crop_scale=(0.2, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0,
                       grayscale_p=0.2, mean=mean, std=std)


# ----------------------------------------------------------------------------------------------------------
# parameter sampling (small [B]-sized tensors, on the data's device, from the given generator)

def _uniform(n: int, lo: float, hi: float, device, generator, shape=()) -> Tensor:
    return torch.rand((n, *shape), device=device, generator=generator) * (hi - lo) + lo


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                      device, generator=None, tries: int = 10) -> Tensor:
    """torchvision ``RandomResizedCrop.get_params`` for ``n`` samples at once: [n, 4] (top, left, h, w), integers
    stored as float. Each sample takes its first valid try of 10, else torchvision's centre-crop fallback."""
    area = float(height * width)
    target_area = area * _uniform(n, scale[0], scale[1], device, generator, (tries,))
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(_uniform(n, log_r[0], log_r[1], device, generator, (tries,)))
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.float().argmax(dim=1, keepdim=True)  # index of the first valid try (0 if none)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # fallback (no valid try): the largest centred box with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    ok = valid.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    u = torch.rand((n, 2), device=device, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    top = torch.where(ok, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(ok, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1)


def crop_flip_grid(boxes: Tensor, flip: Tensor, height: int, width: int, size: int) -> Tensor:
    """Sampling grid [n, size, size, 2] for ``F.grid_sample(align_corners=False)`` that resizes each box to
    ``size`` x ``size`` and mirrors it horizontally where ``flip``: exactly torchvision's crop-then-bilinear-resize,
    i.e. output pixel k samples x = left + (k + 0.5) * w / size - 0.5, clamped to the box's own edge pixels."""
    top, left, h, w = (v.unsqueeze(1) for v in boxes.unbind(1))
    k = torch.arange(size, device=boxes.device, dtype=boxes.dtype).unsqueeze(0) + 0.5  # [1, size]
    kx = torch.where(flip.unsqueeze(1), size - k, k)
    xs = torch.minimum(torch.clamp(left + kx * (w / size) - 0.5, min=0.0), left + w - 1).clamp_min(left)
    ys = torch.minimum(torch.clamp(top + k * (h / size) - 0.5, min=0.0), top + h - 1).clamp_min(top)
    gx = (2 * xs + 1) / width - 1  # pixel -> normalised coordinates (align_corners=False)
    gy = (2 * ys + 1) / height - 1
    n = boxes.shape[0]
    return torch.stack([gx.unsqueeze(1).expand(n, size, size), gy.unsqueeze(2).expand(n, size, size)], dim=-1)


# ----------------------------------------------------------------------------------------------------------
# colour operations on float images in [0, 1], [B, C, H, W], factors of shape [B]

def _gray(x: Tensor) -> Tensor:
    """rgb_to_grayscale with one output channel ([B, 1, H, W]); 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's ``_rgb_to_hsv`` (h in [0, 1)), each [B, 1, H, W]."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    eqc = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_g & ~is_r
    hue = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    hue = torch.remainder(hue / 6.0 + 1.0, 1.0)
    return hue, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV -> RGB in closed form: channel n in (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    Equal to torchvision's six-sector table (p, q, t are v(1-s), v(1-sf), v(1-s(1-f)))."""
    n = (5.0 - 2.0 * torch.arange(3, device=h.device, dtype=h.dtype)).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision ``adjust_hue`` for float RGB images with a per-sample factor in [-0.5, 0.5]."""
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + factor.view(-1, 1, 1, 1), 1.0)
    return _hsv_to_rgb(h, s, v)


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Per-sample Gaussian blur (separable, reflect padding, torchvision's kernel); sigma [B] > 0."""
    b, c, hgt, wid = x.shape
    half = (kernel - 1) / 2
    t = torch.linspace(-half, half, kernel, device=x.device, dtype=x.dtype)
    k1 = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    k1 = (k1 / k1.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, kernel]
    pad = kernel // 2
    y = x.reshape(1, b * c, hgt, wid)
    if pad >= min(hgt, wid):
        raise BenchError(f"blur_kernel {kernel} too large for {hgt}x{wid} images (reflect padding needs < size/2)")
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k1.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k1.view(b * c, 1, kernel, 1), groups=b * c)
    return y.view(b, c, hgt, wid)


# ----------------------------------------------------------------------------------------------------------

class _Static(NamedTuple):
    size: int
    jitter: tuple
    jitter_p: float
    grayscale_p: float
    blur_p: float
    blur_kernel: int
    mean: tuple | None
    std: tuple | None
    out_dtype: torch.dtype
    channels_last: bool
    split_jitter: bool = False  # experiment: materialise the image after each jitter position (compiled path)


def _augment_images(x: Tensor, p: dict[str, Tensor], sp: _Static) -> Tensor:
    """Crop + resize + flip (one grid_sample), jitter, grayscale, blur, normalise; deterministic given ``p``."""
    _, ch, height, width = x.shape
    grid = crop_flip_grid(p["boxes"], p["flip"], height, width, sp.size)
    src = x.float()
    y = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if x.dtype == torch.uint8:
        y = y / 255.0  # bilinear sampling is linear, so ToTensor's division can come after it
    # clamp away rounding (a value of 255 interpolated, or HSV round trips, can land 1e-7 outside [0, 1])
    y = _jitter(y, p, sp).clamp(0.0, 1.0)
    if sp.grayscale_p > 0 and ch == 3:
        y = torch.where(p["gray"].view(-1, 1, 1, 1), _gray(y).expand(-1, 3, -1, -1), y)
    if sp.blur_p > 0:
        y = torch.where(p["blur_on"].view(-1, 1, 1, 1), _gaussian_blur(y, p["sigma"], sp.blur_kernel), y)
    if sp.mean is not None:
        y = _normalize(y, sp.mean, sp.std)
    y = y.to(sp.out_dtype)
    if sp.channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def _jitter(y: Tensor, p: dict[str, Tensor], sp: _Static) -> Tensor:
    """ColorJitter with per-sample factors and order: at each of the 4 positions every sample applies the op
    its drawn order puts there (brightness / contrast / saturation as one blend, hue as a masked HSV shift)."""
    if sp.jitter_p == 0:
        return y
    ch = y.shape[1]
    b, c, s, h = sp.jitter
    use_blend = max(b, c, s) > 0
    use_hue = h > 0 and ch == 3  # hue and saturation leave 1-channel images unchanged (torchvision)
    fac = p["factors"]
    order = p["order"]
    one = torch.ones_like(fac[:, 0])
    zero = torch.zeros_like(one)
    sat = fac[:, _SAT] if ch == 3 else one
    for step in range(4):
        op = order[:, step]
        if use_blend:
            # brightness: b*x; contrast: c*x + (1-c)*mean(gray); saturation: s*x + (1-s)*gray; then clamp
            a = torch.where(op == _BRIGHT, fac[:, _BRIGHT],
                            torch.where(op == _CONTRAST, fac[:, _CONTRAST], torch.where(op == _SAT, sat, one)))
            out = a.view(-1, 1, 1, 1) * y
            if s > 0 and ch == 3:
                g_coef = torch.where(op == _SAT, 1.0 - sat, zero)
                out = out + g_coef.view(-1, 1, 1, 1) * _gray(y)
            if c > 0:
                m_coef = torch.where(op == _CONTRAST, 1.0 - fac[:, _CONTRAST], zero)
                out = out + m_coef.view(-1, 1, 1, 1) * _gray(y).mean(dim=(1, 2, 3), keepdim=True)
            y = out.clamp(0.0, 1.0)
        if use_hue:
            do_hue = ((op == _HUE) & p["jitter_on"]).view(-1, 1, 1, 1)
            y = torch.where(do_hue, adjust_hue(y, fac[:, _HUE]), y)
        if sp.split_jitter and step < 3:
            torch._dynamo.graph_break()  # no-op when eager
    return y


@functools.cache
def _compiled_augment():
    """``torch.compile(_augment_images)``, made once per process (shape- and constant-specialised)."""
    return torch.compile(_augment_images, dynamic=False)


class GPUAugment(nn.Module):
    """``GPUAugment(spec)(x, generator=None)``: [B, C, H, W] uint8 (0-255) or float (0-1) on any device ->
    float [B, C, size, size], each sample with its own crop, flip, jitter (factors and order), grayscale
    and blur draws. Call it twice on the same batch for two views (or once on ``x.repeat(2, 1, 1, 1)``).

    ``generator``: a ``torch.Generator`` on ``x``'s device, or None for torch's default one (the latter is
    also what CUDA-graph capture needs). ``compile=True`` (default) fuses the image work with
    ``torch.compile`` on CUDA inputs (compiled once per process per shape and spec; the first call takes
    ~10 s; a compiler failure falls back to eager with a warning); CPU inputs always run eagerly.
    ``out_dtype`` / ``channels_last`` choose the output's dtype and memory format (defaults: float32,
    contiguous), so a bf16 channels-last network can take it without a copy.
    """

    def __init__(self, spec: AugmentSpec, compile: bool = True, out_dtype: torch.dtype = torch.float32,
                 channels_last: bool = False):
        super().__init__()
        if not isinstance(spec, AugmentSpec):
            raise BenchError(f"GPUAugment needs an AugmentSpec, got {type(spec).__name__}")
        self.spec = spec
        self.out_dtype = out_dtype
        self.channels_last = channels_last
        self.compile = compile
        self._compile_checked = False
        # everything the image work depends on besides the tensors, as constants (value-guarded by torch.compile,
        # so equal specs share one compiled kernel set across instances)
        self._static = _Static(spec.size, tuple(spec.jitter), spec.jitter_p, spec.grayscale_p, spec.blur_p,
                               spec.blur_kernel, None if spec.mean is None else tuple(spec.mean),
                               None if spec.std is None else tuple(spec.std), out_dtype, channels_last)

    # -- parameters -------------------------------------------------------------------------------------
    def sample_params(self, n: int, height: int, width: int, device, generator=None) -> dict[str, Tensor]:
        """All random draws for ``n`` samples (dict of small tensors); :meth:`apply` is deterministic given them."""
        sp = self.spec
        boxes = sample_crop_boxes(n, height, width, sp.crop_scale, sp.crop_ratio, device, generator)
        u = torch.rand((n, 4), device=device, generator=generator)  # flip, jitter-apply, gray, blur-apply
        flip = u[:, 0] < sp.flip_p
        jit_on = u[:, 1] < sp.jitter_p
        gray = u[:, 2] < sp.grayscale_p
        blur_on = u[:, 3] < sp.blur_p
        b, c, s, h = sp.jitter
        f = torch.rand((n, 4), device=device, generator=generator)
        # ColorJitter's ranges; not-jittered samples get the identity factors. Python scalars only, so no
        # host-to-device copies (keeps this capturable in a CUDA graph).
        lo = (max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h)
        hi = (1 + b, 1 + c, 1 + s, h)
        neutral = (1.0, 1.0, 1.0, 0.0)
        factors = torch.stack([torch.where(jit_on, lo[i] + f[:, i] * (hi[i] - lo[i]), neutral[i])
                               for i in range(4)], dim=1)
        order = torch.argsort(torch.rand((n, 4), device=device, generator=generator), dim=1)  # op at each step
        sigma = _uniform(n, sp.blur_sigma[0], sp.blur_sigma[1], device, generator)
        return {"boxes": boxes, "flip": flip, "factors": factors, "order": order, "jitter_on": jit_on,
                "gray": gray, "blur_on": blur_on, "sigma": sigma}

    # -- deterministic image work ----------------------------------------------------------------------
    def apply(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """The image work for drawn parameters ``p`` (eager; :meth:`forward` uses the compiled twin on CUDA)."""
        return _augment_images(x, p, self._static)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() != 4:
            raise BenchError(f"GPUAugment expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        if x.shape[1] not in (1, 3):
            raise BenchError(f"GPUAugment handles 1- or 3-channel images, got {x.shape[1]} channels")
        if not (x.dtype == torch.uint8 or x.is_floating_point()):
            raise BenchError(f"GPUAugment expects uint8 (0-255) or float (0-1) images, got {x.dtype}")
        p = self.sample_params(x.shape[0], x.shape[2], x.shape[3], x.device, generator)
        if self.compile and x.is_cuda:
            fn = _compiled_augment()
            if self._compile_checked:
                return fn(x, p, self._static)
            try:  # the first call compiles; if the compiler is unusable here, fall back to eager once, loudly
                out = fn(x, p, self._static)
                self._compile_checked = True
                return out
            except Exception as e:  # noqa: BLE001 - any compiler failure means "run eagerly"
                warnings.warn(f"GPUAugment: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); "
                              "running the augmentation eagerly (slower, same output)", stacklevel=2)
                self.compile = False
        return self.apply(x, p)


def _per_channel(values: tuple, ch: int) -> tuple:
    if len(values) == ch:
        return tuple(values)
    if ch == 1:  # a 3-channel statistic on a grayscale dataset: use the luminance-weighted value
        return (sum(w * v for w, v in zip(_GRAY, values, strict=True)),)
    raise BenchError(f"normalisation has {len(values)} values but the images have {ch} channels")


def _normalize(y: Tensor, mean: tuple, std: tuple) -> Tensor:
    """(y - mean) / std per channel, with Python scalars (no host-to-device copy)."""
    ch = y.shape[1]
    m, s = _per_channel(mean, ch), _per_channel(std, ch)
    if ch == 1:
        return (y - m[0]) / s[0]
    return torch.cat([(y[:, i:i + 1] - m[i]) / s[i] for i in range(ch)], dim=1)


def channel_mean_std(x: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images [N, C, H, W] after ToTensor (uint8 / 255, floats as they are), over
    every pixel of every image, in float64, ``chunk`` images at a time (no float copy of the whole set)."""
    if x.dim() != 4 or x.shape[0] == 0:
        raise BenchError(f"channel_mean_std expects a non-empty [N, C, H, W] batch, got shape {tuple(x.shape)}")
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    for s in range(0, x.shape[0], chunk):
        y = x[s:s + chunk].to(torch.float64)
        if x.dtype == torch.uint8:
            y = y / 255.0
        total += y.sum((0, 2, 3))
        squares += y.square().sum((0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)  # a constant image: no 0 division
    return tuple(mean.tolist()), tuple(std.tolist())


def resize_eval(x: Tensor, size: int, mean: tuple | None = None, std: tuple | None = None) -> Tensor:
    """Test-time path (CC's ``Resize((size, size))`` + ToTensor [+ Normalize]): uint8 or float [B, C, H, W] ->
    float32 [B, C, size, size]; bilinear, antialiased when shrinking (as torchvision's Resize on tensors)."""
    if x.dim() != 4:
        raise BenchError(f"resize_eval expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
    y = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if y.shape[-2:] != (size, size):
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if x.dtype == torch.uint8:
            y = y.clamp(0.0, 1.0)
    if (mean is None) != (std is None):
        raise BenchError("resize_eval: give both mean and std, or neither")
    return y if mean is None else _normalize(y, mean, std)

"""SCAN's strong augmentation on the GPU path, op by op against PIL (the official ops are PIL's), plus Cutout and
RandomCrop with padding. Runs on the CPU with tiny images."""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps
import pytest
import torch

from methods.augment.strong import _IDX, OPS, ScanAugment, ScanAugmentSpec

# SCAN's data/augment.py ops written with PIL, the sign already drawn (random_mirror)
_PIL = {
    "identity": lambda im, v: im,
    "autocontrast": lambda im, v: PIL.ImageOps.autocontrast(im),
    "equalize": lambda im, v: PIL.ImageOps.equalize(im),
    "rotate": lambda im, v: im.rotate(v),
    "solarize": lambda im, v: PIL.ImageOps.solarize(im, v),
    "color": lambda im, v: PIL.ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: PIL.ImageEnhance.Contrast(im).enhance(v),
    "brightness": lambda im, v: PIL.ImageEnhance.Brightness(im).enhance(v),
    "sharpness": lambda im, v: PIL.ImageEnhance.Sharpness(im).enhance(v),
    "shear_x": lambda im, v: im.transform(im.size, PIL.Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda im, v: im.transform(im.size, PIL.Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "translate_x": lambda im, v: im.transform(im.size, PIL.Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)),
    "translate_y": lambda im, v: im.transform(im.size, PIL.Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])),
    "posterize": lambda im, v: PIL.ImageOps.posterize(im, int(v)),
}


def _img(seed=0, n=1, size=32):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _one_op(aug, x, name, v):
    p = aug.sample_params(x.shape[0], x.shape[2], x.shape[3], "cpu", torch.Generator().manual_seed(0))
    p["flip"][:] = False
    p["op"][:] = _IDX[name]
    p["mag"][:] = v
    return aug.apply(x, p)


@pytest.mark.parametrize("name,v", [("identity", 0.5), ("autocontrast", 0.5), ("equalize", 0.5), ("rotate", 17.0),
                                    ("rotate", -29.0), ("solarize", 100.0), ("solarize", 256.0), ("color", 0.3),
                                    ("contrast", 0.3), ("brightness", 0.6), ("sharpness", 0.2), ("shear_x", 0.08),
                                    ("shear_y", -0.07), ("translate_x", 0.09), ("translate_y", -0.1),
                                    ("posterize", 5.5), ("posterize", 4.0)])
def test_each_op_matches_pil(name, v):
    assert {o[0] for o in OPS} == set(_PIL)
    x = _img(seed=len(name))
    aug = ScanAugment(ScanAugmentSpec(32, n_ops=1, cutout=0))
    ours = (_one_op(aug, x, name, v)[0] * 255).round().to(torch.int16)
    ref = torch.from_numpy(np.array(_PIL[name](PIL.Image.fromarray(x[0].permute(1, 2, 0).numpy()), v)))
    ref = ref.permute(2, 0, 1).to(torch.int16)
    # PIL rounds blends to uint8; these ops agree within one grey level everywhere
    assert (ours - ref).abs().max().item() <= 1


def test_equalize_on_a_low_contrast_image_spreads_levels():
    x = (torch.arange(32 * 32).view(1, 1, 32, 32) % 7 + 100).to(torch.uint8).expand(1, 3, 32, 32).contiguous()
    out = _one_op(ScanAugment(ScanAugmentSpec(32, n_ops=1, cutout=0)), x, "equalize", 0.0)
    assert out.max() - out.min() > 0.5  # 7 levels of 255 spread over most of [0, 1]


def test_pipeline_draws_per_sample_and_is_seeded():
    x = _img(seed=3, n=64).repeat(1, 1, 1, 1)
    x = x[:1].expand(64, -1, -1, -1).contiguous()  # one image 64 times
    aug = ScanAugment(ScanAugmentSpec(32, n_ops=4, cutout=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (64, 3, 32, 32) and a.dtype == torch.float32
    distinct = {tuple(r.flatten()[:200].tolist()) for r in a}
    assert len(distinct) > 50  # every sample its own ops, magnitudes, flip and cutout
    # Cutout comes after Normalize: the hole is exactly 0, and at least a 2x2 hole... or 1 px sides give none
    zero_px = (a == 0).all(1).flatten(1).sum(1)
    assert (zero_px > 0).float().mean() > 0.8 and zero_px.max() <= 16 * 16


def test_cutout_geometry():
    aug = ScanAugment(ScanAugmentSpec(8, n_ops=0, cutout=4))
    x = torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)
    p = aug.sample_params(1, 8, 8, "cpu")
    p["flip"][:] = False
    p["cut_len"][:] = 3
    p["cut_yx"][:] = torch.tensor([0, 5])
    out = aug.apply(x, p)[0, 0]
    # SCAN's Cutout: y1 = clip(0 - 1), y2 = clip(0 + 1), x1 = 4, x2 = 6 -> rows [0, 1), cols [4, 6)
    want = torch.ones(8, 8)
    want[0:1, 4:6] = 0
    assert torch.equal(out, want)


def test_random_crop_with_padding():
    aug = ScanAugment(ScanAugmentSpec(8, n_ops=0, cutout=0, crop_padding=2, flip_p=0.0))
    x = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    p = aug.sample_params(1, 8, 8, "cpu")
    p["crop"][:] = torch.tensor([0, 3])  # top 0, left 3 in the 12x12 zero-padded image
    out = (aug.apply(x, p)[0, 0] * 255).round().long()
    padded = torch.nn.functional.pad(x.long(), (2, 2, 2, 2))[0, 0]
    assert torch.equal(out, padded[0:8, 3:11])
    assert (out[:2] == 0).all()

"""Shared parts of the contrastive family: backbones, heads, GPU augmentation, losses (CPU, tiny tensors).

Augmentation steps are checked against torchvision's functional ops applied one sample at a time with
the same drawn parameters; losses against slow loop / direct-formula references.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from bench.errors import BenchError
from methods import losses as L
from methods.augment.gpu import (
    NORMALIZATION,
    AugmentSpec,
    GPUAugment,
    cc_spec,
    idfd_spec,
    pica_spec,
    resize_eval,
    sample_crop_boxes,
    simclr_spec,
)
from methods.nn.backbones import resnet
from methods.nn.heads import cluster_head, mlp_head


def _images(n=6, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- backbones

@pytest.mark.parametrize("name,stem,size", [("resnet18", "cifar", 32), ("resnet18", "imagenet", 32),
                                            ("resnet34", "imagenet", 224), ("resnet34", "cifar", 32)])
def test_backbone_shapes(name, stem, size):
    torch.manual_seed(0)
    net = resnet(name, stem=stem).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 512) and net.out_dim == 512
    assert torch.isfinite(out).all()
    n_blocks = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}[name]
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == n_blocks


def test_backbone_stems():
    cif, img = resnet("resnet18", "cifar"), resnet("resnet18", "imagenet")
    assert cif.conv1.kernel_size == (3, 3) and cif.conv1.stride == (1, 1)
    assert isinstance(cif.maxpool, torch.nn.Identity)
    assert img.conv1.kernel_size == (7, 7) and img.conv1.stride == (2, 2)
    assert isinstance(img.maxpool, torch.nn.MaxPool2d)
    # the CIFAR stem keeps 32x32 resolution into layer1, the ImageNet stem divides it by 4
    x = torch.randn(1, 3, 32, 32)
    for net, hw in ((cif, 32), (img, 8)):
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        assert h.shape[-1] == hw
    gray = resnet("resnet18", "cifar", in_channels=1).eval()
    assert gray.conv1.in_channels == 1 and gray(torch.randn(2, 1, 32, 32)).shape == (2, 512)
    assert resnet("resnet34", "imagenet", in_channels=2).conv1.in_channels == 2


def test_backbone_bad_input():
    with pytest.raises(BenchError, match="unknown backbone"):
        resnet("resnet50")
    with pytest.raises(BenchError, match="unknown stem"):
        resnet("resnet18", stem="tiny")


def test_heads():
    h = mlp_head(512, 512, 128)
    c = cluster_head(512, 512, 10)
    kinds = [type(m) for m in h]
    assert kinds == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear] == [type(m) for m in c]
    x = torch.randn(4, 512)
    assert h(x).shape == (4, 128) and c(x).shape == (4, 10)
    assert c[0].out_features == 512 and c[2].out_features == 10


# ---------------------------------------------------------------------------------------------- augmentation

def test_crop_boxes_follow_torchvision_sampler():
    boxes = sample_crop_boxes(4000, 32, 40, (0.08, 1.0), (3 / 4, 4 / 3), "cpu", _gen(0))
    top, left, h, w = boxes.unbind(1)
    assert (boxes == boxes.round()).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()
    assert (h >= 1).all() and (w >= 1).all()
    frac = h * w / (32 * 40)
    assert frac.min() > 0.05 and frac.max() <= 1.0
    assert frac.std() > 0.15  # spread over the scale range, not a constant box
    # impossible ratio -> torchvision's fallback: largest centred box with the ratio clamped
    fb = sample_crop_boxes(5, 32, 32, (0.9, 1.0), (3.0, 4.0), "cpu", _gen(1))
    assert torch.equal(fb, torch.tensor([[10.0, 0.0, 11.0, 32.0]] * 5))  # h = round(32/3), top = (32-11)//2


def test_identity_crop_is_identity():
    x = _images()
    spec = AugmentSpec(size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                       grayscale_p=0.0)
    y = GPUAugment(spec)(x, _gen(0))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x.float() / 255, atol=1e-6, rtol=0)
    # float input in [0, 1] is taken as is
    torch.testing.assert_close(GPUAugment(spec)(x.float() / 255, _gen(0)), x.float() / 255, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [32, 48])
def test_crop_resize_flip_match_torchvision(size):
    x = _images(n=16)
    aug = GPUAugment(AugmentSpec(size=size, flip_p=0.5, jitter_p=0.0, grayscale_p=0.0))
    p = aug.sample_params(16, 32, 32, "cpu", _gen(3))
    y = aug.apply(x, p)
    assert p["flip"].any() and not p["flip"].all()
    for i in range(16):
        top, left, h, w = (int(v) for v in p["boxes"][i])
        ref = TF.resized_crop(x[i].float() / 255, top, left, h, w, [size, size], antialias=False)
        if p["flip"][i]:
            ref = ref.flip(-1)
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)


def test_flip_is_exact_mirror():
    x = _images()
    aug = GPUAugment(cc_spec(32))
    p = aug.sample_params(6, 32, 32, "cpu", _gen(5))
    p_no = dict(p, flip=torch.zeros(6, dtype=torch.bool))
    p_yes = dict(p, flip=torch.ones(6, dtype=torch.bool))
    # jitter and grayscale are pointwise except the contrast mean, which a mirror leaves unchanged
    torch.testing.assert_close(aug.apply(x, p_yes), aug.apply(x, p_no).flip(-1), atol=1e-5, rtol=0)


def _reference_jitter(img, factors, order, on):
    """torchvision's ColorJitter applied to one image with the given factors and order."""
    if not on:
        return img
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for op in order.tolist():
        img = fns[op](img, float(factors[op]))
    return img


@pytest.mark.parametrize("spec_fn", [cc_spec, lambda size: pica_spec(size, *NORMALIZATION["cifar10"])],
                         ids=["cc_spec", "pica_spec"])
def test_jitter_matches_torchvision_per_sample(spec_fn):
    n = 24
    x = _images(n=n, seed=7)
    spec = spec_fn(32)
    spec.mean = spec.std = None
    spec.grayscale_p = 0.0
    aug = GPUAugment(spec)
    p = aug.sample_params(n, 32, 32, "cpu", _gen(11))
    y = aug.apply(x, p)
    base = GPUAugment(AugmentSpec(size=32, jitter_p=0.0, grayscale_p=0.0)).apply(x, p)  # crop + flip only
    orders = {tuple(o) for o in p["order"].tolist()}
    assert len(orders) > 5  # the order is drawn per sample
    for i in range(n):
        ref = _reference_jitter(base[i], p["factors"][i], p["order"][i], bool(p["jitter_on"][i]))
        torch.testing.assert_close(y[i], ref, atol=2e-5, rtol=0)


def test_samples_are_independent_and_seeded():
    x = _images(n=1).expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    aug = GPUAugment(cc_spec(32))
    y1 = aug(x, _gen(42))
    y2 = aug(x, _gen(42))
    y3 = aug(x, _gen(43))
    assert torch.equal(y1, y2)  # same seed, same views
    assert not torch.equal(y1, y3)
    flat = y1.flatten(1)
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(flat[i], flat[j]), (i, j)  # each copy got its own crop/jitter
    p = aug.sample_params(8, 32, 32, "cpu", _gen(42))
    assert len({tuple(b) for b in p["boxes"].tolist()}) == 8
    assert p["factors"][p["jitter_on"]].std(0).min() > 0


def test_output_range_grayscale_and_normalise():
    x = _images(n=8)
    y = GPUAugment(cc_spec(32, s=1.0))(x, _gen(0))
    assert y.shape == (8, 3, 32, 32) and y.min() >= 0 and y.max() <= 1
    g = GPUAugment(AugmentSpec(size=32, grayscale_p=1.0))(x, _gen(0))
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    spec = simclr_spec(32)
    unnorm = AugmentSpec(**{**spec.__dict__, "mean": None, "std": None})
    a, b = GPUAugment(spec)(x, _gen(1)), GPUAugment(unnorm)(x, _gen(1))
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(a, (b - mean) / std, atol=1e-5, rtol=0)


def test_blur_matches_torchvision():
    x = _images(n=4, h=40, w=40)
    spec = AugmentSpec(size=40, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                       grayscale_p=0.0, blur_p=1.0, blur_kernel=9)
    aug = GPUAugment(spec)
    p = aug.sample_params(4, 40, 40, "cpu", _gen(2))
    y = aug.apply(x, p)
    for i in range(4):
        s = float(p["sigma"][i])
        ref = TF.gaussian_blur(x[i].float() / 255, [9, 9], [s, s])
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)
    assert not torch.allclose(y, x.float() / 255, atol=1e-3)


def test_one_channel_input():
    x = _images(n=5, c=1, h=28, w=28)
    y = GPUAugment(cc_spec(32))(x, _gen(0))
    assert y.shape == (5, 1, 32, 32) and y.min() >= 0 and y.max() <= 1
    z = GPUAugment(simclr_spec(32))(x, _gen(0))  # 3-channel statistics fold to one channel
    assert z.shape == (5, 1, 32, 32) and torch.isfinite(z).all()


def test_presets_and_options():
    cc = cc_spec(224, s=0.5)
    assert cc.jitter == pytest.approx((0.4, 0.4, 0.4, 0.1)) and cc.crop_scale == (0.08, 1.0) and cc.mean is None
    assert cc.blur_p == 0 and cc_spec(224, 1.0, blur=True).blur_p == 0.5
    idfd = idfd_spec(32)
    assert idfd.flip_p == 0 and idfd.jitter_p == 1 and idfd.jitter[3] == 0 and idfd.crop_scale == (0.2, 1.0)
    pica = pica_spec(32, *NORMALIZATION["cifar10"])
    assert pica.jitter == (0.4, 0.4, 0.4, 0.4) and pica.jitter_p == 1 and pica.flip_p == 0.5
    x = _images(n=2)
    y = GPUAugment(cc, out_dtype=torch.bfloat16, channels_last=True)(x, _gen(0))
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 224, 224)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(BenchError, match="crop_scale"):
        AugmentSpec(size=32, crop_scale=(0.5, 0.2))
    with pytest.raises(BenchError, match="channels"):
        GPUAugment(cc)(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))


def test_resize_eval():
    x = _images(n=3)
    y = resize_eval(x, 48)
    ref = TF.resize(x.float() / 255, [48, 48], antialias=True)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(resize_eval(x, 32), x.float() / 255)
    z = resize_eval(x, 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.testing.assert_close(z, (x.float() / 255 - 0.5) / 0.25)


# ---------------------------------------------------------------------------------------------- losses

def _ref_nt_xent(z1, z2, tau):
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_nt_xent_reference_and_properties():
    g = _gen(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert float(L.nt_xent(z1, z2, 0.5)) == pytest.approx(_ref_nt_xent(z1, z2, 0.5), rel=1e-5)
    aligned = L.nt_xent(z1, z1 + 0.01 * torch.randn(6, 5, generator=g), 0.5)
    shuffled = L.nt_xent(z1, z1[torch.tensor([1, 2, 3, 4, 5, 0])], 0.5)
    assert aligned < shuffled
    z1.requires_grad_(True)
    L.nt_xent(z1, z2, 0.1).backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def _scan_simclr_loss(features, temperature):
    """SCAN's ``SimCLRLoss.forward`` (utils/losses.py), transcribed on the CPU: features [b, 2, dim]."""
    b = features.shape[0]
    mask = torch.eye(b)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor = features[:, 0]
    dot = anchor @ contrast.T / temperature
    logits = dot - dot.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(1, 2)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(b).view(-1, 1), 0)
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    return -((mask * log_prob).sum(1) / mask.sum(1)).mean()


def test_nt_xent_one_sided_is_scans_simclr_loss():
    """SCAN anchors on the first view only; SimCLR's paper (and CC's InstanceLoss) on both."""
    g = _gen(1)
    z1, z2 = F.normalize(torch.randn(7, 5, generator=g), dim=1), F.normalize(torch.randn(7, 5, generator=g), dim=1)
    scan = float(_scan_simclr_loss(torch.stack([z1, z2], dim=1), 0.1))
    first = L.nt_xent(z1, z2, 0.1, anchors="first")
    assert float(first) == pytest.approx(scan, rel=1e-5)
    swapped = L.nt_xent(z2, z1, 0.1, anchors="first")
    assert abs(float(first) - float(swapped)) > 1e-3  # one-sided: the views are not interchangeable
    both = L.nt_xent(z1, z2, 0.1)
    assert float(both) == pytest.approx((float(first) + float(swapped)) / 2, rel=1e-5)  # symmetric = the mean
    assert float(L.nt_xent(z2, z1, 0.1)) == pytest.approx(float(both), rel=1e-6)
    z2.requires_grad_(True)
    L.nt_xent(z1, z2, 0.1, anchors="first").backward()
    assert z2.grad.abs().sum() > 0  # the second view still receives gradient (as positives and negatives)
    with pytest.raises(ValueError, match="anchors"):
        L.nt_xent(z1, z2, 0.1, anchors="second")


def _entropy_ref(p):
    q = p.double().sum(0)
    q = q / q.sum()
    return math.log(len(q)) + float((q * q.log()).sum())


def _ref_cluster(p1, p2, tau):
    k = p1.shape[1]
    cols = torch.cat([p1.t(), p2.t()]).double()
    total = 0.0
    for a in range(2 * k):
        pos = (a + k) % (2 * k)
        cos = [float(F.cosine_similarity(cols[a], cols[b], dim=0)) / tau for b in range(2 * k)]
        den = sum(math.exp(cos[b]) for b in range(2 * k) if b != a)
        total += -math.log(math.exp(cos[pos]) / den)
    return total / (2 * k) + _entropy_ref(p1) + _entropy_ref(p2)


def test_cluster_contrastive_reference_and_properties():
    g = _gen(1)
    p1 = torch.softmax(torch.randn(16, 4, generator=g), 1)
    p2 = torch.softmax(torch.randn(16, 4, generator=g), 1)
    assert float(L.cluster_contrastive(p1, p2, 1.0)) == pytest.approx(_ref_cluster(p1, p2, 1.0), rel=1e-5)
    onehot = F.one_hot(torch.arange(16) % 4, 4).float()  # confident and balanced
    collapsed = F.one_hot(torch.zeros(16, dtype=torch.long), 4).float() * 0.97 + 0.01
    best = L.cluster_contrastive(onehot, onehot)
    assert best < L.cluster_contrastive(p1, p2) and best < L.cluster_contrastive(collapsed, collapsed)
    assert best < L.cluster_contrastive(onehot, onehot[torch.randperm(16, generator=g)])
    assert abs(L._entropy_term(onehot)) < 1e-6  # balanced: no entropy penalty
    logits = torch.randn(16, 4, generator=g, requires_grad=True)
    L.cluster_contrastive(torch.softmax(logits, 1), p2).backward()
    assert torch.isfinite(logits.grad).all()


def test_pica_pui_reference():
    g = _gen(2)
    p1 = torch.softmax(torch.randn(12, 5, generator=g), 1)
    p2 = torch.softmax(torch.randn(12, 5, generator=g), 1)
    k = 5
    a, b = p1.double(), p2.double()
    ce = 0.0
    for i in range(k):
        row = [float(F.cosine_similarity(a[:, i], b[:, j], dim=0)) for j in range(k)]
        ce += -math.log(math.exp(row[i]) / sum(math.exp(v) for v in row))
    ref = ce / k + 2.0 * _entropy_ref(p1)
    assert float(L.pica_pui(p1, p2)) == pytest.approx(ref, rel=1e-5)
    assert float(L.pica_pui(p1, p2, entropy_weight=0.0)) == pytest.approx(ce / k, rel=1e-5)
    onehot = F.one_hot(torch.arange(12) % 4, 4).float()
    assert L.pica_pui(onehot, onehot) < L.pica_pui(onehot, onehot[torch.randperm(12, generator=g)])


def test_instance_discrimination_and_memory():
    g = _gen(3)
    mem = F.normalize(torch.randn(20, 8, generator=g), dim=1)
    f = torch.randn(4, 8, generator=g)
    idx = torch.tensor([3, 7, 0, 19])
    fn = f / f.norm(dim=1, keepdim=True)
    ref = 0.0
    for i in range(4):
        logits = [float(fn[i] @ mem[j]) for j in range(20)]
        ref += -math.log(math.exp(logits[int(idx[i])]) / sum(math.exp(v) for v in logits))
    assert float(L.instance_discrimination(f, mem, idx, 1.0)) == pytest.approx(ref / 4, rel=1e-5)
    # matching memory entries give a lower loss than mismatched ones
    mem2 = mem.clone()
    mem2[idx] = fn
    assert L.instance_discrimination(f, mem2, idx, 0.1) < L.instance_discrimination(f, mem2, idx.roll(1), 0.1)
    before = mem.clone()
    L.update_memory(mem, f, idx, momentum=0.5)
    expect = F.normalize(0.5 * before[idx] + 0.5 * fn, dim=1)
    torch.testing.assert_close(mem[idx], expect)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(mem[untouched], before[untouched])


def test_feature_decorrelation_and_orthogonality():
    g = _gen(4)
    f = torch.randn(10, 6, generator=g)
    v = (f / f.norm(dim=0, keepdim=True)).double()
    ref = 0.0
    for col in range(6):
        s = [float(v[:, col] @ v[:, m]) / 2.0 for m in range(6)]
        ref += -math.log(math.exp(s[col]) / sum(math.exp(x) for x in s))
    assert float(L.feature_decorrelation(f, 2.0)) == pytest.approx(ref / 6, rel=1e-5)
    gram = v.t() @ v
    ortho_ref = sum(float(gram[i, j]) ** 2 for i in range(6) for j in range(6) if i != j)
    assert float(L.feature_orthogonality(f)) == pytest.approx(ortho_ref, rel=1e-5)
    # orthogonal columns: zero orthogonality loss and the lowest decorrelation loss
    q = torch.linalg.qr(torch.randn(10, 6, generator=g)).Q
    assert float(L.feature_orthogonality(q)) == pytest.approx(0.0, abs=1e-5)
    correlated = q[:, :1].repeat(1, 6) + 0.1 * q
    assert L.feature_decorrelation(q) < L.feature_decorrelation(correlated)
    f.requires_grad_(True)
    (L.feature_decorrelation(f) + L.feature_orthogonality(f)).backward()
    assert torch.isfinite(f.grad).all()

"""ResNet-18/34 feature extractors with the two stems used by the contrastive clustering papers.

* ``stem="imagenet"``: torchvision's 7x7 stride-2 conv + 3x3 stride-2 max-pool, as CC uses at 224 px
  (CC's official ``modules/resnet.py`` is torchvision's ResNet, unmodified stem).
* ``stem="cifar"``: 3x3 stride-1 conv and no max-pool, as SCAN's ``resnet_cifar`` and IDFD's
  ``main.py`` (``net.conv1 = Conv2d(3, 64, 3, 1, 1)``, ``net.maxpool = Identity``) use at 32 px.

Both return the global-average-pooled 512-d features (the ``fc`` layer is removed).

:class:`Sobel` is the fixed grey + Sobel input layer of DeepCluster (official ``models/alexnet.py``,
``sobel=True``: a 1x1 conv with weights 1/3, then the two 3x3 Sobel kernels) and PICA (``net_sobel``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError

# torchvision is imported when a network is built: importing it pulls in torch._dynamo (~3 s on 2 cores),
# which `bench list` and every method module import would otherwise pay for.
_ARCHS = ("resnet18", "resnet34")


def build_backbone(name: str, stem: Literal["imagenet", "cifar"] = "imagenet", in_channels: int = 3) -> nn.Module:
    """``resnet18``/``resnet34`` (see :func:`resnet`) or ``tiny_cnn`` (:func:`tiny_cnn`, CPU tests and smoke runs)."""
    if name == "tiny_cnn":
        return tiny_cnn(in_channels)
    return resnet(name, stem=stem, in_channels=in_channels)  # type: ignore[arg-type]


def tiny_cnn(in_channels: int = 3, width: int = 32) -> nn.Module:
    """Three 3x3 conv-BN-ReLU layers (the last two stride 2) and global average pooling: [B, C, H, W] ->
    [B, 2 * width]. Not any paper's network: it lets CPU tests and the smoke suite run a method's whole
    algorithm on the bundled digits in seconds (ResNet-18 takes ~50 s per digits epoch on two busy cores)."""
    if in_channels < 1:
        raise BenchError(f"in_channels must be >= 1, got {in_channels}")

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    net = nn.Sequential(*block(in_channels, width, 1), *block(width, 2 * width, 2), *block(2 * width, 2 * width, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.out_dim = 2 * width
    return net


def resnet(name: Literal["resnet18", "resnet34"], stem: Literal["imagenet", "cifar"] = "imagenet",
           in_channels: int = 3) -> nn.Module:
    """A randomly initialised torchvision ResNet without ``fc``: [B, C, H, W] -> [B, 512]; ``.out_dim == 512``."""
    if name not in _ARCHS:
        raise BenchError(f"unknown backbone {name!r}: choose one of {sorted(_ARCHS)}")
    if stem not in ("imagenet", "cifar"):
        raise BenchError(f"unknown stem {stem!r}: choose 'imagenet' (7x7/2 conv + max-pool) or 'cifar' (3x3/1 conv)")
    if in_channels < 1:
        raise BenchError(f"in_channels must be >= 1, got {in_channels}")
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if stem == "cifar" or in_channels != 3:  # torchvision's init for the replaced conv
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    net.out_dim = net.inplanes  # 512 for BasicBlock ResNets
    return net


class Sobel(nn.Module):
    """Grey (mean of the channels) -> horizontal and vertical Sobel responses, 2 channels, fixed weights."""

    def __init__(self):
        super().__init__()
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("weight", torch.stack([kx, kx.t()]).unsqueeze(1))  # [2, 1, 3, 3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(1, keepdim=True)
        return F.conv2d(grey, self.weight.to(grey.dtype), padding=1)

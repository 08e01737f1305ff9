"""ResNet-18/34 feature extractors with the two stems used by the contrastive clustering papers.

* ``stem="imagenet"``: torchvision's 7x7 stride-2 conv + 3x3 stride-2 max-pool, as CC uses at 224 px
  (CC's official ``modules/resnet.py`` is torchvision's ResNet, unmodified stem).
* ``stem="cifar"``: 3x3 stride-1 conv and no max-pool, as SCAN's ``resnet_cifar`` and IDFD's
  ``main.py`` (``net.conv1 = Conv2d(3, 64, 3, 1, 1)``, ``net.maxpool = Identity``) use at 32 px.

Both return the global-average-pooled 512-d features (the ``fc`` layer is removed).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from bench.errors import BenchError

# torchvision is imported when a network is built: importing it pulls in torch._dynamo (~3 s on 2 cores),
# which `bench list` and every method module import would otherwise pay for.
_ARCHS = ("resnet18", "resnet34")


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

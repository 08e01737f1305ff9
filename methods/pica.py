"""PICA: Deep Semantic Clustering by Partition Confidence Maximisation (Huang, Gong & Zhu, CVPR 2020).

Recipe from the official code (Raymond-sci/PICA: main.py, pica/{networks,losses,utils}.py,
configs/{base,cifar100}.yaml; claims.md section 6):

* ResNet-34 trunk with a CIFAR-style stem: 3x3 stride-1 conv, BN, ReLU, MaxPool(2, 2, pad 1);
  the input is the 2-channel Sobel response of the grey image (``net_sobel``).
* Linear + softmax heads [70 (over-clustering), K]; each epoch trains the heads one after the
  other, a full pass over the data each; the evaluation reads the last (K) head.
* Each batch pairs B "original" images (Resize(40) + RandomCrop(32), normalised) with
  ``data_nrepeat`` = 3 perturbed copies of each (RandomResizedCrop(32, scale 0.2-1), ColorJitter
  0.4 x 4 always, grayscale 0.2, flip, normalised); the loss is PUI(originals repeated 3x,
  perturbed) + 2.0 x (log K + sum q log q).
* Adam lr 1e-4, weight decay 0, constant, 200 epochs, batch 256, no drop_last.
* Evaluation view: Resize(40) + CenterCrop(32); argmax of the K head. The CIFAR-100 config is the
  only 32-px one released; CIFAR-10 reuses it.
* Normalisation: every dataset with its own mean/std, as the official configs set ``tfm_means`` /
  ``tfm_stds`` per dataset: CIFAR-100 (0.5071, 0.4866, 0.4409) / (0.2009, 0.1984, 0.2023) from
  configs/cifar100.yaml, STL-10 ImageNet's from configs/stl10.yaml; CIFAR-10 (no released config)
  the widely used (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010) (SCAN's config), whose std is,
  like PICA's CIFAR-100 one, below the per-pixel std; any other dataset the per-channel mean/std of its training images,
  computed at the start of the run (``normalization: dataset``).
* Train + test for training and evaluation. STL-10: the over-clustering head trains on train +
  the 100,000 unlabeled images + test, the K head on train + test (main.py ``train_splits``).

Selection (deviation, on purpose): the official main.py evaluates on the labels after every epoch and
keeps the checkpoint of the best ACC (``is_best = acc > best_acc``). The harness never lets labels pick
a result, so the reported clusters are the final epoch's; the per-epoch ACC stays on the learning curve.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.augment.gpu import NORMALIZATION, GPUAugment, channel_mean_std, pica_spec, resize_eval
from methods.engine import (
    Engine,
    EngineConfig,
    EvalHook,
    autocast,
    conv_layout,
    eval_mode,
    eval_pass,
    prepare_training,
    unlabeled_images,
)
from methods.engine.steps import adam
from methods.losses import pica_pui
from methods.nn.backbones import Sobel, resnet


class PICANet(torch.nn.Module):
    def __init__(self, backbone: str, in_channels: int, sobel: bool, heads: list[int]):
        super().__init__()
        self.sobel = Sobel() if sobel else None
        self.backbone = resnet(backbone, stem="cifar", in_channels=2 if sobel else in_channels)
        self.backbone.maxpool = torch.nn.MaxPool2d(kernel_size=2, stride=2, padding=1)  # PICA's stem keeps a pool
        self.heads = torch.nn.ModuleList(torch.nn.Linear(self.backbone.out_dim, k) for k in heads)

    def forward(self, x: torch.Tensor, head: int) -> torch.Tensor:
        if self.sobel is not None:
            x = self.sobel(x)
        return torch.softmax(self.heads[head](self.backbone(x)), dim=1)


def _crop(x: torch.Tensor, size: int, gen: torch.Generator | None) -> torch.Tensor:
    """Per-sample random crop (``gen``) or the centre crop (``gen=None``) of ``size`` x ``size``."""
    b, c, h, w = x.shape
    if gen is None:
        top, left = (h - size) // 2, (w - size) // 2
        return x[:, :, top:top + size, left:left + size]
    tops = torch.randint(0, h - size + 1, (b,), generator=gen, device=gen.device).to(x.device)
    lefts = torch.randint(0, w - size + 1, (b,), generator=gen, device=gen.device).to(x.device)
    rows = (tops[:, None] + torch.arange(size, device=x.device)[None, :])  # [B, size]
    cols = (lefts[:, None] + torch.arange(size, device=x.device)[None, :])
    idx_r = rows[:, None, :, None].expand(b, c, size, w)
    x = x.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(b, c, size, size)
    return x.gather(3, idx_c)


@register_method
class PICA(ClusteringMethod):
    name = "pica"
    label = "PICA"
    paper = "Huang, Gong & Zhu, Deep Semantic Clustering by Partition Confidence Maximisation, CVPR 2020"
    selection_rule = ("final epoch; argmax of the K head (the over-clustering head only trains the trunk). "
                      "The official code keeps the epoch of best ACC on the labels; the harness never selects "
                      "with labels")
    train_split = "all"
    eval_split = "all"
    gpu_share = 1.0
    # STL-10 config: batch 128, 96 px with Resize(112) (README/issue #2); mean/std of each official config
    dataset_defaults = {"stl10": {"batch_size": 128, "image_size": 96, "resize": 112, "normalization": "imagenet"},
                        "cifar10": {"normalization": "cifar10"},
                        "cifar100-20": {"normalization": "cifar100_pica"}}

    class Config(EngineConfig):
        backbone: Literal["resnet18", "resnet34"] = "resnet34"
        stem: Literal["cifar"] = "cifar"  # 3x3/1 conv + MaxPool(2, 2, pad 1), see PICANet
        sobel: bool = True
        image_size: int = Field(32, ge=8)
        resize: int = Field(40, ge=8, description="originals: Resize(resize) + RandomCrop(image_size); "
                                                  "eval: the centre crop")
        overclustering: int = Field(70, ge=0, description="size of the first head (0: no over-clustering head)")
        epochs: int = Field(200, ge=1)
        batch_size: int = Field(256, ge=1)
        data_nrepeat: int = Field(3, ge=1, description="perturbed copies of each image per batch")
        entropy_weight: float = Field(2.0, ge=0, description="lambda of the partition-entropy term")
        lr: float = Field(1e-4, gt=0, description="Adam, constant")
        weight_decay: float = Field(0.0, ge=0)
        unlabeled: bool = Field(True, description="where the dataset has unlabeled images (STL-10): the "
                                                  "over-clustering head also trains on them (official)")
        normalization: Literal["dataset", "cifar10", "cifar100_pica", "imagenet"] = Field(
            "dataset", description="Normalize(mean, std): a named official set, or 'dataset' = per-channel "
                                   "mean/std of the training images")

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        cfg = self.config
        dev = ctx.device
        heads = ([cfg.overclustering] if cfg.overclustering else []) + [data.n_clusters]
        with ctx.init_rng("init"):
            net = PICANet(cfg.backbone, data.x_train.shape[1], cfg.sobel, heads)
        x_train, net = prepare_training(data.x_train, net, dev)
        x_eval = x_train if data.same_split else data.x_eval
        # official STL-10 (main.py train_splits): the over-clustering head trains on train + unlabeled + test,
        # the K head on train + test
        extra = unlabeled_images(data, cfg.unlabeled) if cfg.overclustering else None
        x_over = x_train if extra is None else torch.cat([x_train, extra.to(dev, non_blocking=True)])
        # fused Adam (same update rule), capturable so the step replays as a CUDA graph on a GPU
        opt = adam(net.parameters(), cfg.lr, dev, weight_decay=cfg.weight_decay)
        mean, std = channel_mean_std(x_train) if cfg.normalization == "dataset" else NORMALIZATION[cfg.normalization]
        spec = pica_spec(cfg.image_size, mean, std)
        augment = GPUAugment(spec, channels_last=dev.type == "cuda")  # grey images: hue/saturation skip
        g_aug = ctx.rng("augment")

        def original(xb: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
            return _crop(resize_eval(xb, cfg.resize, spec.mean, spec.std), cfg.image_size, gen)

        def step(x_source: torch.Tensor, head: int, idx: torch.Tensor) -> dict[str, torch.Tensor]:
            """B originals and data_nrepeat perturbed copies of each -> head's softmax -> PUI + entropy term."""
            xb = x_source.index_select(0, idx)
            xo = conv_layout(original(xb, g_aug), dev)
            xp = conv_layout(augment(xb.repeat(cfg.data_nrepeat, 1, 1, 1), generator=g_aug), dev)
            with autocast(dev, cfg.precision):
                po, pp = net(xo, head), net(xp, head)
            return {"loss": pica_pui(po.float().repeat(cfg.data_nrepeat, 1), pp.float(), cfg.entropy_weight)}

        def cluster(_engine) -> torch.Tensor:  # argmax of the K head on the centre crop
            with eval_mode(net):
                p = eval_pass(lambda v: net(v, len(heads) - 1), x_eval, lambda xb: original(xb, None),
                              cfg.eval_batch_size, dev, cfg.precision)
            return p.argmax(1)

        engine = Engine(ctx, cfg, modules={"net": net}, optimizer=opt, streams={"augment": g_aug},
                        hooks=[EvalHook(cluster, cfg.eval_every)])
        for h, k in enumerate(heads):  # each epoch trains the heads one after the other, a full pass each
            x_h = x_over if cfg.overclustering and h == 0 else x_train
            engine.add_pass(f"head{k}", x_h.shape[0], functools.partial(step, x_h, h), cfg.batch_size,
                            drop_last=False, graph=True)
        engine.run(cfg.epochs)
        return ClusterOutput(labels=engine.hook(EvalHook).pred, info={**engine.info(), "heads": heads,
            "unlabeled_images": 0 if extra is None else extra.shape[0], "normalization": {
            "name": cfg.normalization, "mean": [round(m, 4) for m in mean], "std": [round(v, 4) for v in std]}})

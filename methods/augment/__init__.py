"""Augmentations on the GPU: SimCLR/CC-style views (gpu) and RandAugment + Cutout (strong)."""

"""Clustering methods: one file each, registered by name (see bench.registry).

Shared building blocks (k-means, autoencoders, backbones, heads, losses, GPU augmentations)
live once in ``methods.common``.
"""

"""Clustering methods: one file each, registered by name (see bench.registry).

Shared parts live once in the packages beside them: ``engine`` (training loop, hooks, CUDA-graphed steps),
``stages`` (stored intermediate results), ``nn`` (backbones, heads, autoencoders), ``losses``, ``augment``
(GPU augmentations) and ``cluster`` (k-means, PCA, AC-PIC, neighbours).
"""

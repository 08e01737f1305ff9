"""Clustering tools the methods call: k-means, PCA whitening, AC-PIC, nearest-neighbour mining."""

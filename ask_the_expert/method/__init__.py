"""Torch-free core: CIFAR-100 metadata, expert subsets, routing, cost model and threshold sweep."""

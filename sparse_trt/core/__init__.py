"""Shared foundations: errors, sparsity patterns, atomic output directories, manifests, optional deps."""

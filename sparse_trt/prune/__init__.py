"""Pruning: pure tensor algorithms (masks, magnitude, wanda, sparsegpt) and the layer walker."""

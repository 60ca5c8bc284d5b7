"""Calibration and evaluation text sources, and seeded token-window sampling."""

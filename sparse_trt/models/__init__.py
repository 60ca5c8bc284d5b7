"""Model loading and per-family architecture adapters."""

"""Kept for imports of `pipelines.quality.hashing`; the normalisation and hashing live in `pipelines.text`."""

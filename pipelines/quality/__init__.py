"""Shared text normalisation and vectorised hashing for dedup (`pipelines.dedup`) and decontamination
(`pipelines.decontam`)."""

"""Sampling by document-id hash: `sample < 1` subsamples, `> 1` repeats, stable across runs and workers.
"""
from __future__ import annotations

import hashlib

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)


def sample_copies(seed: int, source: str, doc_id: str, rate: float) -> int:
    """Deterministic copies of a document for a sampling rate: floor(rate) plus one more with prob frac(rate)."""
    whole = int(rate)
    frac = rate - whole
    if frac == 0:
        return whole
    h = hashlib.blake2b(f"{seed}\x00{source}\x00{doc_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "little") / 2**64
    return whole + (1 if u < frac else 0)


class SampleByIdHash(PipelineStep):
    """rate < 1 keeps a doc with probability `rate`; rate > 1 repeats it floor/ceil(rate) times (recorded)."""

    name = "🎲 sample by id hash"
    type = "🔻 - FILTER"

    def __init__(self, seed: int, rates: dict[str, float]):
        super().__init__()
        self.seed = seed
        self.rates = rates

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            meta = doc.metadata
            rate = self.rates.get(meta["source"], 1.0)
            if meta["status"] == "kept" and rate != 1.0:
                copies = sample_copies(self.seed, meta["source"], doc.id, rate)
                meta["n_copies"] = copies
                if copies == 0:
                    meta["status"], meta["reason"] = "dropped", "sampled-out"
                    self.stat_update("sampled-out")
            yield doc

"""Held-out documents, carved at build time (spec `holdout: {fraction: 0.001, max_docs: 2000}`): which ones.

Per source, a kept document (after dedup, decontamination and exclusion, so no copy or near-copy of it is trained
on) is a *candidate* when a 64-bit hash of (seed, source, doc_id) falls below `fraction` of the hash space; the
`max_docs` candidates with the smallest hashes (ties: doc_id) are held out. The choice depends on the documents
alone: the same for any worker count or executor, and stable when other documents come and go (only the cap can
move it).

    documents  each task lists its candidates, at most max_docs per source (its smallest hashes)
               -> stage_b/holdout_candidates/NNNNN.parquet (`candidates`, `smallest_per_source`)
    holdout    one task (pipelines/shards/holdout.py): the max_docs smallest per source of all candidates; writes
               their files and the chosen keys -> stage_b/holdout/00000.parquet (`HELD_OUT_SCHEMA`)
    partition  leaves the chosen keys out of every row (`held_out_keys`)
    manifest   their `documents.status` becomes 'holdout' (reason 'held-out')
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import SpecError
from pipelines.pack.layout import StageBLayout

HOLDOUT_REASON = "held-out"
HOLDOUT_STATUS = "holdout"
DEFAULT_MAX_DOCS = 2000

CANDIDATE_SCHEMA = pa.schema([
    ("key", pa.int64()), ("doc_id", pa.string()), ("source", pa.string()), ("hash", pa.uint64()),
    ("n_tokens", pa.int64()), ("offset", pa.int64()), ("n_chars", pa.int64()), ("n_bytes", pa.int64()),
])
HELD_OUT_SCHEMA = pa.schema([("key", pa.int64()), ("source", pa.string()), ("doc_id", pa.string())])


@dataclass(frozen=True)
class HoldoutConfig:
    fraction: float
    max_docs: int = DEFAULT_MAX_DOCS

    @classmethod
    def from_spec(cls, raw: dict | None, where: str) -> "HoldoutConfig | None":
        """The spec's `holdout:` mapping (None without one); SpecError naming the field on a bad value."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: field 'holdout' must be a mapping like {{fraction: 0.001, max_docs: 2000}}, "
                            f"got {raw!r}")
        unknown = sorted(set(raw) - {"fraction", "max_docs"})
        if unknown:
            raise SpecError(f"{where}: field 'holdout' has unknown key(s) {unknown}; allowed: fraction, max_docs")
        fraction = raw.get("fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise SpecError(f"{where}: field 'holdout.fraction' must be a number in (0, 1], got {fraction!r}")
        max_docs = raw.get("max_docs", DEFAULT_MAX_DOCS)
        if isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1:
            raise SpecError(f"{where}: field 'holdout.max_docs' must be an integer >= 1, got {max_docs!r}")
        return cls(float(fraction), max_docs)


def holdout_hashes(seed: int, sources: list[str], doc_ids: list[str]) -> np.ndarray:
    """A uniform 64-bit hash per (seed, source, doc_id): stable across runs, machines and worker counts."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}\0{s}\0{d}".encode(), digest_size=8).digest(),
                                       "little") for s, d in zip(sources, doc_ids)),
                       dtype=np.uint64, count=len(doc_ids))


def smallest_per_source(table: pa.Table, max_docs: int) -> pa.Table:
    """The rows of smallest (hash, doc_id), at most max_docs per source, sorted by source, hash, doc_id."""
    if table.num_rows == 0:
        return table
    table = table.sort_by([("source", "ascending"), ("hash", "ascending"), ("doc_id", "ascending")])
    source = table["source"].to_numpy(zero_copy_only=False)
    pos = np.arange(len(source))
    first = np.r_[True, source[1:] != source[:-1]]
    rank = pos - np.maximum.accumulate(np.where(first, pos, 0))
    return table.filter(pa.array(rank < max_docs))


def candidates(cfg: HoldoutConfig, seed: int, batch: pa.Table, keys: np.ndarray, doc_id: np.ndarray,
               kept: np.ndarray) -> pa.Table:
    """The candidates among rows `kept` of a documents batch (stage-A columns; final doc ids and keys given)."""
    idx = np.nonzero(kept)[0]
    if not len(idx):
        return CANDIDATE_SCHEMA.empty_table()
    sources = batch["source"].to_numpy(zero_copy_only=False)[idx]
    ids = doc_id[idx]
    h = holdout_hashes(seed, sources.tolist(), ids.tolist())
    sel = h < np.uint64(int(cfg.fraction * 2.0**64)) if cfg.fraction < 1 else np.ones(len(h), bool)
    take = pa.array(idx[sel])
    n_bytes = batch["n_bytes"] if "n_bytes" in batch.column_names else pa.nulls(batch.num_rows, pa.int64())
    return pa.table({
        "key": pa.array(keys[idx[sel]], pa.int64()), "doc_id": pa.array(ids[sel], pa.string()),
        "source": pa.array(sources[sel], pa.string()), "hash": pa.array(h[sel], pa.uint64()),
        "n_tokens": batch["n_tokens"].take(take), "offset": batch["offset"].take(take),
        "n_chars": batch["n_chars"].take(take), "n_bytes": n_bytes.take(take),
    }, schema=CANDIDATE_SCHEMA)


def held_out_path(lay: StageBLayout) -> str:
    return lay.part("holdout", 0)


def held_out_keys(lay: StageBLayout) -> pa.Array:
    """Keys of the held-out documents (empty when the build holds none out)."""
    path = held_out_path(lay)
    if not lay.holdout:
        return pa.array([], pa.int64())
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the holdout stage did not run")
    return pq.read_table(path, columns=["key"])["key"].combine_chunks()

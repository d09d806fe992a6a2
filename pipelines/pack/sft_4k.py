"""`sft-4k` packing (spec `packing: {mode: sft-4k, loss_mask: true}`): Instella-3B-SFT rows, one sample per row.

As OLMo's `prepare_tulu_data.py` (which Instella's SFT used) writes them: every sample copy is its own row,
truncated to seq_len (the segment then covers the first seq_len tokens; the manifest's segments show the cut) and
padded to seq_len with the pad id (mask 0). Rows are in a random order fixed by the build seed. With --max-tokens
the build keeps max_tokens // seq_len rows; the other copies are dropped (`max-tokens`). Padding per source is the
manifest view `padding` (pipelines/shards/format.py).
"""
from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.pack.base import (
    DROPPED_SCHEMA,
    SEGMENT_SCHEMA,
    PackInput,
    PackResult,
    expand_copies,
)


def summarise_capped(docs: pl.DataFrame, kept_keys: np.ndarray,
                     capped_keys: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Docs with no copy left after a token cap are dropped (`max-tokens`); others may keep fewer copies."""
    if len(capped_keys) == 0:
        return pl.DataFrame(schema=DROPPED_SCHEMA), None
    written = pl.DataFrame({"key": kept_keys.astype(np.int64)}).group_by("key").len("n_copies")
    placed = set(written["key"].to_list())
    dropped_keys = sorted(set(capped_keys.tolist()) - placed)
    dropped = pl.DataFrame({"key": dropped_keys, "reason": ["max-tokens"] * len(dropped_keys)}, schema=DROPPED_SCHEMA)
    copies = written.join(docs.select("key", pl.col("n_copies").alias("asked")), on="key")
    copies = copies.filter(pl.col("n_copies") != pl.col("asked")).select("key", pl.col("n_copies").cast(pl.Int32))
    return dropped, copies


def pack_sft_rows(inp: PackInput) -> PackResult:
    keys, copies, lengths = expand_copies(inp.docs)
    order = np.random.default_rng(inp.seed).permutation(len(keys))
    keys, copies, lengths = keys[order], copies[order], lengths[order]
    capped = np.zeros(0, dtype=np.int64)
    if inp.max_tokens is not None:
        n_rows = inp.max_tokens // inp.seq_len
        capped = keys[n_rows:]
        keys, copies, lengths = keys[:n_rows], copies[:n_rows], lengths[:n_rows]
    segments = pl.DataFrame({
        "key": keys.astype(np.int64), "copy": copies.astype(np.int32), "doc_start": np.zeros(len(keys), np.int64),
        "row": np.arange(len(keys), dtype=np.int64), "start": np.zeros(len(keys), np.int64),
        "length": np.minimum(lengths, inp.seq_len).astype(np.int64),
    }, schema=SEGMENT_SCHEMA)
    dropped, new_copies = summarise_capped(inp.docs, keys, capped)
    return PackResult(segments=segments, n_rows=len(keys), dropped=dropped, copies=new_copies)

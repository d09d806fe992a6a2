"""`sft-4k` packing (spec `packing: {mode: sft-4k, loss_mask: true}`): Instella-3B-SFT rows, one sample per row.

As OLMo's `prepare_tulu_data.py` (which Instella's SFT used) writes them: every sample copy is its own row,
truncated to seq_len (the segment then covers the first seq_len tokens; the manifest's segments show the cut) and
padded to seq_len with the pad id (mask 0). Rows are in a random order fixed by the build seed. With --max-tokens
the build keeps max_tokens // seq_len rows; the other copies are dropped (`max-tokens`). Padding per source is the
manifest view `padding` (registered by pipelines/longctx/packing.py, imported here).
"""
from __future__ import annotations

import numpy as np
import polars as pl

import pipelines.longctx.packing  # noqa: F401  (registers the manifest's `padding` view)
from pipelines.packing import SEGMENT_SCHEMA, PackInput, PackResult, expand_copies, summarise_capped


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

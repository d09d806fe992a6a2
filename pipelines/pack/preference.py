"""`preference` packing (spec `packing: {mode: preference, loss_mask: true}`): DPO pairs as row pairs.

Every kept pair is one document of exactly 2 x seq_len tokens (pipelines/steps/chat_template.py: the chosen
conversation cut/padded to seq_len, then the rejected one). Each copy becomes rows 2k (chosen: the document's first
seq_len tokens) and 2k+1 (rejected: the next seq_len), so the trainer (trainer/dpo.py) reads pair k as rows 2k, 2k+1.
Pairs are in a random order fixed by the build seed; with --max-tokens the build keeps max_tokens // (2 x seq_len)
pairs, the other copies are dropped (`max-tokens`).
"""
from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.pack.base import SEGMENT_SCHEMA, PackInput, PackResult, expand_copies
from pipelines.pack.sft_4k import summarise_capped


class PairLengthError(ValueError):
    """A preference document that is not exactly two rows long (not made by the preference template step)."""


def pack_preference_pairs(inp: PackInput) -> PackResult:
    keys, copies, lengths = expand_copies(inp.docs)
    bad = lengths != 2 * inp.seq_len
    if bad.any():
        raise PairLengthError(f"packing 'preference': document key {int(keys[bad][0])} has {int(lengths[bad][0])} "
                              f"tokens, not 2 x seq_len = {2 * inp.seq_len}; every source must be format: preference")
    order = np.random.default_rng(inp.seed).permutation(len(keys))
    keys, copies = keys[order], copies[order]
    capped = np.zeros(0, dtype=np.int64)
    if inp.max_tokens is not None:
        n_pairs = inp.max_tokens // (2 * inp.seq_len)
        capped = keys[n_pairs:]
        keys, copies = keys[:n_pairs], copies[:n_pairs]
    n = len(keys)
    segments = pl.DataFrame({
        "key": np.repeat(keys, 2).astype(np.int64), "copy": np.repeat(copies, 2).astype(np.int32),
        "doc_start": np.tile([0, inp.seq_len], n).astype(np.int64),  # chosen half, then rejected half
        "row": np.arange(2 * n, dtype=np.int64), "start": np.zeros(2 * n, np.int64),
        "length": np.full(2 * n, inp.seq_len, np.int64),
    }, schema=SEGMENT_SCHEMA)
    dropped, new_copies = summarise_capped(inp.docs, keys, capped)
    return PackResult(segments=segments, n_rows=2 * n, dropped=dropped, copies=new_copies)

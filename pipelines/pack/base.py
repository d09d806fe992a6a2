"""The packer interface (`PackInput` -> `PackResult`) and the row-cutting arithmetic packers share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:
    pass


@dataclass
class PackInput:
    docs: pl.DataFrame  # kept docs: key, doc_id, source, file, line, n_tokens, n_copies (lengths, no tokens)
    seq_len: int
    seed: int
    max_tokens: int | None
    options: dict  # the spec's `packing` mapping
    source_options: dict  # source name -> SourceSpec (role in `packing`, `options`)


@dataclass
class PackResult:
    segments: pl.DataFrame  # key, copy, doc_start, row (global), start (in row), length — sorted by row, start
    n_rows: int
    dropped: pl.DataFrame  # key, reason — kept docs the packer did not place
    copies: pl.DataFrame | None = None  # key, n_copies — when the packer wrote fewer copies than asked


SEGMENT_SCHEMA = {"key": pl.Int64, "copy": pl.Int32, "doc_start": pl.Int64, "row": pl.Int64, "start": pl.Int64,
                  "length": pl.Int64}
DROPPED_SCHEMA = {"key": pl.Int64, "reason": pl.Utf8}


def expand_copies(docs: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, copy, n_tokens) per written copy, in the docs' order."""
    keys = docs["key"].to_numpy()
    copies = docs["n_copies"].to_numpy().astype(np.int64)
    lengths = docs["n_tokens"].to_numpy().astype(np.int64)
    rep_key = np.repeat(keys, copies)
    rep_len = np.repeat(lengths, copies)
    # copy index within each doc: position minus the start of that doc's run
    starts = np.repeat(np.cumsum(copies) - copies, copies)
    rep_copy = (np.arange(len(rep_key)) - starts).astype(np.int32)
    return rep_key, rep_copy, rep_len


def cut_into_rows(keys: np.ndarray, copies: np.ndarray, lengths: np.ndarray, seq_len: int,
                  row_offset: int = 0, token_offset: int = 0) -> tuple[pl.DataFrame, int]:
    """Concatenate the given pieces in order (the first at global token `token_offset`) and cut every seq_len
    tokens; one segment per (piece, row) touched. Rows are global; the count returned covers rows from 0."""
    ends = np.cumsum(lengths) + token_offset
    begins = ends - lengths
    first = begins // seq_len
    last = (ends - 1) // seq_len
    n_seg = (last - first + 1).astype(np.int64)
    idx = np.repeat(np.arange(len(keys)), n_seg)
    seg_in_piece = np.arange(len(idx)) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg)
    row = first[idx] + seg_in_piece
    seg_begin = np.maximum(begins[idx], row * seq_len)
    seg_end = np.minimum(ends[idx], (row + 1) * seq_len)
    total = int(ends[-1]) if len(ends) else token_offset
    segments = pl.DataFrame({
        "key": keys[idx].astype(np.int64), "copy": copies[idx].astype(np.int32),
        "doc_start": (seg_begin - begins[idx]).astype(np.int64), "row": (row + row_offset).astype(np.int64),
        "start": (seg_begin - row * seq_len).astype(np.int64), "length": (seg_end - seg_begin).astype(np.int64),
    }, schema=SEGMENT_SCHEMA)
    return segments, -(-total // seq_len)

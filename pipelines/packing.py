"""Packing: decide where every kept document (copy) lands in the fixed-length rows of a build.

A packer sees the table of kept documents (one row per doc, with `n_copies`) and returns *segments* — pieces of
documents placed in global rows — plus the documents it decided not to place (with a reason). The shard writer
then gathers the tokens; positions of a row that no segment covers are filled with the pad id.

Packers are registered by name and selected with the spec's `packing: {mode: NAME, ...}`. Other packers (long
context, SFT) live beside the builder and register themselves with `@register_packer`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass
class PackInput:
    docs: pl.DataFrame  # kept docs: key, doc_id, source, n_tokens, n_copies (+ any intermediate column)
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

PACKERS: dict[str, Callable[[PackInput], PackResult]] = {}


def register_packer(name: str):
    def deco(fn: Callable[[PackInput], PackResult]):
        PACKERS[name] = fn
        return fn

    return deco


# packers living in their own modules, registered here by name (imported on first use)
EXPLICIT_PACKERS: dict[str, tuple[str, str]] = {
    "sft-4k": ("pipelines.sft_packing", "pack_sft_rows"),  # Instella-3B-SFT: one conversation per row
    "mds-rows": ("pipelines.mds_packing", "pack_mds_rows"),  # pre-packed MDS rows kept as they were
}


def get_packer(mode: str) -> Callable[[PackInput], PackResult]:
    if mode not in PACKERS:
        # packers defined outside this module register on import
        import importlib

        for module in ("pipelines.longctx.packing",):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError:
                pass
    if mode in EXPLICIT_PACKERS and mode not in PACKERS:
        import importlib

        module, fn = EXPLICIT_PACKERS[mode]
        PACKERS[mode] = getattr(importlib.import_module(module), fn)
    if mode not in PACKERS:
        raise ValueError(f"unknown packing mode {mode!r}; available: {sorted(set(PACKERS) | set(EXPLICIT_PACKERS))}")
    return PACKERS[mode]


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
                  row_offset: int = 0) -> tuple[pl.DataFrame, int]:
    """Concatenate the given pieces in order and cut every seq_len tokens; one segment per (piece, row) touched."""
    ends = np.cumsum(lengths)
    begins = ends - lengths
    first = begins // seq_len
    last = (ends - 1) // seq_len
    n_seg = (last - first + 1).astype(np.int64)
    idx = np.repeat(np.arange(len(keys)), n_seg)
    seg_in_piece = np.arange(len(idx)) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg)
    row = first[idx] + seg_in_piece
    seg_begin = np.maximum(begins[idx], row * seq_len)
    seg_end = np.minimum(ends[idx], (row + 1) * seq_len)
    total = int(ends[-1]) if len(ends) else 0
    segments = pl.DataFrame({
        "key": keys[idx].astype(np.int64), "copy": copies[idx].astype(np.int32),
        "doc_start": (seg_begin - begins[idx]).astype(np.int64), "row": (row + row_offset).astype(np.int64),
        "start": (seg_begin - row * seq_len).astype(np.int64), "length": (seg_end - seg_begin).astype(np.int64),
    }, schema=SEGMENT_SCHEMA)
    return segments, -(-total // seq_len)


def cap_tokens(keys: np.ndarray, copies: np.ndarray, lengths: np.ndarray, max_tokens: int | None):
    """Keep whole doc copies, in order, while the running total stays within max_tokens."""
    if max_tokens is None:
        return keys, copies, lengths, np.zeros(0, dtype=np.int64)
    keep = np.cumsum(lengths) <= max_tokens
    return keys[keep], copies[keep], lengths[keep], keys[~keep]


def summarise_capped(docs: pl.DataFrame, kept_keys: np.ndarray, capped_keys: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame | None]:
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


@register_packer("concat")
def pack_concat(inp: PackInput) -> PackResult:
    """Pretraining packing: shuffle doc copies by seed, concatenate, cut every seq_len tokens (OLMo/Instella style).

    Only the very last row of a build can be short; it is padded to seq_len with the pad id.
    """
    keys, copies, lengths = expand_copies(inp.docs)
    order = np.random.default_rng(inp.seed).permutation(len(keys)) if inp.options.get("shuffle", True) else np.arange(len(keys))
    keys, copies, lengths = keys[order], copies[order], lengths[order]
    keys, copies, lengths, capped = cap_tokens(keys, copies, lengths, inp.max_tokens)
    segments, n_rows = cut_into_rows(keys, copies, lengths, inp.seq_len)
    dropped, new_copies = summarise_capped(inp.docs, keys, capped)
    return PackResult(segments=segments, n_rows=n_rows, dropped=dropped, copies=new_copies)

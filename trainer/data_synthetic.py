"""Write a synthetic build straight in the documented format (docs/FORMAT.md), for trainer tests and benchmarks.

No tokenizer, no sources: documents are given by their lengths. Token t of the build's token stream is
`2 + t % 50_000` (so pieces are checkable), each document ends with EOS and padding is `pad_id`. Shards hold
`rows_per_shard` rows, each beside its `.idx.arrow` (+ `.mask.npy` when asked); the manifest gets the `build` and
`shards` tables and, optionally, the `segments` table (the trainer must not need it). Work is per shard, so a
build of millions of documents is written in bounded memory (apart from the optional segments table).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.io import atomic_save_npy
from pipelines.shards.format import (
    FORMAT_VERSION,
    INDEX_SCHEMA,
    index_path_of,
    mask_path_of,
    sha256_file,
    shard_path,
)

EOS_ID, PAD_ID = 0, 1


@dataclass(frozen=True)
class SyntheticBuild:
    path: Path
    n_docs: int
    n_rows: int
    n_shards: int
    n_tokens: int  # real (non-padding) tokens


def _segments(doc_lens: np.ndarray, seq_len: int, one_doc_per_row: bool) -> dict[str, np.ndarray]:
    """Where every piece of every document sits: global row, start in the row, length, doc, offset in the doc."""
    if one_doc_per_row:  # SFT / long-context style: each document alone in a row, the rest padding
        n = len(doc_lens)
        return {"grow": np.arange(n), "start": np.zeros(n, np.int64), "length": doc_lens.astype(np.int64),
                "doc": np.arange(n), "doc_start": np.zeros(n, np.int64)}
    doc_first = np.concatenate([[0], np.cumsum(doc_lens)[:-1]])
    total = int(doc_lens.sum())
    cuts = np.union1d(doc_first, np.arange(0, total, seq_len))
    ends = np.append(cuts[1:], total)
    doc = np.searchsorted(doc_first, cuts, side="right") - 1
    return {"grow": cuts // seq_len, "start": cuts % seq_len, "length": ends - cuts, "doc": doc,
            "doc_start": cuts - doc_first[doc]}


def _write_shards(out: Path, doc_lens: np.ndarray, seq_len: int, rows_per_shard: int, first_shard: int,
                  one_doc_per_row: bool, with_masks: bool, token_base: int, token_span: int,
                  doc_prefix: str) -> tuple[list[tuple], list, int]:
    """Shards `first_shard`.. holding `doc_lens` (documents in order from a fresh row): (manifest `shards` rows,
    segment tables, number of rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    seg = _segments(doc_lens, seq_len, one_doc_per_row)
    n_rows = len(doc_lens) if one_doc_per_row else -(-int(doc_lens.sum()) // seq_len)
    n_shards = -(-n_rows // rows_per_shard)
    # token stream position of each segment start (stream = the documents' tokens in order, padding excluded)
    stream = np.concatenate([[0], np.cumsum(doc_lens)[:-1]])[seg["doc"]] + seg["doc_start"]
    shard_of = seg["grow"] // rows_per_shard
    bounds = np.searchsorted(shard_of, np.arange(n_shards + 1))
    shard_rows, seg_tables = [], []
    for i in range(n_shards):
        r0, r1 = i * rows_per_shard, min(n_rows, (i + 1) * rows_per_shard)
        a, b = bounds[i], bounds[i + 1]
        row, start, length = seg["grow"][a:b] - r0, seg["start"][a:b], seg["length"][a:b]
        arr = np.full((r1 - r0, seq_len), PAD_ID, dtype=np.uint16)
        flat = arr.reshape(-1)
        piece = np.repeat(np.arange(b - a), length)  # one entry per real token of the shard
        within = np.arange(len(piece)) - np.repeat(np.cumsum(length) - length, length)
        dst = (row * seq_len + start)[piece] + within
        flat[dst] = 2 + token_base + (stream[a:b][piece] + within) % token_span
        doc_end = seg["doc_start"][a:b] + length == doc_lens[seg["doc"][a:b]]
        flat[(row * seq_len + start + length - 1)[doc_end]] = EOS_ID
        rel = shard_path(first_shard + i)
        atomic_save_npy(out / rel, arr)
        if with_masks:
            atomic_save_npy(out / mask_path_of(rel), (arr % 3 == 0).astype(np.uint8))
        doc_ids = pc.cast(pa.array(seg["doc"][a:b]), pa.string())
        if doc_prefix:
            doc_ids = pc.binary_join_element_wise(doc_prefix, doc_ids, "")
        index = pa.table({
            "doc_id": doc_ids,
            "shard": pa.DictionaryArray.from_arrays(pa.array(np.zeros(b - a, np.int32)), [rel]).cast(pa.string()),
            "row": pa.array(row), "start": pa.array(start), "length": pa.array(length),
            "copy": pa.array(np.zeros(b - a, np.int32)), "doc_start": pa.array(seg["doc_start"][a:b])},
            schema=INDEX_SCHEMA)
        tmp = out / f"{index_path_of(rel)}.tmp"
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, index.schema) as writer:
            writer.write_table(index)
        os.replace(tmp, out / index_path_of(rel))
        shard_rows.append((rel, r1 - r0, arr.size, arr.size - int(length.sum()), sha256_file(out / rel)))
        seg_tables.append(index)
    return shard_rows, seg_tables, n_rows


def _write_manifest(out: Path, seq_len: int, shard_rows: list[tuple], seg_tables: list | None, with_masks: bool,
                    with_n_pad: bool, shard_source: list[str] | None = None) -> None:
    import duckdb
    import pyarrow as pa

    tmp = out / "manifest.duckdb.tmp"
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.execute("create table build (name varchar, spec_hash varchar, seed bigint, seq_len bigint, "
                    "tokenizer varchar, eos_id bigint, pad_id bigint, dtype varchar, rope_theta double, "
                    "has_loss_mask boolean, format_version bigint)")
        # no spec: the content (every shard's hash) stands for it in the build's fingerprint
        spec_hash = hashlib.sha256("".join(r[4] for r in shard_rows).encode()).hexdigest()
        con.execute("insert into build values ('synthetic', ?, 0, ?, 'none', ?, ?, 'uint16', 10000.0, ?, ?)",
                    [spec_hash, seq_len, EOS_ID, PAD_ID, with_masks, FORMAT_VERSION if with_n_pad else 1])
        cols = {"path": [r[0] for r in shard_rows], "n_rows": [r[1] for r in shard_rows],
                "n_tokens": [r[2] for r in shard_rows], "n_pad": [r[3] for r in shard_rows],
                "sha256": [r[4] for r in shard_rows]}
        shards = pa.table(cols)
        if not with_n_pad:
            shards = shards.drop_columns(["n_pad"])
        con.register("_shards", shards)
        con.execute("create table shards as select * from _shards")
        if shard_source is not None:  # a by-source build: which source every shard holds
            con.register("_shard_sources", pa.table({
                "shard": [r[0] for r in shard_rows], "source": shard_source,
                "n_tokens": [r[2] - r[3] for r in shard_rows], "n_pad": [float(r[3]) for r in shard_rows]}))
            con.execute("create table shard_sources as select * from _shard_sources")
        if seg_tables is not None:
            con.register("_segments", pa.concat_tables(seg_tables))
            con.execute("create table segments as select * from _segments")
        con.execute("checkpoint")
    finally:
        con.close()
    os.replace(tmp, out / "manifest.duckdb")


def write_synthetic_build(out: str | Path, doc_lens: np.ndarray, seq_len: int, rows_per_shard: int, *,
                          one_doc_per_row: bool = False, with_segments_table: bool = True, with_masks: bool = False,
                          with_n_pad: bool = True) -> SyntheticBuild:
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    doc_lens = np.asarray(doc_lens, dtype=np.int64)
    if one_doc_per_row and doc_lens.max() > seq_len:
        raise ValueError("one_doc_per_row needs documents of at most seq_len tokens")
    shard_rows, seg_tables, n_rows = _write_shards(out, doc_lens, seq_len, rows_per_shard, 0, one_doc_per_row,
                                                   with_masks, 0, 50_000, "")
    _write_manifest(out, seq_len, shard_rows, seg_tables if with_segments_table else None, with_masks, with_n_pad)
    return SyntheticBuild(out, len(doc_lens), n_rows, len(shard_rows), int(doc_lens.sum()))


SOURCE_TOKEN_SPAN = 10_000  # source i of a synthetic mixture writes tokens 2 + i * SPAN .. 2 + (i + 1) * SPAN - 1


def source_of_token(token: int) -> int:
    """Which source (its position in `write_synthetic_mixture`'s mapping) wrote a non-EOS, non-pad token."""
    return (int(token) - 2) // SOURCE_TOKEN_SPAN


def write_synthetic_mixture(out: str | Path, sources: dict[str, np.ndarray], seq_len: int, rows_per_shard: int,
                            **kw) -> dict[str, SyntheticBuild]:
    """A by-source build: every source's documents packed from a fresh row into its own shards (rows and shards never
    mix sources), the manifest's `shard_sources` naming each shard's source. Source i's tokens lie in
    [2 + i * SOURCE_TOKEN_SPAN, 2 + (i + 1) * SOURCE_TOKEN_SPAN), so a unit's source shows in its tokens."""
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    all_rows, all_segs, names, result = [], [], [], {}
    for i, (name, lens) in enumerate(sources.items()):
        lens = np.asarray(lens, dtype=np.int64)
        rows, segs, n_rows = _write_shards(out, lens, seq_len, rows_per_shard, len(all_rows),
                                           kw.get("one_doc_per_row", False), kw.get("with_masks", False),
                                           i * SOURCE_TOKEN_SPAN, SOURCE_TOKEN_SPAN, f"{name}/")
        all_rows += rows
        all_segs += segs
        names += [name] * len(rows)
        result[name] = SyntheticBuild(out, len(lens), n_rows, len(rows), int(lens.sum()))
    _write_manifest(out, seq_len, all_rows, all_segs, kw.get("with_masks", False), True, names)
    return result

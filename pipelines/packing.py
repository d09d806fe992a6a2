"""Packing: decide where every kept document (copy) lands in the fixed-length rows of a build.

A packer sees the table of kept documents (one row per doc, with `n_copies`) and returns *segments* — pieces of
documents placed in global rows — plus the documents it decided not to place (with a reason). The shard writer
then gathers the tokens; positions of a row that no segment covers are filled with the pad id.

Packers are selected with the spec's `packing: {mode: NAME, ...}`. Every mode runs as bounded, partitioned datatrove
steps (`pack_stages`): whatever sees all documents sees only their lengths, in partitions of sort-key ranges.
`concat` (the pretraining packer) cuts rows from one global shuffled order, so its partition count never changes a
row. The long-context and SFT packers (`pipelines.longctx.packing`, `sft-4k`, `mds-rows`, listed in `get_packer`;
more with `@register_packer`) are per-source algorithms over lengths, run on each partition (up to
ITEMS_PER_PARTITION documents, so a build up to that size is packed as one whole; partition counts come from the
data size only).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines.finalize import (
    ITEM_SCHEMA, ITEMS_PER_PARTITION, StageBLayout, read_json, sort_keys, write_json, write_parquet,
)
from pipelines.stages import Stage

if TYPE_CHECKING:
    from pipelines.build import BuildContext


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
    """The whole-build packer of a mode other than `concat` (which runs partitioned, see `pack_stages`)."""
    if mode in ("long", "sft"):
        from pipelines.longctx.packing import pack_long, pack_sft

        return {"long": pack_long, "sft": pack_sft}[mode]
    if mode in EXPLICIT_PACKERS:
        import importlib

        module, fn = EXPLICIT_PACKERS[mode]
        return getattr(importlib.import_module(module), fn)
    if mode not in PACKERS:
        raise ValueError(f"unknown packing mode {mode!r}; available: "
                         f"{sorted({'concat', 'long', 'sft', *EXPLICIT_PACKERS, *PACKERS})}")
    return PACKERS[mode]


def check_packing_mode(mode: str) -> None:
    """ValueError for a mode no packer implements (`concat` runs as partitioned stages, the others via get_packer)."""
    if mode != "concat":
        get_packer(mode)


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


# A plan part: the segments of a range of rows, sorted by (row, start), with where to read their tokens.
PLAN_SCHEMA = pa.schema([
    ("key", pa.int64()), ("copy", pa.int32()), ("doc_start", pa.int64()), ("row", pa.int64()),
    ("start", pa.int64()), ("length", pa.int64()), ("doc_id", pa.string()), ("source", pa.int32()),
    ("src", pa.int64()),  # first token of the segment in its task's tokens file
])
# Copies a packer did not place: `lost` copies of `key` (all of them: the document is dropped with `reason`).
OUTCOME_SCHEMA = pa.schema([("key", pa.int64()), ("lost", pa.int32()), ("reason", pa.string())])
PLAN_ROW_GROUP = 65536
ITEM_BYTES = 200  # in memory per item while a partition is sorted and cut (arrow columns, sort indices, segments)
PACKER_ITEM_BYTES = 1000  # per document in the long / SFT packers (Python objects per window / sample)


def partition_bounds(n_partitions: int) -> list[int]:
    """Sort-key range [b[k], b[k+1]) of partition k: equal slices of the 64-bit space."""
    return [(k << 64) // n_partitions for k in range(n_partitions)] + [1 << 64]


def read_items(lay: StageBLayout, lo: int, hi: int) -> pa.Table:
    """Pack items of every stage-A task with sort keys in [lo, hi) (row groups outside are skipped)."""
    filters = [("sort_key", ">=", pa.scalar(lo, pa.uint64()))]
    if hi < (1 << 64):
        filters.append(("sort_key", "<", pa.scalar(hi, pa.uint64())))
    tables = [pq.read_table(lay.part("items", t), filters=filters, schema=ITEM_SCHEMA) for t in range(lay.n_tasks)]
    return pa.concat_tables(tables) if tables else ITEM_SCHEMA.empty_table()


class PartitionItems(PipelineStep):
    """Partition k: the pack items whose sort key falls in its range, in global order; their token total."""

    name = "🔀 sort a partition of the global order"
    type = "🔢 - TOKENIZER"

    def __init__(self, lay: StageBLayout):
        super().__init__()
        self.lay = lay

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        b = partition_bounds(self.lay.n_partitions)
        items = read_items(self.lay, b[rank], b[rank + 1])
        items = items.sort_by([("sort_key", "ascending"), ("key", "ascending"), ("copy", "ascending")])
        write_parquet(self.lay.part("partitions", rank), items, row_group_size=PLAN_ROW_GROUP)
        # an item of the non-concat packers stands for all copies of its document (copy == -1)
        per_copy = pc.if_else(pc.equal(items["copy"], -1), items["n_copies"], 1)
        n_tokens = pc.sum(pc.multiply(items["n_tokens"], pc.cast(per_copy, pa.int64()))).as_py() or 0
        write_json(self.lay.part("partitions", rank, "json"), {"n_items": items.num_rows, "n_tokens": int(n_tokens)})
        self.stat_update("items", value=items.num_rows)
        return iter(())


class CutRows(PipelineStep):
    """Partition k: its place in the global concatenation (from every partition's token total), the `--max-tokens`
    cap (whole copies while the running total fits), and its segments cut into global rows.

    A row that straddles two partitions gets its first segments from partition k and the rest from k + 1; both
    compute the same global row, so the writer simply reads the plan parts in order."""

    name = "✂️ cut rows"
    type = "🔢 - TOKENIZER"

    def __init__(self, lay: StageBLayout, seq_len: int, max_tokens: int | None):
        super().__init__()
        self.lay = lay
        self.seq_len = seq_len
        self.max_tokens = max_tokens

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        totals = [read_json(self.lay.part("partitions", k, "json"))["n_tokens"] for k in range(self.lay.n_partitions)]
        offset = sum(totals[:rank])
        items = pq.read_table(self.lay.part("partitions", rank), schema=ITEM_SCHEMA)
        lengths = items["n_tokens"].to_numpy().astype(np.int64)
        ends = offset + np.cumsum(lengths)
        placed = np.ones(len(lengths), bool) if self.max_tokens is None else ends <= self.max_tokens
        capped = items.filter(pa.array(~placed))
        outcome = pa.table({"key": capped["key"], "lost": pa.array(np.ones(capped.num_rows, np.int32)),
                            "reason": pa.array(["max-tokens"] * capped.num_rows, pa.string())}, schema=OUTCOME_SCHEMA)
        items = items.filter(pa.array(placed))
        n_placed = int(lengths[placed].sum())
        keys = items["key"].to_numpy()
        segments, _ = cut_into_rows(keys, items["copy"].to_numpy(), lengths[placed], self.seq_len,
                                    token_offset=offset)
        # segments come out in item order; the piece of each segment tells which item it belongs to
        piece = np.repeat(np.arange(items.num_rows), _pieces_per_item(lengths[placed], offset, self.seq_len))
        plan = pa.table({
            "key": segments["key"].to_arrow(), "copy": segments["copy"].to_arrow(),
            "doc_start": segments["doc_start"].to_arrow(), "row": segments["row"].to_arrow(),
            "start": segments["start"].to_arrow(), "length": segments["length"].to_arrow(),
            "doc_id": items["doc_id"].take(pa.array(piece)), "source": items["source"].take(pa.array(piece)),
            "src": pa.array(items["offset"].to_numpy()[piece] + segments["doc_start"].to_numpy()),
        }, schema=PLAN_SCHEMA)
        write_plan(self.lay, rank, plan, outcome, placed_tokens=n_placed, token_offset=offset)
        return iter(())


def _pieces_per_item(lengths: np.ndarray, token_offset: int, seq_len: int) -> np.ndarray:
    ends = np.cumsum(lengths) + token_offset
    begins = ends - lengths
    return (ends - 1) // seq_len - begins // seq_len + 1


def write_plan(lay: StageBLayout, part: int, plan: pa.Table, outcome: pa.Table, placed_tokens: int,
               token_offset: int, n_rows: int | None = None) -> None:
    """One plan part + its outcomes; the json (written last) says which rows it covers. Concat parts hold global
    rows; the parts of the other packers hold their own rows 0..n_rows-1 (`plan_rows` gives each its offset)."""
    write_parquet(lay.part("plan", part), plan, row_group_size=PLAN_ROW_GROUP)
    write_parquet(lay.part("outcomes", part), outcome)
    rows = plan["row"]
    write_json(lay.part("plan", part, "json"), {
        "first_row": int(pc.min(rows).as_py()) if plan.num_rows else None,
        "last_row": int(pc.max(rows).as_py()) if plan.num_rows else None,
        "placed_tokens": placed_tokens, "token_offset": token_offset, "n_rows": n_rows})


class PackPartition(PipelineStep):
    """long / sft / sft-4k / mds-rows: the mode's packer over the pack items of one partition (lengths only).

    Partitions come from the data size (ITEMS_PER_PARTITION, never --workers), so a build of up to that many
    documents is packed as one whole, exactly as the packer describes; a larger one is packed partition by
    partition, each with its share of `--max-tokens` (by its tokens) and so of every source's `share` budget. Rows
    of partition k follow those of partitions < k (`plan_rows`)."""

    name = "📐 pack (long context / SFT)"
    type = "🔢 - TOKENIZER"

    def __init__(self, ctx: BuildContext, lay: StageBLayout):
        super().__init__()
        self.lay = lay
        self.mode = ctx.spec.packing.get("mode", "concat")
        self.seq_len = ctx.spec.seq_len
        self.seed = ctx.seed
        self.max_tokens = ctx.opts.max_tokens
        self.options = ctx.spec.packing
        self.source_options = {s.name: s for s in ctx.spec.sources}
        self.source_names = [s["source"] for s in ctx.sources]
        self.task_files = [t.display for t in ctx.tasks]  # key >> 32 is the stage-A task (input file)

    def _max_tokens(self, rank: int) -> int | None:
        if self.max_tokens is None or self.lay.n_partitions == 1:
            return self.max_tokens
        totals = [read_json(self.lay.part("partitions", k, "json"))["n_tokens"] for k in range(self.lay.n_partitions)]
        return self.max_tokens * totals[rank] // max(1, sum(totals))

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        items = pq.read_table(self.lay.part("partitions", rank), schema=ITEM_SCHEMA).sort_by("key")
        names = pa.array(self.source_names, pa.string())
        files = pa.array(self.task_files, pa.string())
        task = pc.shift_right(items["key"], 32)
        docs = pl.from_arrow(items.select(["key", "doc_id", "n_tokens", "n_copies", "line"]).append_column(
            "source", names.take(items["source"]) if items.num_rows else pa.array([], pa.string())).append_column(
            "file", files.take(task) if items.num_rows else pa.array([], pa.string())))
        seed = self.seed if rank == 0 else int(sort_keys(self.seed, np.array([rank]), np.array([1]))[0] >> 1)
        result = get_packer(self.mode)(PackInput(docs=docs, seq_len=self.seq_len, seed=seed,
                                                 max_tokens=self._max_tokens(rank), options=self.options,
                                                 source_options=self.source_options))
        seg = result.segments.join(pl.from_arrow(items.select(["key", "doc_id", "source", "offset"])), on="key",
                                   how="left").sort("row", "start")
        plan = pa.table({
            "key": seg["key"].to_arrow(), "copy": seg["copy"].to_arrow(), "doc_start": seg["doc_start"].to_arrow(),
            "row": seg["row"].to_arrow(), "start": seg["start"].to_arrow(), "length": seg["length"].to_arrow(),
            "doc_id": seg["doc_id"].to_arrow(), "source": seg["source"].to_arrow(),
            "src": (seg["offset"] + seg["doc_start"]).to_arrow(),
        }).cast(PLAN_SCHEMA)
        asked = docs.select("key", "n_copies")
        lost = [result.dropped.join(asked, on="key").select("key", pl.col("n_copies").alias("lost"), "reason")]
        if result.copies is not None and result.copies.height:
            lost.append(result.copies.join(asked.rename({"n_copies": "asked"}), on="key").select(
                "key", (pl.col("asked") - pl.col("n_copies")).alias("lost"), pl.lit(None, pl.Utf8).alias("reason")))
        outcome = pl.concat([x.cast({"key": pl.Int64, "lost": pl.Int32, "reason": pl.Utf8}) for x in lost])
        # rows of these packers are not cut from a concatenation: the writer takes the row count from the json
        write_plan(self.lay, rank, plan, outcome.to_arrow().cast(OUTCOME_SCHEMA),
                   placed_tokens=int(seg["length"].sum() or 0), token_offset=0, n_rows=result.n_rows)
        return iter(())


def pack_stages(ctx: BuildContext, lay: StageBLayout) -> list[Stage]:
    if lay.concat:
        return [
            Stage("partition", [PartitionItems(lay)], lay.n_partitions,
                  description=f"sort {lay.n_partitions} partition(s) of the global order",
                  memory_bytes=ITEMS_PER_PARTITION * ITEM_BYTES),
            Stage("cut_rows", [CutRows(lay, ctx.spec.seq_len, ctx.opts.max_tokens)], lay.n_partitions,
                  description="cut rows", memory_bytes=ITEMS_PER_PARTITION * ITEM_BYTES),
        ]
    get_packer(ctx.spec.packing.get("mode", "concat"))  # an unknown mode fails before any stage runs
    return [
        Stage("partition", [PartitionItems(lay)], lay.n_partitions,
              description=f"split the documents into {lay.n_partitions} partition(s)",
              memory_bytes=ITEMS_PER_PARTITION * ITEM_BYTES),
        Stage("pack", [PackPartition(ctx, lay)], lay.n_partitions,
              description=f"pack ({ctx.spec.packing.get('mode')}), {lay.n_partitions} partition(s)",
              memory_bytes=ITEMS_PER_PARTITION * PACKER_ITEM_BYTES),
    ]


def plan_rows(lay: StageBLayout, seq_len: int) -> tuple[int, list[dict]]:
    """(number of rows of the build, the plan parts' row ranges); each part gets the `row_offset` to add to its rows
    (0 for concat, whose parts hold global rows)."""
    parts = [read_json(lay.part("plan", k, "json")) for k in range(lay.n_plan_parts)]
    if lay.concat:
        for p in parts:
            p["row_offset"] = 0
        return -(-sum(p["placed_tokens"] for p in parts) // seq_len), parts
    offset = 0
    for p in parts:
        p["row_offset"] = offset
        offset += p["n_rows"]
    return offset, parts

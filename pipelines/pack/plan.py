"""Plan parts (segments of a range of rows, with where to read their tokens) and the `partition` step shared by
every packing mode.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines.io import read_json, write_json, write_parquet
from pipelines.pack.holdout import held_out_keys
from pipelines.pack.layout import ITEM_SCHEMA, StageBLayout

if TYPE_CHECKING:
    pass




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
        if self.lay.holdout:  # held-out documents never enter a row
            items = items.filter(pc.invert(pc.is_in(items["key"], value_set=held_out_keys(self.lay))))
        items = items.sort_by([("sort_key", "ascending"), ("key", "ascending"), ("copy", "ascending")])
        write_parquet(self.lay.part("partitions", rank), items, row_group_size=PLAN_ROW_GROUP)
        # an item of the non-concat packers stands for all copies of its document (copy == -1)
        per_copy = pc.if_else(pc.equal(items["copy"], -1), items["n_copies"], 1)
        tokens = pc.multiply(items["n_tokens"], pc.cast(per_copy, pa.int64()))
        n_tokens = pc.sum(tokens).as_py() or 0
        summary = {"n_items": items.num_rows, "n_tokens": int(n_tokens)}
        if self.lay.by_source:  # tokens per source index: where each source starts in the by-source concatenation
            per = pa.table({"source": items["source"], "tokens": tokens}).group_by("source").aggregate(
                [("tokens", "sum")])
            summary["source_tokens"] = {str(s): int(t) for s, t in zip(per["source"].to_pylist(),
                                                                       per["tokens_sum"].to_pylist())}
        write_json(self.lay.part("partitions", rank, "json"), summary)
        self.stat_update("items", value=items.num_rows)
        return iter(())


def shard_ranges(lay: StageBLayout, n_rows: int, rows_per_shard: int, parts: list[dict]) -> list[tuple[int, int]]:
    """Rows [r0, r1) of every shard: blocks of rows_per_shard rows; in a by-source build each source's rows (the
    `source_rows` of the plan parts) are cut on their own, so that a shard never mixes sources either."""
    if not lay.by_source:
        return [(r0, min(n_rows, r0 + rows_per_shard)) for r0 in range(0, n_rows, rows_per_shard)]
    spans: dict[str, list[int]] = {}
    for p in parts:
        for s, (first, last) in p.get("source_rows", {}).items():
            lo, hi = spans.get(s, (first, last))
            spans[s] = [min(lo, first), max(hi, last)]
    ranges = []
    for first, last in sorted(spans.values()):
        ranges += [(r0, min(last + 1, r0 + rows_per_shard)) for r0 in range(first, last + 1, rows_per_shard)]
    return ranges


def write_plan(lay: StageBLayout, part: int, plan: pa.Table, outcome: pa.Table, placed_tokens: int,
               token_offset: int, n_rows: int | None = None, extra: dict | None = None) -> None:
    """One plan part + its outcomes; the json (written last) says which rows it covers. Concat parts hold global
    rows; the parts of the other packers hold their own rows 0..n_rows-1 (`plan_rows` gives each its offset)."""
    write_parquet(lay.part("plan", part), plan, row_group_size=PLAN_ROW_GROUP)
    write_parquet(lay.part("outcomes", part), outcome)
    rows = plan["row"]
    write_json(lay.part("plan", part, "json"), {
        "first_row": int(pc.min(rows).as_py()) if plan.num_rows else None,
        "last_row": int(pc.max(rows).as_py()) if plan.num_rows else None,
        "placed_tokens": placed_tokens, "token_offset": token_offset, "n_rows": n_rows, **(extra or {})})


def plan_rows(lay: StageBLayout, seq_len: int) -> tuple[int, list[dict]]:
    """(number of rows of the build, the plan parts' row ranges); each part gets the `row_offset` to add to its rows
    (0 for concat, whose parts hold global rows)."""
    parts = [read_json(lay.part("plan", k, "json")) for k in range(lay.n_plan_parts)]
    if lay.concat:
        for p in parts:
            p["row_offset"] = 0
        if lay.by_source:  # every source starts a row: the last row written is the end
            return max((p["last_row"] + 1 for p in parts if p["last_row"] is not None), default=0), parts
        return -(-sum(p["placed_tokens"] for p in parts) // seq_len), parts
    offset = 0
    for p in parts:
        p["row_offset"] = offset
        offset += p["n_rows"]
    return offset, parts

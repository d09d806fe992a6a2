"""The non-concat packers (long / sft / sft-4k / mds-rows) run on one partition of the pack items.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines.io import read_json
from pipelines.pack.base import PackInput
from pipelines.pack.layout import ITEM_SCHEMA, StageBLayout, sort_keys
from pipelines.pack.plan import OUTCOME_SCHEMA, PLAN_SCHEMA, write_plan
from pipelines.pack.registry import get_packer

if TYPE_CHECKING:
    from pipelines.build.context import BuildContext




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

"""Stand-in for the global dedup stages: one task that writes the decisions files (`pipelines.decisions`).

It does what stage B did before it was split: doc-id repair (a repeated record id gets `@<file>:<line>`),
`--exclude` (documents another build placed in its shards) and dedup (`pipelines.dedup.find_duplicates`). It
holds the dedup keys of every kept document in one process, so it is NOT bounded by a batch; the global dedup
stages (`global_dedup_stages(ctx)`) replace it with bounded steps writing the same files.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
from datatrove.pipeline.base import PipelineStep

from pipelines.decisions import DECISIONS_SCHEMA, doc_key, write_decisions
from pipelines.stages import Stage
from pipelines.steps import intermediate_paths

if TYPE_CHECKING:
    from pipelines.build import BuildContext


class LegacyDecide(PipelineStep):
    name = "🔍 dedup + exclusion (single task)"
    type = "🫂 - DEDUP"

    def __init__(self, ctx: BuildContext):
        super().__init__()
        self.work_dir = ctx.work_dir
        self.n_tasks = len(ctx.tasks)
        self.dedup = ctx.spec.dedup
        self.exclude = tuple(ctx.opts.exclude)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        frames = []
        for task in range(self.n_tasks):
            path = intermediate_paths(os.path.join(self.work_dir, "docs"), task)[0]
            df = pl.read_parquet(path, columns=["doc_id", "file", "line", "status", "text_hash", "minhash", "url"])
            frames.append(df.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + doc_key(task, 0)).alias("key")))
        if not frames:
            return iter(())
        docs = pl.concat(frames, how="diagonal_relaxed")
        repeat = pl.col("doc_id").cum_count().over("doc_id") > 1
        docs = docs.with_columns(
            pl.when(repeat).then(pl.format("{}@{}:{}", "doc_id", pl.col("file").str.split("/").list.last(), "line"))
            .alias("new_id"))
        docs = docs.with_columns(pl.coalesce("new_id", "doc_id").alias("doc_id"))
        decided = [docs.filter(pl.col("new_id").is_not_null()).select(
            "key", pl.lit(None, pl.Utf8).alias("reason"), pl.lit(None, pl.Int64).alias("duplicate_of"), "new_id")]
        kept = docs.filter(pl.col("status") == "kept")
        for other in self.exclude:
            from pipelines.manifest import connect

            con = connect(other)
            used = pl.from_arrow(con.sql("SELECT DISTINCT doc_id FROM segments").to_arrow_table())
            con.close()
            hits = kept.join(used, on="doc_id", how="semi")
            decided.append(hits.select("key", pl.lit("excluded").alias("reason"),
                                       pl.lit(None, pl.Int64).alias("duplicate_of"), pl.lit(None, pl.Utf8).alias("new_id")))
            kept = kept.join(hits.select("key"), on="key", how="anti")
        if self.dedup is not None:
            from pipelines.dedup import DedupConfig, find_duplicates

            found = find_duplicates(kept.select("key", "doc_id", "text_hash", "minhash", "url"),
                                    DedupConfig.from_spec(self.dedup))
            survivor = kept.select(pl.col("doc_id").alias("duplicate_of"), pl.col("key").alias("dup_key"))
            found = found.join(survivor, on="duplicate_of", how="left")
            decided.append(found.select("key", "reason", pl.col("dup_key").alias("duplicate_of"),
                                        pl.lit(None, pl.Utf8).alias("new_id")))
        # one row per key: a repaired id and a drop of the same document merge
        all_rows = pl.concat([d.cast({"duplicate_of": pl.Int64}) for d in decided]).group_by("key").agg(
            pl.col("reason").drop_nulls().first(), pl.col("duplicate_of").drop_nulls().first(),
            pl.col("new_id").drop_nulls().first())
        all_rows = all_rows.with_columns((pl.col("key") // (1 << 32)).alias("task"),
                                         (pl.col("key") % (1 << 32)).alias("idx"))
        by_task = {t: g for (t,), g in all_rows.partition_by("task", as_dict=True).items()}
        for task in range(self.n_tasks):
            g = by_task.get(task)
            if g is None:
                write_decisions(self.work_dir, task, DECISIONS_SCHEMA.empty_table())
                continue
            write_decisions(self.work_dir, task, pa.table({
                "idx": g["idx"].to_arrow(), "reason": g["reason"].to_arrow(),
                "duplicate_of": g["duplicate_of"].to_arrow(), "doc_id": g["new_id"].to_arrow()}))
        return iter(())


def legacy_decide_stages(ctx: BuildContext) -> list[Stage]:
    if not ctx.tasks:
        return []
    return [Stage("decide", [LegacyDecide(ctx)], 1, description="dedup + exclusion decisions")]

"""Shard writers: task w writes a contiguous block of shards (.npy, .mask.npy, .idx.arrow) and their manifest parts.

A writer holds one shard (shard_tokens tokens) and the plan segments of that shard at a time; tokens are gathered
from the stage-A intermediates through memory maps. Blocks are contiguous so that reading the writers' parts in
order lists segments sorted by (shard, row, start).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.finalize import StageBLayout, write_parquet
from pipelines.packing import PLAN_SCHEMA, plan_rows
from pipelines.shards.format import (
    INDEX_SCHEMA, TABLES, index_name, mask_name, sha256_file, shard_name, shard_path, token_dtype,
)
from pipelines.steps import intermediate_paths

if TYPE_CHECKING:
    from pipelines.build import BuildContext


class TokenFiles:
    """Memory maps of the stage-A token (and mask) files, a bounded number open at a time."""

    def __init__(self, work_dir: str, dtype: np.dtype, with_mask: bool, max_open: int = 64):
        self.work_dir = os.path.join(work_dir, "docs")
        self.dtype = dtype
        self.with_mask = with_mask
        self.max_open = max_open
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()

    def get(self, task: int) -> tuple[np.ndarray, np.ndarray | None]:
        if task in self._open:
            self._open.move_to_end(task)
            return self._open[task]
        _, tok_path, mask_path = intermediate_paths(self.work_dir, task)
        tok = np.memmap(tok_path, dtype=self.dtype, mode="r") if os.path.getsize(tok_path) else np.zeros(0, self.dtype)
        mask = None
        if self.with_mask:
            mask = np.memmap(mask_path, dtype=np.uint8, mode="r") if os.path.getsize(mask_path) else np.zeros(0, np.uint8)
        self._open[task] = (tok, mask)
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return tok, mask


def shard_block(n_shards: int, n_writers: int, rank: int) -> range:
    per = -(-n_shards // n_writers) if n_shards else 0
    return range(min(n_shards, rank * per), min(n_shards, (rank + 1) * per))


def atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def atomic_arrow(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


class WriteShards(PipelineStep):
    name = "🧱 write shards"
    type = "💽 - WRITER"

    def __init__(self, ctx: BuildContext, lay: StageBLayout):
        super().__init__()
        self.lay = lay
        self.seq_len = ctx.spec.seq_len
        self.rows_per_shard = max(1, ctx.spec.shard_tokens // ctx.spec.seq_len)
        self.pad_id = ctx.pad_id
        self.dtype = token_dtype(ctx.vocab_size)
        self.with_mask = ctx.with_mask
        self.source_names = [s["source"] for s in ctx.sources]

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        lay = self.lay
        n_rows, parts = plan_rows(lay, self.seq_len)
        n_shards = -(-n_rows // self.rows_per_shard)
        files = TokenFiles(lay.work_dir, self.dtype, self.with_mask)
        out_dir = Path(lay.next_shards)
        out_dir.mkdir(parents=True, exist_ok=True)
        seg_path = lay.part("written", rank, "segments.parquet")
        os.makedirs(os.path.dirname(seg_path), exist_ok=True)
        shard_rows, source_rows = [], []
        with pq.ParquetWriter(seg_path + ".tmp", INDEX_SCHEMA) as seg_writer:
            for i in shard_block(n_shards, lay.n_writers, rank):
                r0, r1 = i * self.rows_per_shard, min(n_rows, (i + 1) * self.rows_per_shard)
                plan = self._plan_of(parts, r0, r1)
                index, shard_row, per_source = self._write_shard(i, r0, r1, plan, files, out_dir)
                seg_writer.write_table(index)
                shard_rows.append(shard_row)
                source_rows += per_source
                self.stat_update("shards")
        os.replace(seg_path + ".tmp", seg_path)
        write_parquet(lay.part("written", rank, "shards.parquet"),
                      pa.Table.from_pylist(shard_rows, schema=TABLES["shards"]))
        write_parquet(lay.part("written", rank, "sources.parquet"),
                      pa.Table.from_pylist(source_rows, schema=TABLES["shard_sources"]))
        return iter(())

    def _plan_of(self, parts: list[dict], r0: int, r1: int) -> pa.Table:
        """Segments of rows [r0, r1), sorted by (row, start): the overlapping plan parts, read in order."""
        tables = []
        for k, p in enumerate(parts):
            if p["first_row"] is None or p["last_row"] < r0 or p["first_row"] >= r1:
                continue
            tables.append(pq.read_table(self.lay.part("plan", k), schema=PLAN_SCHEMA,
                                        filters=[("row", ">=", r0), ("row", "<", r1)]))
        return pa.concat_tables(tables) if tables else PLAN_SCHEMA.empty_table()

    def _write_shard(self, i: int, r0: int, r1: int, plan: pa.Table, files: TokenFiles, out_dir: Path):
        L = self.seq_len
        arr = np.full((r1 - r0, L), self.pad_id, dtype=self.dtype)
        mask = np.zeros((r1 - r0, L), dtype=np.uint8) if self.with_mask else None
        rows = plan["row"].to_numpy() - r0
        starts = plan["start"].to_numpy()
        lengths = plan["length"].to_numpy()
        srcs = plan["src"].to_numpy()
        tasks = plan["key"].to_numpy() >> 32
        for task, row, start, length, src in zip(tasks.tolist(), rows.tolist(), starts.tolist(), lengths.tolist(),
                                                 srcs.tolist()):
            tok, msk = files.get(task)
            arr[row, start:start + length] = tok[src:src + length]
            if mask is not None:
                mask[row, start:start + length] = msk[src:src + length]
        atomic_npy(out_dir / shard_name(i), arr)
        if mask is not None:
            atomic_npy(out_dir / mask_name(i), mask)
        path = shard_path(i)
        index = pa.table({
            "doc_id": plan["doc_id"], "shard": pa.array([path] * plan.num_rows, pa.string()),
            "row": pa.array(rows, pa.int64()), "start": plan["start"], "length": plan["length"],
            "copy": plan["copy"], "doc_start": plan["doc_start"],
        }, schema=INDEX_SCHEMA).combine_chunks()  # one record batch: bytes independent of how the plan was read
        atomic_arrow(out_dir / index_name(i), index)
        covered = int(lengths.sum())
        shard_row = {"path": path, "n_rows": r1 - r0, "n_tokens": arr.size, "n_pad": arr.size - covered,
                     "sha256": sha256_file(out_dir / shard_name(i)), "n_segments": plan.num_rows}
        return index, shard_row, self._per_source(path, plan, rows, lengths)

    def _per_source(self, path: str, plan: pa.Table, rows: np.ndarray, lengths: np.ndarray) -> list[dict]:
        """Tokens per source, and each row's padding attributed to its sources in proportion to their tokens."""
        if not plan.num_rows:
            return []
        source = plan["source"].to_numpy()
        row_tokens = np.bincount(rows, weights=lengths)
        pad = (self.seq_len - row_tokens[rows]) * lengths / row_tokens[rows]
        n_src = len(self.source_names)
        tok = np.bincount(source, weights=lengths, minlength=n_src)
        attributed = np.bincount(source, weights=pad, minlength=n_src)
        return [{"shard": path, "source": self.source_names[s], "n_tokens": int(tok[s]), "n_pad": float(attributed[s])}
                for s in np.nonzero(tok)[0].tolist()]


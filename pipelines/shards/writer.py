"""Shard writers: task w writes a contiguous block of shards (.npy, .mask.npy, .idx.arrow) and their manifest parts.

A writer holds one *chunk* of rows (CHUNK_TOKENS tokens) and that chunk's plan segments at a time, never a whole
shard: the .npy header is written first (its shape is known from the plan), rows are appended chunk by chunk, and the
sha256 is computed as the bytes go out. Tokens are read from the stage-A intermediates with `pread` into the chunk
buffer -- no memory maps, so pages of the (much larger) intermediates never count in the writer's memory. Blocks are
contiguous so that reading the writers' parts in order lists segments sorted by (shard, row, start).
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.io import pread_into, write_parquet
from pipelines.pack.layout import StageBLayout
from pipelines.pack.plan import PLAN_SCHEMA, plan_rows, shard_ranges
from pipelines.shards.format import (
    INDEX_SCHEMA,
    TABLES,
    index_name,
    mask_name,
    shard_name,
    sha256_file,
    shard_path,
    token_dtype,
)
from pipelines.steps.intermediate import intermediate_paths

if TYPE_CHECKING:
    from pipelines.build.context import BuildContext

CHUNK_TOKENS = 1 << 22  # tokens a writer fills at once (8 MB of uint16): its memory, whatever the shard size
INDEX_BATCH_ROWS = 1 << 16  # segments per record batch of an .idx.arrow file (fixed: bytes never depend on chunks)


class TokenFiles:
    """Positional reads (`pread`) from the stage-A token (and mask) files, a bounded number of descriptors open."""

    def __init__(self, work_dir: str, dtype: np.dtype, with_mask: bool, max_open: int = 64):
        self.work_dir = os.path.join(work_dir, "docs")
        self.dtype = np.dtype(dtype)
        self.with_mask = with_mask
        self.max_open = max_open
        self._open: OrderedDict[int, tuple[int, int | None]] = OrderedDict()

    def _fds(self, task: int) -> tuple[int, int | None]:
        if task in self._open:
            self._open.move_to_end(task)
            return self._open[task]
        _, tok_path, mask_path = intermediate_paths(self.work_dir, task)
        fds = (os.open(tok_path, os.O_RDONLY), os.open(mask_path, os.O_RDONLY) if self.with_mask else None)
        self._open[task] = fds
        if len(self._open) > self.max_open:
            for fd in self._open.popitem(last=False)[1]:
                if fd is not None:
                    os.close(fd)
        return fds

    def read_into(self, task: int, src: int, out: np.ndarray, mask_out: np.ndarray | None) -> None:
        """Tokens [src, src + len(out)) of task's file into `out` (and its mask into `mask_out`)."""
        tok_fd, mask_fd = self._fds(task)
        pread_into(tok_fd, out, src * self.dtype.itemsize, f"stage-A tokens of task {task}")
        if mask_out is not None:
            pread_into(mask_fd, mask_out, src, f"stage-A mask of task {task}")

    def close(self) -> None:
        for fds in self._open.values():
            for fd in fds:
                if fd is not None:
                    os.close(fd)
        self._open.clear()


def shard_block(n_shards: int, n_writers: int, rank: int) -> range:
    per = -(-n_shards // n_writers) if n_shards else 0
    return range(min(n_shards, rank * per), min(n_shards, (rank + 1) * per))


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The header `np.save` writes for a C-ordered array of this dtype and shape (so streamed files are the same)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                "fortran_order": False, "shape": shape})
    return buf.getvalue()


class StreamedNpy:
    """A .npy file written row chunk by row chunk, atomically (tmp + rename on close), with its sha256."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.f = open(self.tmp, "wb")
        self.hash = hashlib.sha256()
        self._write(npy_header(dtype, shape))

    def _write(self, data) -> None:
        self.f.write(data)
        self.hash.update(data)

    def write(self, arr: np.ndarray) -> None:
        self._write(memoryview(np.ascontiguousarray(arr)).cast("B"))

    def close(self) -> str:
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.hash.hexdigest()


class FixedBatchIpcWriter:
    """An Arrow IPC file written in record batches of exactly `batch_rows` rows (the last one shorter), whatever the
    sizes of the tables handed to `write`: the file's bytes depend only on its rows."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.batch_rows = batch_rows
        self.sink = pa.OSFile(str(self.tmp), "wb")
        self.writer = pa.ipc.new_file(self.sink, schema)
        self.pending: list[pa.Table] = []
        self.n_pending = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.n_pending += table.num_rows
        if self.n_pending >= self.batch_rows:
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        table = pa.concat_tables(self.pending).combine_chunks() if self.pending else None
        self.pending, self.n_pending = [], 0
        if table is None:
            return
        n_full = table.num_rows // self.batch_rows * self.batch_rows
        for start in range(0, n_full, self.batch_rows):
            self.writer.write_table(table.slice(start, self.batch_rows))
        rest = table.slice(n_full)
        if final and (rest.num_rows or not n_full):
            self.writer.write_table(rest)
        elif rest.num_rows:
            self.pending, self.n_pending = [rest], rest.num_rows

    def close(self) -> None:
        self._emit(final=True)
        self.writer.close()
        self.sink.close()
        os.replace(self.tmp, self.path)


class WriteShards(PipelineStep):
    name = "🧱 write shards"
    type = "💽 - WRITER"

    def __init__(self, ctx: BuildContext, lay: StageBLayout):
        super().__init__()
        self.lay = lay
        self.seq_len = ctx.spec.seq_len
        self.rows_per_shard = max(1, ctx.spec.shard_tokens // ctx.spec.seq_len)
        self.rows_per_chunk = max(1, CHUNK_TOKENS // ctx.spec.seq_len)
        self.pad_id = ctx.pad_id
        self.dtype = token_dtype(ctx.vocab_size)
        self.with_mask = ctx.with_mask
        self.source_names = [s["source"] for s in ctx.sources]

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        lay = self.lay
        n_rows, parts = plan_rows(lay, self.seq_len)
        ranges = shard_ranges(lay, n_rows, self.rows_per_shard, parts)
        n_shards = len(ranges)
        files = TokenFiles(lay.work_dir, self.dtype, self.with_mask)
        out_dir = Path(lay.next_shards)
        out_dir.mkdir(parents=True, exist_ok=True)
        seg_path = lay.part("written", rank, "segments.parquet")
        os.makedirs(os.path.dirname(seg_path), exist_ok=True)
        shard_rows, source_rows = [], []
        try:
            with pq.ParquetWriter(seg_path + ".tmp", INDEX_SCHEMA) as seg_writer:
                for i in shard_block(n_shards, lay.n_writers, rank):
                    r0, r1 = ranges[i]
                    shard_row, per_source = self._write_shard(i, r0, r1, parts, files, out_dir, seg_writer)
                    shard_rows.append(shard_row)
                    source_rows += per_source
                    self.stat_update("shards")
        finally:
            files.close()
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
            off = p["row_offset"]  # rows of a part are its own (long / SFT packers) or global (concat: 0)
            if p["first_row"] is None or p["last_row"] + off < r0 or p["first_row"] + off >= r1:
                continue
            t = pq.read_table(self.lay.part("plan", k), schema=PLAN_SCHEMA,
                              filters=[("row", ">=", r0 - off), ("row", "<", r1 - off)])
            if off:
                t = t.set_column(t.schema.get_field_index("row"), "row", pc.add(t["row"], off))
            tables.append(t)
        return pa.concat_tables(tables).combine_chunks() if tables else PLAN_SCHEMA.empty_table()

    def _write_shard(self, i: int, r0: int, r1: int, parts: list[dict], files: TokenFiles, out_dir: Path,
                     seg_writer: pq.ParquetWriter) -> tuple[dict, list[dict]]:
        L = self.seq_len
        path = shard_path(i)
        tokens = StreamedNpy(out_dir / shard_name(i), self.dtype, (r1 - r0, L))
        masks = StreamedNpy(out_dir / mask_name(i), np.uint8, (r1 - r0, L)) if self.with_mask else None
        n_src = len(self.source_names)
        src_tokens, src_pad = np.zeros(n_src), np.zeros(n_src)
        covered = n_segments = 0
        index_writer = FixedBatchIpcWriter(out_dir / index_name(i), INDEX_SCHEMA, INDEX_BATCH_ROWS)
        for c0 in range(r0, r1, self.rows_per_chunk):
            c1 = min(r1, c0 + self.rows_per_chunk)
            plan = self._plan_of(parts, c0, c1)
            arr = np.full((c1 - c0, L), self.pad_id, dtype=self.dtype)
            mask = np.zeros((c1 - c0, L), dtype=np.uint8) if masks else None
            rows = plan["row"].to_numpy() - c0
            starts = plan["start"].to_numpy()
            lengths = plan["length"].to_numpy()
            for task, row, start, length, src in zip((plan["key"].to_numpy() >> 32).tolist(), rows.tolist(),
                                                     starts.tolist(), lengths.tolist(),
                                                     plan["src"].to_numpy().tolist()):
                files.read_into(task, src, arr[row, start:start + length],
                                None if mask is None else mask[row, start:start + length])
            tokens.write(arr)
            if masks:
                masks.write(mask)
            index = pa.table({
                "doc_id": plan["doc_id"], "shard": pa.array([path] * plan.num_rows, pa.string()),
                "row": pa.array(rows + (c0 - r0), pa.int64()), "start": plan["start"], "length": plan["length"],
                "copy": plan["copy"], "doc_start": plan["doc_start"],
            }, schema=INDEX_SCHEMA)
            index_writer.write(index)
            seg_writer.write_table(index)
            tok, pad = self._per_source(plan, rows, lengths)
            src_tokens += tok
            src_pad += pad
            covered += int(lengths.sum())
            n_segments += plan.num_rows
        index_writer.close()
        sha = tokens.close()
        mask_sha = masks.close() if masks else None
        n_tokens = (r1 - r0) * L
        shard_row = {"path": path, "n_rows": r1 - r0, "n_tokens": n_tokens, "n_pad": n_tokens - covered,
                     "sha256": sha, "n_segments": n_segments, "mask_sha256": mask_sha,
                     "index_sha256": sha256_file(out_dir / index_name(i))}
        per_source = [{"shard": path, "source": self.source_names[s], "n_tokens": int(src_tokens[s]),
                       "n_pad": float(src_pad[s])} for s in np.nonzero(src_tokens)[0].tolist()]
        return shard_row, per_source

    def _per_source(self, plan: pa.Table, rows: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens per source, and each row's padding attributed to its sources in proportion to their tokens (a
        chunk holds whole rows, so per-chunk sums add up to the shard's)."""
        n_src = len(self.source_names)
        if not plan.num_rows:
            return np.zeros(n_src), np.zeros(n_src)
        source = plan["source"].to_numpy()
        row_tokens = np.bincount(rows, weights=lengths)
        pad = (self.seq_len - row_tokens[rows]) * lengths / row_tokens[rows]
        return (np.bincount(source, weights=lengths, minlength=n_src),
                np.bincount(source, weights=pad, minlength=n_src))

"""Stage B of a build as datatrove stages, each bounded by a task's share of the data (never by the corpus).

    decide     global dedup / exclusion / doc-id repair -> decisions/NNNNN.parquet per stage-A task
               (`pipelines.dedup_stages`: ids, exclusion, exact/URL/MinHash dedup, parallel over hash buckets)
    documents  one task per stage-A file: apply its decisions; write its manifest `documents` part, its
               `contamination` part and its *pack items* (lengths only: key, copy, n_tokens, token offset, ...)
    pack       partition items by sort-key range (P tasks), then concat: cut each partition into rows from the
               prefix token offsets of all partitions (P tasks); long / sft: the mode's packer on each partition
               (P tasks; P from the data size). Either way: plan parts (segments sorted by row) + outcomes (copies
               not placed, with a reason)
    write      one task per block of shards, a chunk of rows at a time: read tokens from the stage-A
               intermediates (pread), stream .npy (+ .mask.npy) + .idx.arrow into OUT/shards.next/, and the
               manifest parts of those shards
    manifest   one task: DuckDB builds manifest.duckdb from the parts (out of core), then swaps the new shards and
               manifest in (see `pipelines.manifest.swap_in`)

Every file a stage writes is named by task rank and written atomically; a stage reads exactly the files the plan
names, so stale files of an earlier run are never read. Task counts come from the size of the input, not from
`--workers`; shard contents do not depend on them at all (rows are cut from one global order), so shards are
byte-identical for any worker count or executor.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.decisions import decisions_path, doc_key, read_decisions
from pipelines.shards.format import SHARDS_DIR, TABLES, token_dtype
from pipelines.stages import Stage
from pipelines.steps import intermediate_paths

if TYPE_CHECKING:
    from pipelines.build import BuildContext

ITEMS_PER_PARTITION = 500_000  # pack items one concat partition task sorts and cuts (~200 B each in memory)
BYTES_PER_DOC_GUESS = 300  # input bytes per document, to size the partitions before anything is read


@dataclass(frozen=True)
class StageBLayout:
    """Where stage B's intermediate files live, and how many tasks each stage has."""

    work_dir: str  # the stage-A work dir (its decisions/ folder is the global dedup stages' output)
    out: str
    n_tasks: int  # stage-A tasks
    n_partitions: int  # pack partitions (ranges of the items' sort keys), each with its plan part
    n_writers: int
    concat: bool

    @property
    def root(self) -> str:
        return os.path.join(self.work_dir, "stage_b")

    def part(self, kind: str, rank: int, ext: str = "parquet") -> str:
        return os.path.join(self.root, kind, f"{rank:05d}.{ext}")

    @property
    def n_plan_parts(self) -> int:
        return self.n_partitions

    @property
    def next_shards(self) -> str:
        """New shards are written here; `shards/` keeps the previous build until the swap."""
        return os.path.join(self.out, SHARDS_DIR + ".next")


def plan_layout(ctx: BuildContext) -> StageBLayout:
    """Task counts from the input size (+ at least --workers so a local run is parallel); outputs never depend
    on them."""
    total_bytes = sum(file_size(t.path) or 0 for t in ctx.tasks)
    guess_docs = total_bytes // BYTES_PER_DOC_GUESS
    by_size = max(1, math.ceil(guess_docs / ITEMS_PER_PARTITION))
    concat = ctx.spec.packing.get("mode", "concat") == "concat"
    # concat rows are cut from one global order, so any partition count gives the same rows (use the workers); the
    # other packers pack each partition on its own, so their partition count must come from the data alone
    partitions = max(ctx.opts.workers, by_size) if concat else by_size
    return StageBLayout(work_dir=ctx.work_dir, out=str(ctx.out), n_tasks=len(ctx.tasks),
                        n_partitions=min(partitions, 4096), n_writers=min(max(partitions, ctx.opts.workers), 4096),
                        concat=concat)


def file_size(path: str) -> int | None:
    try:
        import fsspec

        return int(fsspec.core.url_to_fs(path)[0].size(path))
    except Exception:  # size is informative only
        return None


def parse_bytes(size: str) -> int:
    """'1GB' / '512MB' -> bytes (DuckDB's memory_limit notation)."""
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
    size = size.strip().upper().removesuffix("IB").removesuffix("B") + "B"
    for unit, factor in units.items():
        if size.endswith(unit):
            return int(float(size[:-len(unit)]) * factor)
    return int(size[:-1])


def write_parquet(path: str, table: pa.Table, row_group_size: int | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    pq.write_table(table, tmp, row_group_size=row_group_size)
    os.replace(tmp, path)


def pread_into(fd: int, out: np.ndarray, offset: int, what: str) -> None:
    """Fill `out` with the bytes of file `fd` at `offset` (a positional read: no memory map, whose pages would stay in
    the reader's RSS)."""
    view, done = memoryview(out).cast("B"), 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"{what}: shorter than expected (offset {offset + done})")
        done += n


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


# Pack items: one row per document copy (concat) or per document (long / sft), lengths and addresses only.
ITEM_SCHEMA = pa.schema([
    ("sort_key", pa.uint64()),   # concat: position in the global shuffled order; else the key
    ("key", pa.int64()),
    ("copy", pa.int32()),        # concat: the copy; long / sft: -1 (n_copies says how many)
    ("n_copies", pa.int32()),
    ("n_tokens", pa.int64()),
    ("offset", pa.int64()),      # first token of the document in its task's tokens file
    ("source", pa.int32()),      # index into ctx.sources
    ("doc_id", pa.string()),
    ("line", pa.int64()),        # line / row / sample in its input file (mds-rows keeps an MDS sample's documents together)
])

# Per-task documents part: the manifest's `documents` columns before packing outcomes and survivor ids are joined.
DOC_PART_SCHEMA = pa.schema([
    ("key", pa.int64()), ("doc_id", pa.string()), ("source", pa.string()), ("file", pa.string()), ("line", pa.int64()),
    ("n_chars", pa.int64()), ("n_tokens", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
    ("n_copies", pa.int32()), ("duplicate_of_key", pa.int64()), ("detail", pa.string()),
])
# stage-A columns a documents task reads, a batch of rows at a time
APPLY_COLUMNS = ("doc_id", "source", "file", "line", "n_chars", "n_tokens", "status", "reason", "detail", "n_copies",
                 "offset", "contamination")
APPLY_BATCH_ROWS = 1 << 14


def sort_keys(seed: int, keys: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """A uniform 64-bit position per (key, copy) from the seed (splitmix64): the global shuffled order."""
    with np.errstate(over="ignore"):
        x = (keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (copies.astype(np.uint64) << np.uint64(40))
        x ^= np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


class ApplyDecisions(PipelineStep):
    """Task t: stage-A rows of file t + its decisions -> documents / contamination parts and pack items."""

    name = "🧾 apply decisions"
    type = "🔻 - FILTER"

    def __init__(self, ctx: BuildContext, layout: StageBLayout):
        super().__init__()
        self.layout = layout
        self.seed = ctx.seed
        self.shuffle = bool(ctx.spec.packing.get("shuffle", True))
        self.source_index = {s["source"]: i for i, s in enumerate(ctx.sources)}
        self.mode = ctx.spec.packing.get("mode", "concat")

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        """Row group by row group (memory bounded by a batch of rows, whatever the file size); only the pack items
        (~50 B per kept document) are held until the end, to be sorted."""
        lay = self.layout
        if not os.path.exists(decisions_path(lay.work_dir, rank)):  # every task gets one, even when empty
            raise FileNotFoundError(f"{decisions_path(lay.work_dir, rank)}: the decisions stage did not run")
        dec = read_decisions(lay.work_dir, rank).sort_by("idx")
        dec_idx = dec["idx"].to_numpy()
        pf = pq.ParquetFile(intermediate_paths(os.path.join(lay.work_dir, "docs"), rank)[0])
        docs_tmp, contam_tmp = (f"{lay.part(kind, rank)}.tmp.{os.getpid()}" for kind in ("documents", "contamination"))
        os.makedirs(os.path.dirname(docs_tmp), exist_ok=True)
        os.makedirs(os.path.dirname(contam_tmp), exist_ok=True)
        items: list[pa.Table] = []
        row0 = 0
        with pq.ParquetWriter(docs_tmp, DOC_PART_SCHEMA) as docs_out, \
                pq.ParquetWriter(contam_tmp, TABLES["contamination"]) as contam_out:
            for batch in pf.iter_batches(batch_size=APPLY_BATCH_ROWS, columns=list(APPLY_COLUMNS)):
                docs = pa.Table.from_batches([batch])
                lo, hi = np.searchsorted(dec_idx, [row0, row0 + docs.num_rows])
                part, doc_id, status, n_copies = self._apply(docs, dec.slice(lo, hi - lo), rank, row0)
                docs_out.write_table(part)
                contamination = self._contamination(docs, part["doc_id"])
                if contamination.num_rows:
                    contam_out.write_table(contamination)
                items.append(self._items(docs, part["key"].to_numpy(), doc_id, status, n_copies))
                row0 += docs.num_rows
        os.replace(docs_tmp, lay.part("documents", rank))
        os.replace(contam_tmp, lay.part("contamination", rank))
        table = pa.concat_tables(items) if items else ITEM_SCHEMA.empty_table()
        table = table.sort_by([("sort_key", "ascending"), ("key", "ascending"), ("copy", "ascending")])
        write_parquet(lay.part("items", rank), table, row_group_size=65536)
        self.stat_update("documents", value=row0)
        return iter(())

    def _apply(self, docs: pa.Table, dec: pa.Table, task: int, row0: int):
        """The documents part of rows [row0, row0 + len(docs)) of a task, with its decisions applied."""
        n = docs.num_rows
        status = docs["status"].to_numpy(zero_copy_only=False).astype(object)
        reason = docs["reason"].to_numpy(zero_copy_only=False).astype(object)
        n_copies = docs["n_copies"].to_numpy().astype(np.int32)
        doc_id = docs["doc_id"].to_numpy(zero_copy_only=False).astype(object)
        dup_of = np.full(n, -1, dtype=np.int64)
        for i, r, dup, new_id in zip((dec["idx"].to_numpy() - row0).tolist(), dec["reason"].to_pylist(),
                                     dec["duplicate_of"].to_pylist(), dec["doc_id"].to_pylist()):
            if new_id is not None:
                doc_id[i] = new_id
            if r is not None and status[i] == "kept":
                status[i], reason[i], n_copies[i] = "dropped", r, 0
                if dup is not None:
                    dup_of[i] = dup
        keys = doc_key(task, row0) + np.arange(n, dtype=np.int64)
        part = pa.table({
            "key": keys, "doc_id": pa.array(doc_id, pa.string()), "source": docs["source"], "file": docs["file"],
            "line": docs["line"], "n_chars": docs["n_chars"], "n_tokens": docs["n_tokens"],
            "status": pa.array(status, pa.string()), "reason": pa.array(reason, pa.string()),
            "n_copies": pa.array(n_copies, pa.int32()), "duplicate_of_key": pa.array(dup_of, pa.int64(), mask=dup_of < 0),
            "detail": docs["detail"],
        }, schema=DOC_PART_SCHEMA)
        return part, doc_id, status, n_copies

    def _partition_key(self, keys: np.ndarray) -> np.ndarray:
        """Which pack partition a document goes to (by sort-key range). `mds-rows` keeps whole input files together
        and in file order (its rows are the files' samples, in order); the others spread documents uniformly."""
        if self.mode == "mds-rows":
            spacing = (1 << 64) // self.layout.n_tasks if self.layout.n_tasks > 1 else 0  # task t at t * spacing
            return (keys >> 32).astype(np.uint64) * np.uint64(spacing)
        return sort_keys(self.seed, keys, np.zeros(len(keys), np.int64))

    def _contamination(self, docs: pa.Table, doc_id: pa.ChunkedArray) -> pa.Table:
        schema = TABLES["contamination"]
        lists = docs["contamination"].combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
        if lengths.sum() == 0:
            return schema.empty_table()
        parent = np.repeat(np.arange(len(lengths)), lengths)
        flat = pc.list_flatten(lists)
        return pa.table({"doc_id": doc_id.take(pa.array(parent)), "benchmark": flat.field("benchmark"),
                         "item_id": flat.field("item_id"), "n_matches": flat.field("n_matches")}).cast(schema)

    def _items(self, docs: pa.Table, keys: np.ndarray, doc_id: np.ndarray, status: np.ndarray,
               n_copies: np.ndarray) -> pa.Table:
        kept = np.nonzero((status == "kept") & (n_copies > 0))[0]
        n_tok = docs["n_tokens"].to_numpy(zero_copy_only=False)[kept].astype(np.int64)
        offset = docs["offset"].to_numpy()[kept].astype(np.int64)
        src_names = docs["source"].to_numpy(zero_copy_only=False)[kept]
        source = np.array([self.source_index[s] for s in src_names], dtype=np.int32)
        ids = doc_id[kept]
        copies = n_copies[kept].astype(np.int64)
        line = docs["line"].to_numpy(zero_copy_only=False)[kept].astype(np.int64)
        if not self.layout.concat:  # the other packers take one item per document (n_copies says how many)
            cols = {"sort_key": self._partition_key(keys[kept]), "key": keys[kept], "copy": np.full(len(kept), -1),
                    "n_copies": copies, "n_tokens": n_tok, "offset": offset, "source": source, "doc_id": ids,
                    "line": line}
            return pa.table(cols, schema=ITEM_SCHEMA)
        rep = np.repeat(np.arange(len(kept)), copies)
        copy = np.arange(len(rep)) - np.repeat(np.cumsum(copies) - copies, copies)
        k = keys[kept][rep]
        sk = sort_keys(self.seed, k, copy) if self.shuffle else k.astype(np.uint64)
        cols = {"sort_key": sk, "key": k, "copy": copy, "n_copies": copies[rep], "n_tokens": n_tok[rep],
                "offset": offset[rep], "source": source[rep], "doc_id": ids[rep], "line": line[rep]}
        return pa.table(cols, schema=ITEM_SCHEMA)


def stage_b_stages(ctx: BuildContext, decide: list[Stage]) -> list[Stage]:
    """The global stages of a build, in order. `decide` = the stages that write decisions files."""
    from pipelines.manifest import DUCKDB_MEMORY_LIMIT, WriteManifest
    from pipelines.packing import pack_stages
    from pipelines.shards.writer import CHUNK_TOKENS, WriteShards

    lay = plan_layout(ctx)
    stages = list(decide)
    if lay.n_tasks:
        stages.append(Stage("documents", [ApplyDecisions(ctx, lay)], lay.n_tasks,
                            description=f"apply decisions to {lay.n_tasks} files"))
        stages += pack_stages(ctx, lay)
        # a writer holds one chunk of rows (+ mask) and that chunk's plan segments (~100 B per segment)
        chunk_bytes = CHUNK_TOKENS * (token_dtype(ctx.vocab_size).itemsize + ctx.with_mask)
        stages.append(Stage("write_shards", [WriteShards(ctx, lay)], lay.n_writers,
                            description=f"write shards ({lay.n_writers} tasks)",
                            memory_bytes=2 * chunk_bytes + (256 << 20)))
    stages.append(Stage("manifest", [WriteManifest(ctx, lay)], 1, description="manifest and swap",
                        memory_bytes=parse_bytes(DUCKDB_MEMORY_LIMIT) + (256 << 20)))
    return stages


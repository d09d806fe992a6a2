"""The `documents` stage of a build: a stage-A file's rows with the global decisions applied, written as its
manifest `documents`/`contamination` parts and its *pack items* (lengths and addresses of kept copies, no tokens).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.dedup.copies import copy_token_counts
from pipelines.dedup.decisions import decisions_path, doc_key, read_decisions
from pipelines.io import write_parquet
from pipelines.pack.holdout import CANDIDATE_SCHEMA, HoldoutConfig, candidates, smallest_per_source
from pipelines.pack.layout import ITEM_SCHEMA, StageBLayout, by_source_keys, sort_keys
from pipelines.shards.format import TABLES
from pipelines.steps.intermediate import intermediate_paths

if TYPE_CHECKING:
    from pipelines.build.context import BuildContext


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
        self.holdout = HoldoutConfig.from_spec(ctx.spec.holdout, ctx.spec.path) if layout.holdout else None

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
        held = CANDIDATE_SCHEMA.empty_table()  # holdout candidates: at most max_docs per source at any time
        columns = list(APPLY_COLUMNS) + (["n_bytes"] if "n_bytes" in pf.schema_arrow.names else [])
        row0 = 0
        with pq.ParquetWriter(docs_tmp, DOC_PART_SCHEMA) as docs_out, \
                pq.ParquetWriter(contam_tmp, TABLES["contamination"]) as contam_out:
            columns += ["copy_of"] if "copy_of" in pf.schema_arrow.names else []
            for batch in pf.iter_batches(batch_size=APPLY_BATCH_ROWS, columns=columns):
                docs = self._copies_token_counts(pa.Table.from_batches([batch]))
                lo, hi = np.searchsorted(dec_idx, [row0, row0 + docs.num_rows])
                part, doc_id, status, n_copies = self._apply(docs, dec.slice(lo, hi - lo), rank, row0)
                if "copy_of" in docs.column_names:
                    left = np.flatnonzero((status == "kept") & docs["copy_of"].is_valid().to_numpy(zero_copy_only=False))
                    if len(left):  # an untokenized exact copy must have been dropped as exact-dup
                        raise RuntimeError(f"task {rank} row {row0 + left[0]}: an exact copy decided before stage A "
                                           "was kept by global dedup (its tokens were never written)")
                docs_out.write_table(part)
                contamination = self._contamination(docs, part["doc_id"])
                if contamination.num_rows:
                    contam_out.write_table(contamination)
                items.append(self._items(docs, part["key"].to_numpy(), doc_id, status, n_copies))
                if self.holdout is not None:
                    found = candidates(self.holdout, self.seed, docs, part["key"].to_numpy(), doc_id,
                                       (status == "kept") & (n_copies > 0))
                    held = smallest_per_source(pa.concat_tables([held, found]), self.holdout.max_docs)
                row0 += docs.num_rows
        os.replace(docs_tmp, lay.part("documents", rank))
        os.replace(contam_tmp, lay.part("contamination", rank))
        if self.holdout is not None:
            write_parquet(lay.part("holdout_candidates", rank), held)
        table = pa.concat_tables(items) if items else ITEM_SCHEMA.empty_table()
        table = table.sort_by([("sort_key", "ascending"), ("key", "ascending"), ("copy", "ascending")])
        write_parquet(lay.part("items", rank), table, row_group_size=65536)
        self.stat_update("documents", value=row0)
        return iter(())

    def _copies_token_counts(self, docs: pa.Table) -> pa.Table:
        """`n_tokens` of the kept exact copies stage A did not tokenize (`pipelines.dedup.copies`): their
        original's, the count the manifest shows for them in a build that tokenizes everything."""
        if "copy_of" not in docs.column_names or docs["copy_of"].null_count == docs.num_rows:
            return docs
        kept = pc.equal(docs["status"], "kept").to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(docs["copy_of"].is_valid().to_numpy(zero_copy_only=False) & kept)
        if not len(rows):
            return docs
        originals = docs["copy_of"].take(pa.array(rows)).to_numpy().astype(np.int64)
        n_tokens = docs["n_tokens"].to_pylist()
        for row, n in zip(rows.tolist(), copy_token_counts(self.layout.work_dir, originals).tolist()):
            n_tokens[row] = n
        return docs.set_column(docs.column_names.index("n_tokens"), "n_tokens", pa.array(n_tokens, pa.int64()))

    def _apply(self, docs: pa.Table, dec: pa.Table, task: int, row0: int):
        """The documents part of rows [row0, row0 + len(docs)) of a task, with its decisions applied."""
        n = docs.num_rows
        status = docs["status"].to_numpy(zero_copy_only=False).astype(object)
        reason = docs["reason"].to_numpy(zero_copy_only=False).astype(object)
        n_copies = docs["n_copies"].to_numpy().astype(np.int32)
        doc_id = docs["doc_id"].to_numpy(zero_copy_only=False).astype(object)
        detail = docs["detail"].to_numpy(zero_copy_only=False).astype(object)
        dup_of = np.full(n, -1, dtype=np.int64)
        for i, r, dup, new_id, jac in zip((dec["idx"].to_numpy() - row0).tolist(), dec["reason"].to_pylist(),
                                          dec["duplicate_of"].to_pylist(), dec["doc_id"].to_pylist(),
                                          dec["jaccard"].to_pylist()):
            if new_id is not None:
                doc_id[i] = new_id
            if r is not None and status[i] == "kept":
                status[i], reason[i], n_copies[i] = "dropped", r, 0
                if dup is not None:
                    dup_of[i] = dup
                if jac is not None:  # near-dup: why it counted as one
                    detail[i] = f"estimated jaccard {jac:.3f} with duplicate_of (MinHash)"
        keys = doc_key(task, row0) + np.arange(n, dtype=np.int64)
        part = pa.table({
            "key": keys, "doc_id": pa.array(doc_id, pa.string()), "source": docs["source"], "file": docs["file"],
            "line": docs["line"], "n_chars": docs["n_chars"], "n_tokens": docs["n_tokens"],
            "status": pa.array(status, pa.string()), "reason": pa.array(reason, pa.string()),
            "n_copies": pa.array(n_copies, pa.int32()), "duplicate_of_key": pa.array(dup_of, pa.int64(), mask=dup_of < 0),
            "detail": pa.array(detail, pa.string()),
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
        untokenized = kept[~docs["n_tokens"].is_valid().to_numpy(zero_copy_only=False)[kept]]
        if len(untokenized):  # never a silent zero-length document: its tokens were not written
            raise RuntimeError(f"document {doc_id[untokenized[0]]!r} is kept but was never tokenized "
                               "(a stage-A or late_tokens intermediate is incomplete)")
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
        if self.layout.by_source:  # source by source, so that rows can be cut without mixing sources
            sk = by_source_keys(sk, source[rep])
        cols = {"sort_key": sk, "key": k, "copy": copy, "n_copies": copies[rep], "n_tokens": n_tok[rep],
                "offset": offset[rep], "source": source[rep], "doc_id": ids[rep], "line": line[rep]}
        return pa.table(cols, schema=ITEM_SCHEMA)


"""The last stage-A step: a file's tokens to a flat token file and every document's row to Parquet.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)
from pipelines.steps.tasks import FileTask

# Columns of the per-file intermediate table (work/<source>/<rank>.docs.parquet). Optional steps add the
# metadata keys listed in EXTRA_COLUMNS; absent ones are written as nulls.
EXTRA_COLUMNS: dict[str, pa.DataType] = {
    "text_hash": pa.int64(),
    "minhash": pa.list_(pa.int64()),
    "minhash_sig": pa.binary(),  # the whole MinHash signature (uint32 values): candidate pairs are confirmed by it
    "url": pa.string(),
    "contamination": pa.list_(pa.struct([("benchmark", pa.string()), ("item_id", pa.string()), ("n_matches", pa.int64())])),
    "n_bytes": pa.int64(),  # UTF-8 bytes of the text as read
    "copy_of": pa.int64(),  # key of the earlier document this one copies exactly (not tokenized: pipelines.dedup.copies)
}


def intermediate_paths(work_dir: str, rank: int) -> tuple[str, str, str]:
    base = os.path.join(work_dir, f"{rank:05d}")
    return base + ".docs.parquet", base + ".tokens.bin", base + ".mask.bin"


def answer_mask(tokens_len: int, offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """1 for tokens whose characters fall inside an answer span (the EOS after an answer counts as answer)."""
    mask = np.zeros(tokens_len, dtype=np.uint8)
    if not spans:
        return mask
    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    for a, b in spans:
        mask[:-1][(starts >= a) & (starts < b)] = 1
    if spans and spans[-1][1] >= (offsets[-1][1] if offsets else 0):
        mask[-1] = 1
    return mask


# every row of the per-file intermediate table, in this order
INTERMEDIATE_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("source", pa.string()), ("file", pa.string()), ("line", pa.int64()),
    ("n_chars", pa.int64()), ("n_tokens", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("n_copies", pa.int32()), ("offset", pa.int64()),
    *EXTRA_COLUMNS.items(),
])
INTERMEDIATE_ROW_GROUP = 1 << 14  # rows buffered before they go to parquet: stage A's memory, whatever the file size


class WriteIntermediate(PipelineStep):
    """Stream tokens of this file's kept docs to a flat token file (`token_dtype`: uint16 when the vocabulary fits,
    `pipelines.shards.format.token_dtype`) and every doc's row to parquet in row groups of INTERMEDIATE_ROW_GROUP
    (atomically: all three files appear at the end)."""

    name = "💾 write intermediate"
    type = "💽 - WRITER"

    def __init__(self, work_dir: str, tasks: list[FileTask], with_mask: bool = False, token_dtype: str = "uint32"):
        super().__init__()
        self.work_dir = work_dir
        self.tasks = tasks
        self.with_mask = with_mask
        self.token_dtype = np.dtype(token_dtype)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        os.makedirs(self.work_dir, exist_ok=True)
        docs_path, tok_path, mask_path = intermediate_paths(self.work_dir, rank)
        cols: dict[str, list] = {name: [] for name in INTERMEDIATE_SCHEMA.names}
        offset = 0
        with open(tok_path + ".tmp", "wb") as tok_f, open(mask_path + ".tmp", "wb") as mask_f, \
                pq.ParquetWriter(docs_path + ".tmp", INTERMEDIATE_SCHEMA) as rows_f:
            def flush() -> None:
                rows_f.write_table(pa.table(cols, schema=INTERMEDIATE_SCHEMA))
                for values in cols.values():
                    values.clear()

            for doc in data:
                m = doc.metadata
                tokens = m.pop("tokens", None)
                n = 0 if tokens is None else len(tokens)
                if tokens is not None:
                    tok_f.write(tokens.astype(self.token_dtype, copy=False).tobytes())
                    if self.with_mask:
                        mask = m.pop("mask", None)  # a step that builds its own loss mask (SFT chat template)
                        if mask is None:
                            mask = answer_mask(n, m.pop("offsets", []), m.get("answer_spans", []))
                        mask_f.write(mask.tobytes())
                for k, v in (("doc_id", doc.id), ("source", m["source"]), ("file", m["file"]), ("line", m["line"]),
                             ("n_chars", m["n_chars"]), ("n_tokens", n if tokens is not None else None),
                             ("status", m["status"]), ("reason", m["reason"]), ("detail", m.get("detail", "")),
                             ("n_copies", m["n_copies"] if m["status"] == "kept" else 0), ("offset", offset)):
                    cols[k].append(v)
                for k in EXTRA_COLUMNS:
                    cols[k].append(m.get(k))
                offset += n
                if len(cols["doc_id"]) >= INTERMEDIATE_ROW_GROUP:
                    flush()
                yield doc
            if cols["doc_id"]:
                flush()
        # tokens first, the parquet last: a parquet present means this file's intermediates are complete
        os.replace(tok_path + ".tmp", tok_path)
        os.replace(mask_path + ".tmp", mask_path)
        os.replace(docs_path + ".tmp", docs_path)

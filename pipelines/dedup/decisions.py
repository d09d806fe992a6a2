"""Global decisions about stage-A documents: one Parquet file per stage-A task, written by the global dedup stages.

A document is addressed by an integer key `(task << 32) | idx`: `task` is the stage-A task rank (= input file
index), `idx` its row in that task's `*.docs.parquet`. A decision row either drops a kept document (`reason` set:
`exact-dup`, `near-dup`, `url-dup`, `excluded`, ...; `duplicate_of` = key of the surviving document) or only repairs
its id (`reason` null, `doc_id` set: a record id that repeats elsewhere in the build). Every task gets a file, empty
when nothing was decided, so "file missing" always means "stage not run".
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

DECISIONS_DIR = "decisions"
DECISIONS_SCHEMA = pa.schema([
    ("idx", pa.int64()),            # row of the document in its task's docs parquet
    ("reason", pa.string()),        # why a kept document is dropped; null = kept (id repair only)
    ("duplicate_of", pa.int64()),   # key of the cluster's surviving document (dedup reasons only)
    ("doc_id", pa.string()),        # replacement doc_id (only when the record's id repeats in the build)
])


def doc_key(task: int, idx: int) -> int:
    return (task << 32) | idx


def split_key(key: int) -> tuple[int, int]:
    return key >> 32, key & 0xFFFFFFFF


def decisions_path(work_dir: str, task: int) -> str:
    return os.path.join(work_dir, DECISIONS_DIR, f"{task:05d}.parquet")


def write_decisions(work_dir: str, task: int, table: pa.Table) -> None:
    """Atomically write task `task`'s decisions (sorted by idx)."""
    path = decisions_path(work_dir, task)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = table.select(DECISIONS_SCHEMA.names).cast(DECISIONS_SCHEMA).sort_by("idx")
    tmp = f"{path}.tmp.{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_decisions(work_dir: str, task: int) -> pa.Table:
    """Task `task`'s decisions; an empty table when the global stages decided nothing (or did not run)."""
    path = decisions_path(work_dir, task)
    if not os.path.exists(path):
        return DECISIONS_SCHEMA.empty_table()
    return pq.read_table(path, schema=DECISIONS_SCHEMA)

"""Reading a finished build (the trainer's side of the format): the manifest, memory-mapped shards, per-shard indexes.

Only `pipelines.shards` is imported, so a trainer needs nothing else of the builder.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from pipelines.shards.format import MANIFEST, index_path_of, mask_path_of


def connect(out: str | Path) -> duckdb.DuckDBPyConnection:
    """The build's manifest, read-only; FileNotFoundError when the build is missing or not finished."""
    path = Path(out) / MANIFEST
    if not path.exists():
        hint = " (a build was interrupted while swapping: `verify` or the next build restores it)" \
            if (Path(out) / (MANIFEST + ".prev")).exists() else ""
        raise FileNotFoundError(f"no manifest at {path}: the build is missing or did not finish{hint}")
    return duckdb.connect(str(path), read_only=True)


def open_shard(out: str | Path, shard: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(tokens [n_rows, seq_len], loss mask or None) of `shard` (a `shards.path`), memory-mapped."""
    tokens = np.load(Path(out) / shard, mmap_mode="r")
    mask_path = Path(out) / mask_path_of(shard)
    return tokens, (np.load(mask_path, mmap_mode="r") if mask_path.exists() else None)


def read_index(out: str | Path, shard: str) -> pa.Table:
    """The segments of one shard (`INDEX_SCHEMA`), sorted by row, start."""
    with pa.memory_map(str(Path(out) / index_path_of(shard))) as source:
        return pa.ipc.open_file(source).read_all()

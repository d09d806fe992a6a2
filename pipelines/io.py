"""File helpers every stage shares, one home each: atomic writes (bytes, JSON, Parquet), positional reads, sizes.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import _logging  # noqa: F401  (quiet datatrove console in every worker)

if TYPE_CHECKING:
    pass



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

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


# ------------------------------------------------------------------------------------------ a full disk (issue 20)

DISK_FULL_TEXT = ("No space left on device", "[Errno 28]", "Disk quota exceeded", "unexpected pos")


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception, one it wraps, or a failed stage's message (worker errors arrive as text) comes from
    a full disk (ENOSPC / EDQUOT)."""
    import errno

    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(e) for t in DISK_FULL_TEXT):
            return True
        stack += [e.__cause__, e.__context__]
    return False


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent)."""
    import shutil
    from pathlib import Path

    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def remove_partial_files(root: str | os.PathLike) -> list[str]:
    """Delete the temporaries of interrupted atomic writes under `root` (`*.tmp*`, `*.partial-*`): never part of
    a finished file, and on a full disk the space they hold is what the user needs back. Returns what went."""
    import shutil
    from pathlib import Path

    gone = []
    for p in sorted(Path(root).rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if ".tmp" in p.name or ".partial-" in p.name:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(str(p))
    return gone

"""File helpers every stage shares, one home each: atomic writes (bytes, text, JSON, .npy, Parquet), positional
reads, sizes, file hashes and JSON-lines reading.

Atomic = written to `<path>.tmp.<pid>` and renamed into place, so a reader (or a resumed run) sees the whole file or
none of it. Streaming writers that cannot hold their output (shards, stage-A intermediates) follow the same rule with
their own temporary names.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def tmp_path_for(path: str | Path) -> str:
    """The temporary name a file is written under before its rename (unique per process)."""
    return f"{path}.tmp.{os.getpid()}"


def _publish(tmp: str, path: str | Path) -> None:
    os.replace(tmp, path)


def _make_parent(path: str | Path) -> None:
    parent = os.path.dirname(str(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _make_parent(path)
    tmp = tmp_path_for(path)
    with open(tmp, "wb") as f:
        f.write(data)
    _publish(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    _make_parent(path)
    tmp = tmp_path_for(path)
    with open(tmp, "wb") as f:
        np.save(f, arr)
    _publish(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj))


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_parquet(path: str | Path, table: pa.Table, row_group_size: int | None = None) -> None:
    _make_parent(path)
    tmp = tmp_path_for(path)
    pq.write_table(table, tmp, row_group_size=row_group_size)
    _publish(tmp, path)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) of every non-blank line of a JSON-lines file (plain, .gz or .zst through
    fsspec's compression inference); ValueError naming `file:line` on a line that is not JSON."""
    import fsspec

    with fsspec.open(str(path), "rt", encoding="utf-8", compression="infer") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON ({e.msg})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def pread_into(fd: int, out: np.ndarray, offset: int, what: str) -> None:
    """Fill `out` with the bytes of file `fd` at `offset` (a positional read: no memory map, whose pages would stay in
    the reader's RSS)."""
    view, done = memoryview(out).cast("B"), 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"{what}: shorter than expected (offset {offset + done})")
        done += n


# ------------------------------------------------------------------------------------------ a full disk (issue 20)

DISK_FULL_TEXT = ("No space left on device", "[Errno 28]", "Disk quota exceeded", "unexpected pos")
# numpy's `ndarray.tofile` (under np.save) reports a short write as a bare OSError with no errno
_SHORT_WRITE = re.compile(r"\b\d+ requested and \d+ written\b")


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
        text = str(e)
        if any(t in text for t in DISK_FULL_TEXT) or _SHORT_WRITE.search(text):
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


def _is_partial(name: str) -> bool:
    return ".tmp" in name or ".partial-" in name or name.endswith(".partial")


def remove_partial_files(root: str | os.PathLike) -> list[str]:
    """Delete the temporaries of interrupted atomic writes under `root` (`*.tmp*`, `*.partial-*`): never part of
    a finished file, and on a full disk the space they hold is what the user needs back (`*.partial`: a directory
    being assembled, e.g. the decontamination index). Returns what went."""
    import shutil
    from pathlib import Path

    gone = []
    for p in sorted(Path(root).rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if _is_partial(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(str(p))
    return gone

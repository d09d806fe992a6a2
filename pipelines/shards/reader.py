"""Reading a finished build's manifest (the trainer's side of the format; shard files and their indexes are opened
by `trainer/data_index.py` with the names of `pipelines.shards.format`).

Only `pipelines.shards` is imported, so a trainer needs nothing else of the builder.
"""
from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.shards.format import MANIFEST


def connect(out: str | Path) -> duckdb.DuckDBPyConnection:
    """The build's manifest, read-only; FileNotFoundError when the build is missing or not finished."""
    path = Path(out) / MANIFEST
    if not path.exists():
        hint = " (a build was interrupted while swapping: `verify` or the next build restores it)" \
            if (Path(out) / (MANIFEST + ".prev")).exists() else ""
        raise FileNotFoundError(f"no manifest at {path}: the build is missing or did not finish{hint}")
    return duckdb.connect(str(path), read_only=True)


def format_version(con: duckdb.DuckDBPyConnection) -> int:
    """The manifest's `build.format_version`; 1 for manifests written before the column existed."""
    has_column = con.execute("select count(*) from information_schema.columns where table_name = 'build' "
                             "and column_name = 'format_version'").fetchone()[0]
    return int(con.execute("select format_version from build").fetchone()[0]) if has_column else 1

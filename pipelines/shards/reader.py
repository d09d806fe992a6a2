"""Reading a finished build's manifest (the trainer's side of the format; shard files and their indexes are opened
by `trainer/data_index.py` with the names of `pipelines.shards.format`).

Only `pipelines.shards` is imported, so a trainer needs nothing else of the builder.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from pipelines.shards.format import MANIFEST, VERIFIED_MARKER, file_stats, index_path_of, mask_path_of

HASH_COLUMNS = ("sha256", "index_sha256", "mask_sha256")  # shard, index, mask hashes (the last two since issue 20)


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


# ------------------------------------------------------------------------- the identity of a build (issue 20)


@dataclass(frozen=True)
class BuildFingerprint:
    """Identity of a build's content: its spec hash and every file the trainer reads, by hash (from the manifest)."""

    fingerprint: str  # sha256 over spec_hash and (path, hashes) of every shard
    spec_hash: str
    n_shards: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ShardRecord:
    path: str
    n_rows: int
    n_segments: int | None
    hashes: dict[str, str | None]  # column -> hash (None where the build did not record it)


def _columns(con, table: str) -> set[str]:
    return {r[0] for r in con.execute("select column_name from information_schema.columns where table_name = ?",
                                      [table]).fetchall()}


def read_shard_records(build: str | Path) -> tuple[str, str, bool, list[ShardRecord]]:
    """(spec_hash, dtype, has_loss_mask, shards) from the manifest; only the small `build` and `shards` tables."""
    con = connect(build)
    try:
        bcols, scols = _columns(con, "build"), _columns(con, "shards")
        spec_hash, dtype = con.execute("select spec_hash, dtype from build").fetchone()
        has_mask = bool(con.execute("select has_loss_mask from build").fetchone()[0]) \
            if "has_loss_mask" in bcols else False
        hash_cols = [c for c in HASH_COLUMNS if c in scols]
        seg = "n_segments" if "n_segments" in scols else "null"
        rows = con.execute(f"select path, n_rows, {seg}, {', '.join(hash_cols)} from shards order by path").fetchall()
    finally:
        con.close()
    shards = [ShardRecord(r[0], int(r[1]), None if r[2] is None else int(r[2]),
                          {c: r[3 + i] for i, c in enumerate(hash_cols)}) for r in rows]
    return str(spec_hash), str(dtype), has_mask, shards


def build_fingerprint(build: str | Path) -> BuildFingerprint:
    spec_hash, _, _, shards = read_shard_records(build)
    h = hashlib.sha256(f"spec {spec_hash}\n".encode())
    for s in shards:
        h.update(f"{s.path} {s.n_rows} {json.dumps(s.hashes, sort_keys=True)}\n".encode())
    return BuildFingerprint(h.hexdigest(), spec_hash, len(shards))


def trainer_files(build: str | Path) -> list[str]:
    """Every file of a build the trainer reads, relative to the build: shards, their indexes and masks."""
    build = Path(build)
    _, _, _, shards = read_shard_records(build)
    rels = []
    for s in shards:
        rels += [s.path, str(index_path_of(s.path))]
        if (build / mask_path_of(s.path)).exists():
            rels.append(str(mask_path_of(s.path)))
    return rels


def write_verified_marker(build: str | Path) -> Path:
    """Record that `verify` passed (written by `cli.py verify`; here for tests and tools): the fingerprint and the
    size and mtime of every file the trainer reads."""
    build = Path(build)
    marker = {"fingerprint": build_fingerprint(build).fingerprint, "files": file_stats(build, trainer_files(build))}
    tmp = build / (VERIFIED_MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, build / VERIFIED_MARKER)
    return build / VERIFIED_MARKER



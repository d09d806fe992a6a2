"""`verify OUT`: re-hash every file the trainer reads and reconcile every count of the manifest.

Shards are checked in blocks by a process pool (sha256 of the .npy, its .idx.arrow and .mask.npy, dtype and shape of
the .npy, rows and tokens of the index against the manifest's per-shard counts), each worker holding one shard's
index at a time. Then, as DuckDB queries (out of core): every count table (`shards`, `shard_sources`, `files`,
`sources`) is reconciled against `documents`/`segments`, and every table's content against the digest the build
recorded (`build.tables_sha256`), which catches what no count can (a changed drop reason, an edited seed).
Problems name the file or the table. A passing verify leaves `verified.json` (the trainer's cheap check that no
file changed since, trainer/integrity.py).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import pyarrow.parquet as pq

from pipelines.shards.format import (
    DIGESTED_TABLES,
    HOLDOUT_INDEX_SCHEMA,
    holdout_index_name,
    index_path_of,
    mask_path_of,
    sha256_file,
    table_digests,
)
from pipelines.shards.reader import connect
from pipelines.shards.swap import recover_interrupted_swap

SHARDS_PER_BLOCK = 16


def check_shard(out: Path, shard: dict, seq_len: int, dtype: str, n_segments: int, seg_tokens: int,
                has_mask: bool) -> list[str]:
    """Problems of one shard, each naming it."""
    path = shard["path"]
    f = out / path
    if not f.exists():
        return [f"{path}: missing"]
    problems = []
    if sha256_file(f) != shard["sha256"]:
        problems.append(f"{path}: sha256 differs from the manifest")
    try:
        arr = np.load(f, mmap_mode="r")
    except ValueError as e:  # truncated or not an .npy
        return problems + [f"{path}: unreadable ({e})"]
    if arr.shape != (shard["n_rows"], seq_len):
        problems.append(f"{path}: shape {arr.shape}, manifest says ({shard['n_rows']}, {seq_len})")
    if arr.dtype != np.dtype(dtype):
        problems.append(f"{path}: dtype {arr.dtype}, manifest says {dtype}")
    if arr.size != shard["n_tokens"]:
        problems.append(f"{path}: {arr.size} tokens, manifest says {shard['n_tokens']}")
    if has_mask and not (out / mask_path_of(path)).exists():
        problems.append(f"{path}: loss mask {mask_path_of(path)} missing")
    for rel, col in ((index_path_of(path), "index_sha256"), (mask_path_of(path), "mask_sha256")):
        want = shard.get(col)
        if want and (out / rel).exists() and sha256_file(out / rel) != want:
            problems.append(f"{rel}: sha256 differs from the manifest (shards.{col})")
    idx_path = out / index_path_of(path)
    try:
        idx = pa.ipc.open_file(str(idx_path)).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        return problems + [f"{path}: index {index_path_of(path)} unreadable ({e})"]
    if idx.num_rows != n_segments:
        problems.append(f"{path}: index has {idx.num_rows} segments, manifest {n_segments}")
    covered = int(pc.sum(idx["length"]).as_py() or 0)
    if covered != seg_tokens or shard["n_tokens"] - shard["n_pad"] != seg_tokens:
        problems.append(f"{path}: index covers {covered} tokens, manifest segments {seg_tokens}, "
                        f"n_tokens - n_pad = {shard['n_tokens'] - shard['n_pad']}")
    return problems


def _check_block(args) -> list[str]:
    out, block, seq_len, dtype, has_mask = args
    problems = []
    for shard, n_seg, seg_tok in block:
        problems += check_shard(out, shard, seq_len, dtype, n_seg, seg_tok, has_mask)
    return problems


def verify_build(out: str | Path, workers: int | None = None) -> list[str]:
    """Return a list of problems (empty when the build is consistent)."""
    out = Path(out)
    recover_interrupted_swap(out)
    con = connect(out)
    problems: list[str] = []
    seq_len, dtype, has_mask = con.execute("SELECT seq_len, dtype, has_loss_mask FROM build").fetchone()
    shard_cols = _columns(con, "shards")
    hashes = ", ".join(c if c in shard_cols else f"NULL AS {c}" for c in ("index_sha256", "mask_sha256"))
    rows = con.execute(f"""
        SELECT s.path, s.n_rows, s.n_tokens, s.n_pad, s.sha256, {hashes}, coalesce(g.n, 0), coalesce(g.tokens, 0)
        FROM shards s LEFT JOIN (SELECT shard, count(*) AS n, sum(length)::BIGINT AS tokens FROM segments
                                 GROUP BY shard) g ON g.shard = s.path
        ORDER BY s.path""").fetchall()
    shards = [({"path": p, "n_rows": r, "n_tokens": t, "n_pad": pad, "sha256": sha, "index_sha256": isha,
                "mask_sha256": msha}, n, tok)
              for p, r, t, pad, sha, isha, msha, n, tok in rows]
    blocks = [(out, shards[i:i + SHARDS_PER_BLOCK], seq_len, dtype, bool(has_mask))
              for i in range(0, len(shards), SHARDS_PER_BLOCK)]
    workers = workers or min(len(blocks), os.cpu_count() or 1)
    if workers <= 1 or len(blocks) <= 1:
        for b in blocks:
            problems += _check_block(b)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for found in pool.map(_check_block, blocks):
                problems += found

    n_docs, n_kept, n_dropped, n_held = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE status='kept'), count(*) FILTER (WHERE status='dropped'), "
        "count(*) FILTER (WHERE status='holdout') FROM documents").fetchone()
    if n_docs != n_kept + n_dropped + n_held:
        problems.append(f"documents: {n_docs} read != {n_kept} kept + {n_dropped} dropped + {n_held} held out")
    problems += check_holdout(out, con, n_held)
    total_tokens, total_pad = con.execute(
        "SELECT coalesce(sum(n_tokens), 0), coalesce(sum(n_pad), 0) FROM shards").fetchone()
    seg_tokens, = con.execute("SELECT coalesce(sum(length), 0) FROM segments").fetchone()
    if total_tokens - total_pad != seg_tokens:
        problems.append(f"shard tokens {total_tokens} - padding {total_pad} != Σ segments.length {seg_tokens}")
    # whole-document packers place every token of every copy; window packers (long context) record doc_start
    whole, = con.execute(
        "SELECT coalesce(sum(n_tokens * n_copies), 0) FROM documents WHERE status = 'kept'").fetchone()
    packing, = con.execute("SELECT packing FROM build").fetchone()
    if json.loads(packing or "{}").get("mode", "concat") == "concat" and whole != seg_tokens:
        problems.append(f"Σ kept n_tokens × n_copies {whole} != Σ segments.length {seg_tokens}")
    bad, = con.execute(
        f"SELECT count(*) FROM segments WHERE start < 0 OR length <= 0 OR start + length > {seq_len}").fetchone()
    if bad:
        problems.append(f"{bad} segments fall outside their row")
    overlap, = con.execute("""
        SELECT count(*) FROM (
            SELECT start, length, lag(start + length) OVER (PARTITION BY shard, row ORDER BY start) AS prev_end
            FROM segments) WHERE prev_end > start""").fetchone()
    if overlap:
        problems.append(f"{overlap} segments overlap another in the same row")
    orphans, = con.execute(
        "SELECT count(*) FROM segments s ANTI JOIN documents d ON s.doc_id = d.doc_id AND d.status = 'kept'").fetchone()
    if orphans:
        problems.append(f"{orphans} segments belong to no kept document")
    problems += reconcile_counts(con) + check_digests(con)
    con.close()
    return problems


def _columns(con, table: str) -> set[str]:
    return {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                                      [table]).fetchall()}


# each query returns the rows where a count table disagrees with what documents/segments say
RECONCILE = {
    "shards": """
        SELECT s.path, s.n_segments, coalesce(g.n, 0) FROM shards s
        LEFT JOIN (SELECT shard, count(*) AS n FROM segments GROUP BY shard) g ON g.shard = s.path
        WHERE s.n_segments IS DISTINCT FROM coalesce(g.n, 0)""",
    "shard_sources": """
        WITH seg AS (SELECT s.shard, d.source, sum(s.length)::BIGINT AS n_tokens
                     FROM segments s JOIN documents d USING (doc_id) GROUP BY ALL)
        SELECT coalesce(a.shard, b.shard) || ' / ' || coalesce(a.source, b.source), a.n_tokens, b.n_tokens
        FROM shard_sources a FULL JOIN seg b ON a.shard = b.shard AND a.source = b.source
        WHERE a.n_tokens IS DISTINCT FROM b.n_tokens""",
    "files": """
        WITH d AS (SELECT source, file, count(*) AS n_records, count(*) FILTER (WHERE status = 'kept') AS n_kept,
                          count(*) FILTER (WHERE status = 'dropped') AS n_dropped FROM documents GROUP BY ALL)
        SELECT f.source || ' ' || f.file, [f.n_records, f.n_kept, f.n_dropped],
               [coalesce(d.n_records, 0), coalesce(d.n_kept, 0), coalesce(d.n_dropped, 0)]
        FROM files f LEFT JOIN d USING (source, file)
        WHERE [f.n_records, f.n_kept, f.n_dropped] <> [coalesce(d.n_records, 0), coalesce(d.n_kept, 0),
                                                      coalesce(d.n_dropped, 0)]""",
    "sources": """
        WITH d AS (SELECT source, count(*) AS n_docs FROM documents GROUP BY source),
             f AS (SELECT source, count(*) AS n_files FROM files GROUP BY source)
        SELECT s.source, [s.n_docs, s.n_files], [coalesce(d.n_docs, 0), coalesce(f.n_files, 0)]
        FROM sources s LEFT JOIN d USING (source) LEFT JOIN f USING (source)
        WHERE [s.n_docs, s.n_files] <> [coalesce(d.n_docs, 0), coalesce(f.n_files, 0)]""",
}
RECONCILE_WHAT = {"shards": "n_segments vs segments", "shard_sources": "n_tokens vs Σ segments.length per source",
                  "files": "[n_records, n_kept, n_dropped] vs documents",
                  "sources": "[n_docs, n_files] vs documents and files"}


def reconcile_counts(con) -> list[str]:
    """Every count table against documents/segments; one problem per table, naming it and the first bad row."""
    problems = []
    for table, query in RECONCILE.items():
        bad = con.execute(query).fetchall()
        if bad:
            what, stored, actual = bad[0]
            more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
            problems.append(f"table {table}: {what}: {RECONCILE_WHAT[table]} is {stored}, documents/segments say "
                            f"{actual}{more}")
    return problems


def check_digests(con) -> list[str]:
    """Every table's content against the digest recorded when the build was written (builds before issue 20
    recorded none)."""
    if "tables_sha256" not in _columns(con, "build"):
        return []
    stored, = con.execute("SELECT tables_sha256 FROM build").fetchone()
    if not stored:
        return ["table build: tables_sha256 is empty (the manifest was edited, or written by an unfinished build)"]
    try:
        want = json.loads(stored)
    except ValueError:
        return ["table build: tables_sha256 is not JSON (the manifest was edited)"]
    now = table_digests(con)
    return [f"table {name}: content differs from the digest recorded when the build was written "
            f"(build.tables_sha256: {want.get(name)} vs {now[name]}); the manifest was edited after the build"
            for name in DIGESTED_TABLES if want.get(name) != now[name]]


def check_holdout(out: Path, con, n_held: int) -> list[str]:
    """Held-out documents are in no training row, and their files match the manifest's `holdout` table: sha256,
    token count, the index's documents = the documents with status 'holdout', each ending with EOS."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "holdout" not in tables:
        return [f"documents: {n_held} held out but the manifest has no holdout table"] if n_held else []
    problems = []
    leaked = con.execute("""
        SELECT count(DISTINCT s.doc_id), min(s.doc_id) FROM segments s
        JOIN documents d ON d.doc_id = s.doc_id AND d.status = 'holdout'""").fetchall()[0]
    if leaked[0]:
        problems.append(f"{leaked[0]} held-out documents are in training rows (e.g. {leaked[1]})")
    eos_id, = con.execute("SELECT eos_id FROM build").fetchall()[0]
    listed = 0
    for source, path, n_docs, n_tokens, sha in con.execute(
            "SELECT source, path, n_docs, n_tokens, sha256 FROM holdout ORDER BY source").fetchall():
        listed += n_docs
        f, idx_path = out / path, out / Path(path).parent / holdout_index_name(source)
        if not f.exists() or not idx_path.exists():
            problems.append(f"{path}: missing" if not f.exists() else f"{idx_path.relative_to(out)}: missing")
            continue
        if sha256_file(f) != sha:
            problems.append(f"{path}: sha256 differs from the manifest")
            continue
        tokens = np.load(f, mmap_mode="r")
        idx = pq.read_table(idx_path)
        if tokens.ndim != 1 or len(tokens) != n_tokens:
            problems.append(f"{path}: {tokens.shape} tokens, manifest says {n_tokens}")
        if idx.schema.names != HOLDOUT_INDEX_SCHEMA.names or idx.num_rows != n_docs:
            problems.append(f"{idx_path.relative_to(out)}: {idx.num_rows} rows / columns {idx.schema.names}, "
                            f"manifest says {n_docs} documents")
            continue
        start, length = idx["start"].to_numpy(), idx["length"].to_numpy()
        if len(start) and (start[0] != 0 or np.any(start[1:] != start[:-1] + length[:-1])
                           or start[-1] + length[-1] != len(tokens)):
            problems.append(f"{idx_path.relative_to(out)}: documents do not tile {path}")
        elif len(start) and np.any(tokens[start + length - 1] != eos_id):
            problems.append(f"{path}: a held-out document does not end with EOS")
        con.register("held_idx", idx.select(["doc_id"]))
        stray, = con.execute("""SELECT count(*) FROM held_idx h ANTI JOIN documents d
                                ON d.doc_id = h.doc_id AND d.status = 'holdout' AND d.source = ?""",
                             [source]).fetchall()[0]
        con.unregister("held_idx")
        if stray:
            problems.append(f"{idx_path.relative_to(out)}: {stray} documents are not held-out documents of {source}")
    if listed != n_held:
        problems.append(f"holdout: the files list {listed} documents, the manifest holds out {n_held}")
    return problems

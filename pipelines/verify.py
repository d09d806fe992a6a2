"""`verify OUT`: re-hash shards and reconcile the manifest's counts with the files on disk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.build import _sha256_file
from pipelines.manifest import connect


def verify_build(out: str | Path) -> list[str]:
    """Return a list of problems (empty when the build is consistent)."""
    out = Path(out)
    con = connect(out)
    problems: list[str] = []
    seq_len, = con.execute("SELECT seq_len FROM build").fetchone()

    total_file_tokens = total_pad = 0
    for path, n_rows, n_tokens, n_pad, sha in con.execute(
            "SELECT path, n_rows, n_tokens, n_pad, sha256 FROM shards ORDER BY path").fetchall():
        f = out / path
        if not f.exists():
            problems.append(f"{path}: missing")
            continue
        if _sha256_file(f) != sha:
            problems.append(f"{path}: sha256 differs from the manifest")
        arr = np.load(f, mmap_mode="r")
        if arr.shape != (n_rows, seq_len):
            problems.append(f"{path}: shape {arr.shape}, manifest says ({n_rows}, {seq_len})")
        if arr.size != n_tokens:
            problems.append(f"{path}: {arr.size} tokens, manifest says {n_tokens}")
        idx = pa.ipc.open_file(str(f).replace(".npy", ".idx.arrow")).read_all()
        n_idx, = con.execute("SELECT count(*) FROM segments WHERE shard = ?", [path]).fetchone()
        if idx.num_rows != n_idx:
            problems.append(f"{path}: index has {idx.num_rows} segments, manifest {n_idx}")
        total_file_tokens += arr.size
        total_pad += n_pad

    n_docs, n_kept, n_dropped = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE status='kept'), count(*) FILTER (WHERE status='dropped') FROM documents"
    ).fetchone()
    if n_docs != n_kept + n_dropped:
        problems.append(f"documents: {n_docs} read != {n_kept} kept + {n_dropped} dropped")
    seg_tokens, = con.execute("SELECT coalesce(sum(length), 0) FROM segments").fetchone()
    if total_file_tokens - total_pad != seg_tokens:
        problems.append(f"shard tokens {total_file_tokens} - padding {total_pad} != Σ segments.length {seg_tokens}")
    # whole-document packers place every token of every copy; window packers (long context) record doc_start
    whole, = con.execute(
        "SELECT coalesce(sum(n_tokens * n_copies), 0) FROM documents WHERE status = 'kept'").fetchone()
    packing, = con.execute("SELECT packing FROM build").fetchone()
    if '"concat"' in packing and whole != seg_tokens:
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
    con.close()
    return problems

"""Issue 20, defect 5: `verify` reports every tampering the trainer or a reader of the manifest would be fooled by,
naming the file or the table."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _verify(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "verify", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _swap_two_segment_lengths(out: Path) -> None:
    """Two neighbouring documents of one row trade lengths (starts moved so the row is still tiled): same rows,
    same token sum, wrong document boundaries."""
    path = out / "shards" / "shard-00000.idx.arrow"
    table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()  # in memory: the file is rewritten
    rows, lengths = table["row"].to_pylist(), table["length"].to_pylist()
    i = next(i for i in range(len(rows) - 1) if rows[i] == rows[i + 1] and lengths[i] != lengths[i + 1])
    starts = table["start"].to_pylist()
    lengths[i], lengths[i + 1] = lengths[i + 1], lengths[i]
    starts[i + 1] = starts[i] + lengths[i]
    table = table.set_column(table.schema.get_field_index("length"), "length", pa.array(lengths, pa.int64()))
    table = table.set_column(table.schema.get_field_index("start"), "start", pa.array(starts, pa.int64()))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


EDITS = {
    "shard_sources": """UPDATE shard_sources SET n_tokens = n_tokens + CASE WHEN source = (SELECT min(source) FROM
                        shard_sources) THEN 7 ELSE 0 END""",
    "files": """UPDATE files SET n_kept = n_kept + 1, n_dropped = n_dropped - 1
                WHERE file = (SELECT min(file) FROM files WHERE n_dropped > 0)""",
    "sources": "UPDATE sources SET n_docs = n_docs + 1 WHERE source = (SELECT min(source) FROM sources)",
    "documents": """UPDATE documents SET reason = 'too-short'
                    WHERE doc_id = (SELECT min(doc_id) FROM documents WHERE status = 'dropped'
                                    AND reason <> 'too-short')""",
    "build": "UPDATE build SET seed = seed + 1",
}


@pytest.mark.parametrize("what", ["index", *EDITS])
def test_verify_names_each_tampering(stage2_build, tmp_path, what):
    out = tmp_path / "out"
    shutil.copytree(stage2_build, out, ignore=shutil.ignore_patterns("work"))
    assert _verify(out).returncode == 0
    if what == "index":
        _swap_two_segment_lengths(out)
        needle = "shard-00000.idx.arrow"
    else:
        with duckdb.connect(str(out / "manifest.duckdb")) as con:
            con.execute(EDITS[what])
        needle = what
    res = _verify(out)
    text = res.stdout + res.stderr
    assert res.returncode != 0, text  # old code: exit 0, "every count reconciles"
    assert needle in text, text

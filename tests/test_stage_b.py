"""Stage B as bounded stages: byte-identical shards for any worker (= partition / writer) count, the --max-tokens cap
across partitions, `verify` catching damaged shards, and a failed stage B leaving the previous build usable."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import TOKENIZER, build
from tokenizers import Tokenizer
from typer.testing import CliRunner

from pipelines.shards.verify import verify_build

N_DOCS = 1500


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """4 JSONL files of short random-word documents, with a few exact and near copies planted in later files."""
    root = tmp_path_factory.mktemp("stageb")
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(20, 400))) for _ in range(N_DOCS)]
    lines: list[list[str]] = [[] for _ in range(4)]
    for i, t in enumerate(texts):
        lines[i * 4 // N_DOCS].append(json.dumps({"id": f"d{i}", "text": t}))
    for j in range(10):  # copies of docs of the first file, in the last file
        lines[3].append(json.dumps({"id": f"exact{j}", "text": texts[j]}))
        lines[3].append(json.dumps({"id": f"near{j}", "text": texts[20 + j] + " extra"}))
    (root / "corpus").mkdir()
    for f, ls in enumerate(lines):
        (root / "corpus" / f"part-{f}.jsonl").write_text("\n".join(ls) + "\n")
    spec = root / "spec.yaml"
    spec.write_text(f"""name: stageb
description: stage-B test corpus
seq_len: 512
shard_tokens: 16384
tokenizer: {TOKENIZER}
seed: 3
dedup: {{exact: true, minhash: true, url: false}}
sources:
  - {{name: a, uri: "{root}/corpus/part-[01].jsonl"}}
  - {{name: b, uri: "{root}/corpus/part-[23].jsonl", sample: 1.5}}
""")
    return spec


def plan_of(spec: Path, out: Path) -> list:
    from pipelines.build.context import prepare
    from pipelines.build.options import BuildOptions
    from pipelines.build.run import plan_stages
    from pipelines.build.spec import load_spec

    return plan_stages(prepare(load_spec(str(spec)), BuildOptions(out=str(out), workers=3, progress=False)))


def hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").iterdir())}


def q(out: Path, sql: str):
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def one_worker(corpus: Path, tmp_path_factory) -> Path:
    return build(corpus, tmp_path_factory.mktemp("w1") / "out", workers=1)


def test_worker_count_does_not_change_a_byte(one_worker: Path, corpus: Path, tmp_path: Path, monkeypatch):
    from pipelines.build import run as build_module

    plan = plan_of(corpus, tmp_path / "plan")
    assert [s.name for s in plan[:4]] == ["copies_sign", "copies_buckets", "copies_decide", "stage_a"]
    # a small build: the global stages run in-process, the per-file passes over the input in worker pools
    assert [s.in_process for s in plan] == [False, True, True, False] + [True] * (len(plan) - 4)
    monkeypatch.setattr(build_module, "IN_PROCESS_BELOW_BYTES", 0)  # ... here in pools of 3 worker processes
    assert not any(s.in_process for s in plan_of(corpus, tmp_path / "plan"))
    three = build(corpus, tmp_path / "w3", workers=3)  # 3 partitions and 3 shard writers instead of 1
    assert len(hashes(one_worker)) > 6  # several shards, so rows straddle partitions and writer blocks
    assert hashes(three) == hashes(one_worker)
    for sql in ("SELECT * EXCLUDE (key) FROM documents ORDER BY key", "SELECT * FROM segments",
                "SELECT * FROM shards ORDER BY path", "SELECT * FROM composition"):
        assert q(three, sql) == q(one_worker, sql), sql
    assert verify_build(three) == []


def test_batch_sizes_do_not_change_a_byte(one_worker: Path, corpus: Path, tmp_path: Path, monkeypatch):
    """Every per-file and writer step works a batch at a time (memory bounded by a batch, never by a file or a
    shard): tiny batches, several per file and per shard, must give the same build."""
    from pipelines.dedup import global_stages as dedup_stages
    from pipelines.pack import items
    from pipelines.shards import writer
    from pipelines.steps import intermediate

    monkeypatch.setattr(intermediate, "INTERMEDIATE_ROW_GROUP", 37)  # stage-A rows per parquet row group
    monkeypatch.setattr(dedup_stages, "SIGN_RUN_DOCS", 50)  # documents per sorted dedup-sign run
    monkeypatch.setattr(items, "APPLY_BATCH_ROWS", 41)  # rows per batch when decisions are applied
    monkeypatch.setattr(writer, "CHUNK_TOKENS", 3 * 512)  # 3 rows per writer chunk; shards hold 32 rows
    small = build(corpus, tmp_path / "small", workers=1)
    assert hashes(small) == hashes(one_worker)
    import pyarrow.parquet as pq
    work = next((small / "work").glob("*/docs/00000.docs.parquet"))
    assert pq.ParquetFile(work).num_row_groups > 1
    for sql in ("SELECT * EXCLUDE (key) FROM documents ORDER BY key", "SELECT * FROM segments",
                "SELECT * FROM shards ORDER BY path", "SELECT * FROM composition"):
        assert q(small, sql) == q(one_worker, sql), sql
    assert verify_build(small) == []


def test_planted_copies_removed_and_text_round_trips(one_worker: Path):
    dropped = dict(q(one_worker, "SELECT doc_id, reason FROM documents WHERE status = 'dropped'"))
    assert dropped == {**{f"exact{j}": "exact-dup" for j in range(10)}, **{f"near{j}": "near-dup" for j in range(10)}}
    dup = dict(q(one_worker, "SELECT doc_id, duplicate_of FROM documents WHERE duplicate_of IS NOT NULL"))
    assert dup["exact3"] == "d3" and dup["near4"] == "d24"
    # a document's segments, in order, decode to its text + EOS (across rows, shards and partitions)
    tok = Tokenizer.from_file(str(TOKENIZER))
    corpus_root = Path(q(one_worker, "SELECT file FROM files LIMIT 1")[0][0]).parent
    texts = {}
    for f in sorted(corpus_root.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            texts[rec["id"]] = rec["text"]
    long_docs = [d for d, in q(one_worker, "SELECT doc_id FROM segments GROUP BY doc_id, copy "
                                           "HAVING count(*) > 1 ORDER BY doc_id LIMIT 5")]
    assert long_docs
    for doc_id in long_docs + ["d0", "d1499"]:
        segs = q(one_worker, f"SELECT shard, row, start, length FROM segments WHERE doc_id = '{doc_id}' AND copy = 0 "
                             "ORDER BY doc_start")
        ids = np.concatenate([np.load(one_worker / s)[r, a:a + n] for s, r, a, n in segs])
        assert ids[-1] == 0 and tok.decode(ids[:-1].tolist()) == texts[doc_id]


def test_max_tokens_cap_is_the_same_for_any_partition_count(corpus: Path, tmp_path: Path):
    cap = 60_000
    one = build(corpus, tmp_path / "c1", workers=1, max_tokens=cap)
    three = build(corpus, tmp_path / "c3", workers=3, max_tokens=cap)
    assert hashes(one) == hashes(three)
    (seg,), = q(one, "SELECT sum(length) FROM segments")
    (kept,), = q(one, "SELECT sum(n_tokens * n_copies) FROM documents WHERE status = 'kept'")
    (capped,), = q(one, "SELECT count(*) FROM documents WHERE reason = 'max-tokens'")
    assert seg == kept and cap - 1000 < seg <= cap and capped > 100
    # a repeated document may keep fewer copies than asked: it stays kept with the copies written
    assert q(one, "SELECT count(*) FROM documents d WHERE status = 'kept' AND n_copies <> "
                  "(SELECT count(DISTINCT copy) FROM segments s WHERE s.doc_id = d.doc_id)") == [(0,)]
    assert verify_build(three) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "index"])
def test_verify_names_the_damaged_shard(one_worker: Path, tmp_path: Path, damage: str):
    import cli

    out = tmp_path / "copy"
    shutil.copytree(one_worker, out, ignore=shutil.ignore_patterns("work"))
    victim = out / "shards" / "shard-00002.npy"
    if damage == "flip":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-100])
    elif damage == "delete":
        victim.unlink()
    else:
        (out / "shards" / "shard-00002.idx.arrow").write_bytes(b"not arrow")
    res = CliRunner().invoke(cli.app, ["verify", str(out)])
    assert res.exit_code == 1 and "shards/shard-00002.npy" in res.output, res.output
    assert all("shard-00002" in p for p in verify_build(out))


def test_stage_b_failure_leaves_the_previous_build(one_worker: Path, corpus: Path, tmp_path: Path, monkeypatch):
    from pipelines.shards import writer

    out = tmp_path / "prev"
    shutil.copytree(one_worker, out)
    before = hashes(out)
    calls = []

    def failing(self, i, *a, **kw):  # the second shard of a rebuild fails (disk full, a killed task...)
        calls.append(i)
        if len(calls) == 2:
            raise OSError("no space left on device")
        return original(self, i, *a, **kw)

    original = writer.WriteShards._write_shard
    monkeypatch.setattr(writer.WriteShards, "_write_shard", failing)
    with pytest.raises(Exception):
        build(corpus, out, workers=1, seed=11)  # workers=1: datatrove runs the tasks in this process
    monkeypatch.undo()
    assert hashes(out) == before and verify_build(out) == []
    assert q(out, "SELECT seed FROM build") == [(3,)]
    # the next run completes and replaces it
    build(corpus, out, workers=1, seed=11)
    assert q(out, "SELECT seed FROM build") == [(11,)] and hashes(out) != before and verify_build(out) == []


def test_kill_inside_the_swap_is_restored(one_worker: Path, corpus: Path, tmp_path: Path, monkeypatch):
    from pipelines.shards import swap as manifest

    out = tmp_path / "swap"
    shutil.copytree(one_worker, out)
    before = hashes(out)
    real_replace = os.replace

    def dies_before_the_last_rename(src, dst):
        if str(src).endswith("manifest.duckdb.tmp"):
            raise RuntimeError("killed")  # steps 1-3 of the swap done, the new manifest not yet in place
        return real_replace(src, dst)

    monkeypatch.setattr(manifest.os, "replace", dies_before_the_last_rename)
    with pytest.raises(RuntimeError):
        build(corpus, out, workers=1, seed=12)
    monkeypatch.undo()
    assert not (out / "manifest.duckdb").exists()  # the window the swap keeps to a few renames
    assert verify_build(out) == []  # verify restores the previous build first
    assert hashes(out) == before and q(out, "SELECT seed FROM build") == [(3,)]


def test_apply_decisions_reads_the_decisions_contract(tmp_path: Path):
    """The global dedup stages' output format (pipelines.dedup.decisions) drives the documents part and the pack items."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datatrove.data import Document

    from pipelines.dedup.decisions import doc_key, write_decisions
    from pipelines.pack.items import ApplyDecisions
    from pipelines.pack.layout import StageBLayout
    from pipelines.steps.intermediate import WriteIntermediate
    from pipelines.steps.tasks import FileTask

    work = tmp_path / "work"
    task = FileTask(source="s", path="f.jsonl", display="f.jsonl", fmt="jsonl", text_key="text", id_key="id", sample=2.0)
    docs = []
    for i, n in enumerate((3, 5, 7)):
        meta = {"source": "s", "file": "f.jsonl", "line": i + 1, "status": "kept", "reason": None, "detail": "",
                "n_chars": n, "n_copies": 2, "url": None, "tokens": np.arange(n, dtype=np.uint32)}
        docs.append(Document(text="x" * n, id=f"id{i}", metadata=meta))
    list(WriteIntermediate(str(work / "docs"), [task], token_dtype="uint16").run(iter(docs), rank=0))
    write_decisions(str(work), 0, pa.table({"idx": [1, 2], "reason": ["near-dup", None],
                                            "duplicate_of": [doc_key(0, 0), None], "doc_id": [None, "id0@f:3"]}))
    lay = StageBLayout(work_dir=str(work), out=str(tmp_path / "out"), n_tasks=1, n_partitions=1, n_writers=1,
                       concat=True)
    ctx = SimpleNamespace(seed=0, spec=SimpleNamespace(packing={}), sources=[{"source": "s"}])
    ApplyDecisions(ctx, lay).run(rank=0)
    part = pq.read_table(lay.part("documents", 0)).to_pylist()
    assert [(d["doc_id"], d["status"], d["reason"], d["n_copies"], d["duplicate_of_key"]) for d in part] == [
        ("id0", "kept", None, 2, None), ("id1", "dropped", "near-dup", 0, doc_key(0, 0)), ("id0@f:3", "kept", None, 2, None)]
    items = pq.read_table(lay.part("items", 0))
    assert sorted(zip(items["doc_id"].to_pylist(), items["copy"].to_pylist(), items["n_tokens"].to_pylist(),
                      items["offset"].to_pylist())) == [("id0", 0, 3, 0), ("id0", 1, 3, 0),
                                                        ("id0@f:3", 0, 7, 8), ("id0@f:3", 1, 7, 8)]
    assert items["sort_key"].to_pylist() == sorted(items["sort_key"].to_pylist())
    assert (work / "docs" / "00000.tokens.bin").stat().st_size == 2 * (3 + 5 + 7)  # uint16 intermediates

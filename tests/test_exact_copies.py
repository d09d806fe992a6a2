"""Exact copies decided before tokenization (`pipelines.dedup.copies`): stage A skips tokenizing documents that
global dedup is certain to drop as `exact-dup`, and the build is byte for byte the build that tokenizes everything
(shards, and every manifest table: status, reason, duplicate_of, n_tokens, contamination)."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import TOKENIZER, build

QUESTION = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many clips in May "
            "how many clips did Natalia sell altogether in April and May")
TABLES = ("SELECT * FROM documents ORDER BY key", "SELECT * FROM segments", "SELECT * FROM shards ORDER BY path",
          "SELECT * FROM composition", "SELECT * FROM contamination ORDER BY doc_id, benchmark, item_id")


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    """3 files: originals, then raw copies of them (across and inside files), case/space variants (exact-dup by the
    normalised key, not raw copies), copies of a contaminated text and of near-duplicates; one source sampled at 0.6,
    so some originals are sampled out and a later copy must be tokenized instead."""
    root = tmp_path_factory.mktemp("copies")
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(20, 300))) for _ in range(300)]
    files: list[list[dict]] = [[], [], []]
    for i, t in enumerate(texts):
        files[0].append({"id": f"o{i}", "text": t})
    files[0].append({"id": "contaminated", "text": "intro words here. " + QUESTION + " answer 72"})
    for j in range(60):
        files[1].append({"id": f"copy{j}", "text": texts[j]})  # raw copy in another file
        files[2].append({"id": f"copy2-{j}", "text": texts[j] if j % 2 else texts[j + 100]})
        files[1].append({"id": f"case{j}", "text": texts[60 + j].upper()})  # exact-dup by fold_exact only
        files[2].append({"id": f"near{j}", "text": texts[200 + j] + " tail"})  # near-dup
        files[2].append({"id": f"nearcopy{j}", "text": texts[200 + j] + " tail"})  # raw copy of a near-dup
    for k in range(5):
        files[1].append({"id": f"contaminated-copy{k}", "text": files[0][-1]["text"]})
    files[2].append({"id": "inside-file", "text": texts[5]})
    files[2].append({"id": "inside-file-again", "text": texts[5]})
    (root / "data").mkdir()
    for f, rows in enumerate(files):
        (root / "data" / f"part-{f}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "bench.jsonl").write_text(json.dumps({"id": "q1", "question": QUESTION, "answer": "72"}) + "\n")
    spec = root / "spec.yaml"
    spec.write_text(f"""name: copies
seq_len: 256
shard_tokens: 8192
tokenizer: {TOKENIZER}
seed: 5
dedup: {{exact: true, minhash: true, url: true}}
decontaminate: {{benchmarks: [{root / 'bench.jsonl'}]}}
sources:
  - {{name: a, uri: "{root}/data/part-0.jsonl"}}
  - {{name: b, uri: "{root}/data/part-[12].jsonl", sample: 0.6}}
""")
    return spec


def without_copies(monkeypatch) -> None:
    from pipelines.build import context
    from pipelines.dedup import copies

    monkeypatch.setattr(copies, "copies_enabled", lambda *a, **k: False)
    monkeypatch.setattr(context, "copies_enabled", lambda *a, **k: False)


@pytest.fixture(scope="module")
def reference(spec: Path, tmp_path_factory) -> Path:
    """The build that tokenizes every kept document."""
    mp = pytest.MonkeyPatch()
    without_copies(mp)
    try:
        return build(spec, tmp_path_factory.mktemp("ref") / "out", workers=1)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def with_copies(spec: Path, tmp_path_factory) -> Path:
    return build(spec, tmp_path_factory.mktemp("copies") / "out", workers=2)


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").iterdir())}


def q(out: Path, sql: str):
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stage_a_tokens(out: Path) -> int:
    return sum(p.stat().st_size for p in (out / "work").glob("*/docs/*.tokens.bin"))


def test_same_shards_and_manifest_as_tokenizing_everything(reference: Path, with_copies: Path):
    assert shard_hashes(with_copies) == shard_hashes(reference)
    for sql in TABLES:
        assert q(with_copies, sql) == q(reference, sql), sql
    reasons = dict(q(reference, "SELECT reason, count(*) FROM documents GROUP BY reason"))
    assert reasons["exact-dup"] > 60 and reasons["near-dup"] > 0 and reasons["contaminated"] >= 2
    assert reasons["sampled-out"] > 0
    # a dropped copy still shows its token count (its original's): nothing in the manifest tells the builds apart
    assert q(with_copies, "SELECT count(*) FROM documents WHERE reason = 'exact-dup' AND n_tokens IS NULL") == [(0,)]


def test_copies_are_not_tokenized(reference: Path, with_copies: Path):
    import pyarrow.parquet as pq

    # every raw copy of a kept earlier document is skipped: the tokens stage A wrote shrink by exactly theirs
    skipped = 0
    for t in range(3):
        pairs = np.load(next((with_copies / "work").glob(f"*/copies/{t:05d}.npy")))
        docs = next((with_copies / "work").glob(f"*/docs/{t:05d}.docs.parquet"))
        table = pq.read_table(docs, columns=["status", "n_tokens", "copy_of"]).to_pydict()
        marked = [i for i, c in enumerate(table["copy_of"]) if c is not None]
        assert marked == pairs[:, 0].tolist()  # the pass reads and samples as stage A does: the same rows
        assert all(table["n_tokens"][i] is None for i in marked)
        skipped += sum(n for n, in q(reference, f"SELECT coalesce(n_tokens, 0) FROM documents WHERE key >> 32 = {t} AND "
                                                f"(key & 4294967295) IN ({','.join(map(str, marked)) or '-1'})"))
    assert skipped > 0
    assert stage_a_tokens(reference) - stage_a_tokens(with_copies) == 2 * skipped  # uint16 intermediates


def test_decided_the_same_for_any_run_size_and_bucket_count(spec: Path, with_copies: Path, tmp_path: Path,
                                                            monkeypatch):
    from pipelines.dedup import global_stages

    monkeypatch.setattr(global_stages, "SIGN_RUN_DOCS", 7)  # many sorted runs per file
    monkeypatch.setattr(global_stages, "n_buckets_for", lambda n: 5)  # more hash buckets than files
    small = build(spec, tmp_path / "out", workers=1)
    assert shard_hashes(small) == shard_hashes(with_copies)
    for sql in TABLES:
        assert q(small, sql) == q(with_copies, sql), sql


def test_not_used_where_a_copy_could_survive(spec: Path, tmp_path: Path):
    """--exclude can remove an original and leave its copy the survivor; exact dedup off keeps copies: the copies
    pass is off there (and so does not enter the stage-A cache key)."""
    from pipelines.dedup.copies import copies_enabled
    from pipelines.steps.tasks import FileTask

    task = FileTask(source="a", path="x.jsonl", display="x.jsonl", fmt="text", text_key="text", id_key="id", sample=1.0)
    assert copies_enabled({"exact": True}, (), False, [task])
    assert not copies_enabled({"exact": True}, ("other-build",), False, [task])
    assert not copies_enabled({"exact": False, "minhash": True}, (), False, [task])
    assert not copies_enabled(None, (), False, [task])
    assert not copies_enabled({"exact": True}, (), True, [task])  # loss masks (SFT)
    chat = FileTask(**{**task.__dict__, "fmt": "chat"})
    fetched = FileTask(**{**task.__dict__, "fetch": {"uri": "s3://bucket/{blob_id}"}})
    assert not copies_enabled({"exact": True}, (), False, [chat, fetched])
    assert copies_enabled({"exact": True}, (), False, [chat, fetched, task])  # the plain files take part

"""Pre-tokenized MDS inputs (pipelines/read/mds.py, pipelines/read/mds_source.py): both routes through a real build."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, TOKENIZER, build
from tokenizers import Tokenizer

from pipelines.build.spec import SpecError, load_spec
from pipelines.read.mds import iter_samples, write_mds
from pipelines.shards.verify import verify_build

FOREIGN = SHARED / "tokenizers" / "allenai_dolma2.json"  # another vocabulary, standing in for ProLong's Llama-3
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Ünïcödé text — with dashes, émojis 🙂 and numbers 12345.",
    "A second paragraph.\n\nWith a blank line between.",
    "Short one.",
]


def _spec(tmp: Path, name: str, uri: str, tokenizer: str, seq_len: int = 32) -> Path:
    spec = {
        "name": name, "seq_len": seq_len, "tokenizer": str(TOKENIZER), "seed": 0,
        "packing": {"mode": "concat", "shuffle": False},
        "sources": [{"name": "prolong", "uri": uri, "format": "mds", "options": {"tokenizer": tokenizer}}],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def _stream(out: Path, pad_id: int = 1) -> np.ndarray:
    """Every token the shards hold, in row order, the final row's padding cut."""
    rows = np.concatenate([np.load(p) for p in sorted((out / "shards").glob("shard-*[0-9].npy"))])
    flat = rows.reshape(-1)
    end = len(flat)
    while end and flat[end - 1] == pad_id:
        end -= 1
    return flat[:end]


def _packed_rows(tok: Tokenizer, texts: list[str], eos: int, per_row: int = 2) -> list[dict]:
    """ProLong-style packed samples: `input_ids` of several documents + their [start, end) `indices`."""
    samples = []
    for k in range(0, len(texts), per_row):
        ids, bounds = [], []
        for t in texts[k:k + per_row]:
            doc = tok.encode(t, add_special_tokens=False).ids + [eos]
            bounds.append((len(ids), len(ids) + len(doc)))
            ids += doc
        samples.append({"input_ids": np.asarray(ids, np.uint32), "indices": np.asarray(bounds, np.uint32),
                        "domain": "test"})
    return samples


COLUMNS = {"input_ids": "ndarray:uint32", "indices": "ndarray:uint32", "domain": "str"}


def test_mds_reader_round_trips_what_it_wrote(tmp_path):
    samples = _packed_rows(Tokenizer.from_file(str(TOKENIZER)), TEXTS, 0)
    write_mds(str(tmp_path / "d"), COLUMNS, samples, shard_samples=2)
    got = list(iter_samples(str(tmp_path / "d" / "index.json")))
    assert [(s, i) for s, i, _ in got] == [("shard.00000.mds", 0), ("shard.00000.mds", 1), ("shard.00001.mds", 0)]
    for (_, _, g), want in zip(got, samples):
        assert g["domain"] == "test"
        assert np.array_equal(g["input_ids"], want["input_ids"])
        assert np.array_equal(g["indices"], want["indices"])


def test_mds_written_by_mosaic_streaming_reads_identically(tmp_path):
    streaming = pytest.importorskip("streaming")  # optional: the package pins numpy<2.2/transformers<5
    samples = _packed_rows(Tokenizer.from_file(str(TOKENIZER)), TEXTS, 0)
    with streaming.MDSWriter(out=str(tmp_path / "d"), columns=COLUMNS) as w:
        for s in samples:
            w.write(s)
    got = [s for _, _, s in iter_samples(str(tmp_path / "d" / "index.json"))]
    assert all(np.array_equal(g["input_ids"], s["input_ids"]) for g, s in zip(got, samples))


def test_same_tokenizer_imports_tokens_unchanged(tmp_path):
    """Route (a): every [start, end) piece becomes a document and the shards hold exactly the MDS input's ids."""
    tok = Tokenizer.from_file(str(TOKENIZER))
    samples = _packed_rows(tok, TEXTS, 0)
    write_mds(str(tmp_path / "hub" / "pretrain" / "part0"), COLUMNS, samples, shard_samples=2)
    spec = _spec(tmp_path, "mds-import", str(tmp_path / "hub" / "pretrain" / "*" / "index.json"),
                 "allenai/eleuther-ai-gpt-neox-20b-pii-special")
    out = build(spec, tmp_path / "out")
    want = np.concatenate([s["input_ids"] for s in samples])
    assert np.array_equal(_stream(out), want)

    import duckdb

    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    docs = con.sql("SELECT doc_id, n_tokens FROM documents WHERE status = 'kept' ORDER BY doc_id").fetchall()
    assert [d for d, _ in docs] == [f"prolong/part0/shard.0000{s}.mds:{i}:{k}"
                                   for s, i, k in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0))]
    assert [n for _, n in docs] == [int(b - a) for s in samples for a, b in s["indices"]]


def test_other_tokenizer_detokenizes_and_retokenizes_the_text(tmp_path):
    """Route (b): ids of another vocabulary (with its BOS/EOS) -> text -> the spec's tokenizer, + Instella's EOS."""
    foreign = Tokenizer.from_file(str(FOREIGN))
    eos = foreign.token_to_id("<|endoftext|>")
    samples = _packed_rows(foreign, TEXTS, eos)
    write_mds(str(tmp_path / "hub" / "raw" / "part0"), COLUMNS, samples)
    spec = _spec(tmp_path, "mds-retok", str(tmp_path / "hub" / "raw" / "*" / "index.json"), str(FOREIGN))
    out = build(spec, tmp_path / "out")
    ours = Tokenizer.from_file(str(TOKENIZER))
    stream = _stream(out).tolist()
    assert stream == [i for t in TEXTS for i in ours.encode(t, add_special_tokens=False).ids + [0]]
    decoded = ours.decode(stream, skip_special_tokens=False).split("<|endoftext|>")[:-1]
    assert decoded == TEXTS


def test_mds_source_without_its_tokenizer_is_a_spec_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"name": "bad", "seq_len": 8, "tokenizer": str(TOKENIZER),
                                "sources": [{"name": "x", "uri": "x/index.json", "format": "mds"}]}))
    with pytest.raises(SpecError, match=r"bad.yaml: sources\[0\]: field 'options.tokenizer'"):
        load_spec(str(path))


def test_mds_rows_packing_keeps_every_released_row_as_it_was(tmp_path):
    """Instella-Long route: import + `mds-rows` -> shard row i == MDS sample i (then padding)."""
    tok = Tokenizer.from_file(str(TOKENIZER))
    samples = _packed_rows(tok, TEXTS, 0, per_row=3)
    write_mds(str(tmp_path / "hub" / "phase1" / "a"), COLUMNS, samples[:1])
    write_mds(str(tmp_path / "hub" / "phase1" / "b"), COLUMNS, samples[1:])
    spec = json.loads(_spec(tmp_path, "rows", str(tmp_path / "hub" / "phase1" / "**" / "index.json"),
                            str(TOKENIZER), seq_len=64).read_text())
    spec["packing"] = {"mode": "mds-rows"}
    (tmp_path / "rows.yaml").write_text(json.dumps(spec))
    out = build(tmp_path / "rows.yaml", tmp_path / "out")
    rows = np.concatenate([np.load(p) for p in sorted((out / "shards").glob("shard-*[0-9].npy"))])
    assert len(rows) == len(samples)
    assert verify_build(out) == []
    for row, s in zip(rows, samples):
        n = len(s["input_ids"])
        assert row[:n].tolist() == s["input_ids"].tolist() and (row[n:] == 1).all()

    spec["seq_len"] = 16  # shorter than a released row: an error naming the file, not a silent cut
    (tmp_path / "short.yaml").write_text(json.dumps(spec))
    with pytest.raises(Exception, match=r"index.json: sample 1 holds \d+ tokens, more than seq_len 16"):
        build(tmp_path / "short.yaml", tmp_path / "out-short")


def test_imported_ids_refuse_text_based_dedup(tmp_path):
    tok = Tokenizer.from_file(str(TOKENIZER))
    write_mds(str(tmp_path / "hub" / "p" / "a"), COLUMNS, _packed_rows(tok, TEXTS, 0))
    spec = json.loads(_spec(tmp_path, "d", str(tmp_path / "hub" / "p" / "*" / "index.json"), str(TOKENIZER)).read_text())
    spec["dedup"] = {"exact": True}
    (tmp_path / "d.yaml").write_text(json.dumps(spec))
    with pytest.raises(SpecError, match=r"d.yaml: source 'prolong': imported MDS ids have no text"):
        build(tmp_path / "d.yaml", tmp_path / "out")


@pytest.mark.parametrize("n_dirs, partitioned", [(1, False), (3, True)])
def test_mds_rows_keep_their_order_in_one_file_and_across_pack_partitions(tmp_path, monkeypatch, n_dirs, partitioned):
    """`mds-rows` packs partition by partition on large builds: whole input files per partition, in file order, so
    shard row i is still MDS sample i -- with one input file, and with several partitions."""
    from pipelines.pack import layout

    tok = Tokenizer.from_file(str(TOKENIZER))
    samples = _packed_rows(tok, TEXTS * 2, 0, per_row=2)
    bounds = np.linspace(0, len(samples), n_dirs + 1).astype(int)
    for d in range(n_dirs):
        write_mds(str(tmp_path / "hub" / "phase1" / f"d{d}"), COLUMNS, samples[bounds[d]:bounds[d + 1]])
    spec = json.loads(_spec(tmp_path, "rows", str(tmp_path / "hub" / "phase1" / "**" / "index.json"),
                            str(TOKENIZER), seq_len=64).read_text())
    spec["packing"] = {"mode": "mds-rows"}
    (tmp_path / "rows.yaml").write_text(json.dumps(spec))
    if partitioned:  # the layout guesses documents from input bytes: one "document" per file, one per partition
        monkeypatch.setattr(layout, "file_size", lambda path: layout.BYTES_PER_DOC_GUESS)
        monkeypatch.setattr(layout, "ITEMS_PER_PARTITION", 1)
    out = build(tmp_path / "rows.yaml", tmp_path / "out", workers=2)
    if partitioned:
        assert len(list((out / "work").glob("*/stage_b/plan/*.json"))) > 1
    rows = np.concatenate([np.load(p) for p in sorted((out / "shards").glob("shard-*[0-9].npy"))])
    assert len(rows) == len(samples)
    for row, s in zip(rows, samples):
        n = len(s["input_ids"])
        assert row[:n].tolist() == s["input_ids"].tolist() and (row[n:] == 1).all()

"""Bad input: every broken record is a counted skip with file, line and reason; whole-file breakage is an error."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml
import zstandard
from conftest import ROOT, TOKENIZER, build

from pipelines.build.spec import SpecError, load_spec, parse_spec


def good(i: int) -> bytes:
    return json.dumps({"id": f"good-{i}", "text": f"Good document number {i}. " * 20}).encode() + b"\n"


def write_spec(tmp: Path, sources: list[dict], **extra) -> Path:
    spec = {"name": "bad", "seq_len": 64, "tokenizer": str(TOKENIZER), "sources": sources, **extra}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def bad_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    lines = [good(0), b"{not json\n", good(1), json.dumps({"id": "no-text", "body": "x"}).encode() + b"\n",
             json.dumps({"id": "int-text", "text": 42}).encode() + b"\n", good(2),
             b'{"id": "latin1", "text": "caf\xe9"}\n', json.dumps({"id": "blank", "text": "   "}).encode() + b"\n",
             good(3)]
    (d / "mixed.jsonl").write_bytes(b"".join(lines))
    (d / "empty.jsonl").write_bytes(b"")
    full = gzip.compress(b"".join(good(10 + i) for i in range(200)))
    (d / "truncated.json.gz").write_bytes(full[: len(full) * 2 // 3])
    zfull = zstandard.ZstdCompressor().compress(b"".join(good(300 + i) for i in range(200)))
    (d / "truncated.json.zst").write_bytes(zfull[: len(zfull) * 2 // 3])
    return d


def test_record_problems_are_counted_skips(tmp_path: Path, bad_dir: Path):
    spec = write_spec(tmp_path, [{"name": "mixed", "uri": str(bad_dir / "*.jsonl")},
                                 {"name": "gz", "uri": str(bad_dir / "truncated.json.gz")},
                                 {"name": "zst", "uri": str(bad_dir / "truncated.json.zst")}])
    out = build(spec, tmp_path / "out", source_root=None)
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    rows = con.execute("SELECT doc_id, file, line, status, reason FROM documents WHERE source='mixed' ORDER BY line").fetchall()
    reasons = {line: (status, reason) for _, _, line, status, reason in rows}
    assert reasons[2] == ("dropped", "malformed-json")
    assert reasons[4] == ("dropped", "missing-text")
    assert reasons[5] == ("dropped", "non-string-text")
    assert reasons[7] == ("dropped", "invalid-utf8")
    assert reasons[8] == ("dropped", "empty-text")
    assert {line for line, (s, _) in reasons.items() if s == "kept"} == {1, 3, 6, 9}  # no good doc lost
    assert all(f.endswith("mixed.jsonl") for _, f, *_ in rows)
    # the empty file is listed with zero records
    assert con.execute("SELECT n_records FROM files WHERE file LIKE '%empty.jsonl'").fetchone() == (0,)
    for source in ("gz", "zst"):
        kept, = con.execute("SELECT count(*) FROM documents WHERE source=? AND status='kept'", [source]).fetchone()
        trunc = con.execute("SELECT line FROM documents WHERE source=? AND reason='truncated-stream'", [source]).fetchall()
        assert len(trunc) == 1 and trunc[0][0] == kept + 1  # the break is located after the last good line
        assert kept < 200
    # gzip decodes up to the break; zstd only yields whole blocks (this small frame is a single block)
    assert con.execute("SELECT count(*) FROM documents WHERE source='gz' AND status='kept'").fetchone()[0] > 100
    total, kept, seg = con.execute("""SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM documents WHERE status='kept'),
                                             (SELECT sum(length) FROM segments)""").fetchone()
    assert seg == con.execute("SELECT sum(n_tokens) FROM documents WHERE status='kept'").fetchone()[0]


def test_strict_mode_names_file_and_line(tmp_path: Path, bad_dir: Path):
    spec = write_spec(tmp_path, [{"name": "mixed", "uri": str(bad_dir / "mixed.jsonl")}])
    res = subprocess.run([sys.executable, "cli.py", "build-mixture", str(spec), "--out", str(tmp_path / "o"),
                          "--strict", "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0
    assert "mixed.jsonl:2: malformed-json" in res.stdout + res.stderr


def test_invalid_json_array_is_an_error_naming_file_and_line(tmp_path: Path):
    (tmp_path / "conv.json").write_text('[{"conversations": [{"from": "human", "value": "hi"}]},\n  {oops}\n]')
    spec = write_spec(tmp_path, [{"name": "c", "uri": str(tmp_path / "conv.json"), "format": "conversations"}])
    res = subprocess.run([sys.executable, "cli.py", "build-mixture", str(spec), "--out", str(tmp_path / "o"),
                          "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0
    assert "conv.json: invalid JSON at line 2" in res.stdout + res.stderr


@pytest.mark.parametrize("mutation,message", [
    ({"colour": "red"}, "unknown field(s) ['colour']"),
    ({"seq_len": "4096"}, "field 'seq_len' must be int"),
    ({"sources": [{"name": "x"}]}, "sources[0]: missing required field(s) ['uri']"),
    ({"sources": [{"name": "x", "uri": "a", "sample": "lots"}]}, "sources[0]: field 'sample' must be int or float"),
    ({"sources": [{"name": "x", "uri": "a", "format": "html"}]}, "field 'format' must be one of"),
    ({"sources": [{"name": "x", "uri": "a", "smaple": 0.5}]}, "sources[0]: unknown field(s) ['smaple']"),
])
def test_spec_errors_name_the_field(mutation: dict, message: str):
    raw = {"name": "t", "seq_len": 64, "tokenizer": "tok.json", "sources": [{"name": "a", "uri": "x"}], **mutation}
    with pytest.raises(SpecError) as e:
        parse_spec(raw, "my.yaml")
    assert message in str(e.value) and "my.yaml" in str(e.value)


def test_unknown_mixture_lists_available():
    with pytest.raises(SpecError, match="unknown mixture 'stage9'.*stage2"):
        load_spec("stage9")
    res = subprocess.run([sys.executable, "cli.py", "build-mixture", "stage9"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and "unknown mixture 'stage9'" in res.stderr


def test_repeats_above_one_and_missing_source(tmp_path: Path, bad_dir: Path):
    d = tmp_path / "rep"
    d.mkdir()
    (d / "a.jsonl").write_bytes(b"".join(good(i) for i in range(200)))
    spec = write_spec(tmp_path, [{"name": "rep", "uri": str(d / "a.jsonl"), "sample": 2.5},
                                 {"name": "nothing", "uri": str(tmp_path / "nope/*.jsonl")}])
    out = build(spec, tmp_path / "out", source_root=None)
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    copies = dict(con.execute("SELECT n_copies, count(*) FROM documents GROUP BY 1").fetchall())
    assert set(copies) == {2, 3} and 60 < copies[3] < 140
    seg, expected = con.execute("""SELECT (SELECT sum(length) FROM segments),
                                          (SELECT sum(n_tokens * n_copies) FROM documents WHERE status='kept')""").fetchone()
    assert seg == expected
    assert con.execute("SELECT condition FROM sources WHERE source='nothing'").fetchone() == ("no-files",)
    assert con.execute("SELECT epochs FROM composition WHERE source='rep'").fetchone()[0] == pytest.approx(2.5, abs=0.15)

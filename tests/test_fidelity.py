"""The shipped specs' sources in their real-hub form, on data built in the test: python-edu metadata joined to gzip
blobs in an S3 object store (moto on 127.0.0.1) or a --source-map'd folder, TxT360 dm_maths' plain JSON lines in
full_data/ + full_data_2/, AMD's released GSM8K-synthetic parquet (split train_119K), the long-sft renderers and the
Tülu `source` filter; plus --source-map, the new spec keys' validation, and planned vs achieved shares."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TOKENIZER, build
from tokenizers import Tokenizer
from typer.testing import CliRunner

from pipelines.build.spec import MIXTURES_DIR, SpecError, load_spec
from pipelines.read.remap import SourceMap, SourceMapError
from pipelines.shards.reader import connect

PY_FILES = {  # blob_id -> file text (non-ASCII included: the blob is UTF-8, gzip-compressed as upstream)
    "a1b2c3": "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n    return a + b\n",
    "d4e5f6": "class Greeter:\n    def hello(self, name: str) -> str:\n        return f'héllo {name} ✓'\n",
    "0789ab": "import math\n\nprint(math.sqrt(2))  # 1.414...\n",
}
MISSING_BLOB = "deadbeef"  # deleted upstream


def shipped_source(spec: str, name: str) -> dict:
    raw = yaml.safe_load((MIXTURES_DIR / f"{spec}.yaml").read_text())
    (src,) = [s for s in raw["sources"] if s["name"] == name]
    return src


def mini_spec(tmp_path: Path, sources: list[dict], **extra) -> Path:
    """A small concat spec holding the given (shipped) source entries; no dedup/decontamination to stay fast."""
    raw = {"name": "fidelity", "seq_len": 256, "tokenizer": str(TOKENIZER), "sources": sources, **extra}
    path = tmp_path / "fidelity.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def q(out: Path, sql: str, params=None) -> list[tuple]:
    con = connect(out)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def decoded_texts(out: Path) -> dict[str, str]:
    """doc_id -> text decoded from the shards (first copy), EOS removed."""
    tok = Tokenizer.from_file(str(TOKENIZER))
    shards = {p: np.load(out / p, mmap_mode="r") for (p,) in q(out, "SELECT path FROM shards")}
    ids: dict[str, list[int]] = {}
    for doc_id, shard, row, start, length in q(out, "SELECT doc_id, shard, row, start, length FROM segments "
                                                     "WHERE copy = 0 ORDER BY shard, row, start"):
        ids.setdefault(doc_id, []).extend(shards[shard][row, start:start + length].tolist())
    return {d: tok.decode(v[:-1], skip_special_tokens=False) for d, v in ids.items()}


def write_python_edu_metadata(hub: Path) -> None:
    """The real python-edu layout: metadata only, no `text` column."""
    rows = [{"blob_id": b, "repo_name": "octo/repo", "path": f"src/{b}.py", "length_bytes": len(t.encode()),
             "score": 3.9, "int_score": 4} for b, t in PY_FILES.items()]
    rows.insert(1, {"blob_id": MISSING_BLOB, "repo_name": "octo/gone", "path": "gone.py", "length_bytes": 10,
                    "score": 4.1, "int_score": 4})
    folder = hub / "HuggingFaceTB/smollm-corpus/python-edu"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")


def check_python_edu_build(out: Path) -> None:
    docs = {d: (status, reason, detail) for d, status, reason, detail in q(
        out, "SELECT doc_id, status, reason, detail FROM documents WHERE source = 'python-edu'")}
    assert docs[MISSING_BLOB] == ("dropped", "blob-missing", f"s3://softwareheritage/content/{MISSING_BLOB}")
    texts = decoded_texts(out)
    for blob_id, text in PY_FILES.items():
        assert docs[blob_id][0] == "kept" and texts[blob_id] == text
    # the manifest names the real hub file, not the mirror folder it was read from
    assert q(out, "SELECT DISTINCT file FROM documents WHERE source = 'python-edu'") == [
        ("hf://datasets/HuggingFaceTB/smollm-corpus/python-edu/train-00000-of-00001.parquet",)]


@pytest.fixture()
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_python_edu_blobs_from_an_s3_store(tmp_path: Path, s3_server: str, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="softwareheritage", ACL="public-read")  # public, as the real bucket
    for blob_id, text in PY_FILES.items():
        s3.put_object(Bucket="softwareheritage", Key=f"content/{blob_id}", Body=gzip.compress(text.encode()),
                      ACL="public-read")
    write_python_edu_metadata(tmp_path / "hub")
    src = shipped_source("stage2", "python-edu")
    src["sample"] = 1.0
    cache = tmp_path / "blob-cache"
    src["fetch"] = {**src["fetch"], "cache": str(cache), "retries": 1, "backoff": 0.01,
                    "storage_options": {"endpoint_url": s3_server}}
    out = build(mini_spec(tmp_path, [src]), tmp_path / "out", source_root=str(tmp_path / "hub"))
    check_python_edu_build(out)
    assert len(list(cache.rglob("*"))) - len(list(cache.iterdir())) == len(PY_FILES)  # one cached object per blob

    # the content cache serves the next read of the same blobs without the store
    from pipelines.read.rowfilters import row_transform

    s3.delete_object(Bucket="softwareheritage", Key="content/a1b2c3")
    rows = row_transform(None, src["fetch"], "text", "blob_id")([{"blob_id": "a1b2c3"}])
    assert rows[0]["text"] == PY_FILES["a1b2c3"]


def test_python_edu_blobs_through_source_map(tmp_path: Path):
    """`--source-map s3://softwareheritage/=DIR`: the same build from a local copy of the bucket."""
    write_python_edu_metadata(tmp_path / "hub")
    for blob_id, text in PY_FILES.items():
        (tmp_path / "swh/content").mkdir(parents=True, exist_ok=True)
        (tmp_path / "swh/content" / blob_id).write_bytes(gzip.compress(text.encode()))
    src = {**shipped_source("stage2", "python-edu"), "sample": 1.0}
    spec = mini_spec(tmp_path, [src])
    source_map = (f"s3://softwareheritage/={tmp_path / 'swh'}",)
    out = build(spec, tmp_path / "out", source_root=str(tmp_path / "hub"), source_map=source_map)
    check_python_edu_build(out)
    # the dry-run measures a fetch source on fetched text (here every row: the sample covers the whole file)
    from pipelines.build.options import BuildOptions
    from pipelines.build.run import dry_run

    (est,) = dry_run(load_spec(str(spec)), BuildOptions(out=str(tmp_path / "dry"), source_root=str(tmp_path / "hub"),
                                                        source_map=source_map)).sources
    assert est.est_tokens == q(out, "SELECT n_tokens FROM composition")[0][0]


def test_fetch_retries_transient_errors_then_fails_with_the_blob(tmp_path: Path, monkeypatch):
    import fsspec

    from pipelines.read.fetch import BlobFetcher, FetchConfig, FetchError

    calls = []
    real = fsspec.core.url_to_fs

    class Flaky:
        def cat_file(self, path):
            calls.append(path)
            if len(calls) < 3:
                raise ConnectionError("reset by peer")
            return gzip.compress(b"x = 1\n")

    monkeypatch.setattr(fsspec.core, "url_to_fs", lambda uri, **kw: (Flaky(), uri) if uri.startswith("s3://") else real(uri, **kw))
    cfg = FetchConfig(uri="s3://bucket/{blob_id}", retries=3, backoff=0.001, cache=str(tmp_path / "c"))
    fetcher = BlobFetcher(cfg, cfg.uri, "text", "blob_id")
    assert fetcher([{"blob_id": "b1"}])[0]["text"] == "x = 1\n" and len(calls) == 3
    calls.clear()
    cfg = FetchConfig(uri="s3://bucket/{blob_id}", retries=1, backoff=0.001, cache=str(tmp_path / "c"))
    with pytest.raises(FetchError, match=r"s3://bucket/b2: ConnectionError.*after 2 attempts"):
        BlobFetcher(cfg, cfg.uri, "text", "blob_id")([{"blob_id": "b2"}])


def test_dm_maths_real_layout(tmp_path: Path):
    """TxT360 publishes dm_maths as plain .jsonl in full_data/ and full_data_2/; the shipped glob reads both."""
    base = tmp_path / "hub/LLM360/TxT360/data/dm_maths"
    problems = {"full_data/3340_11255.jsonl": ["Solve 2*x = 4 for x.\n2", "What is 7 + 5?\n12"],
                "full_data_2/10334_11255.jsonl": ["Calculate 9 - 3.\n6"]}
    for rel, texts in problems.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text("".join(json.dumps({"text": t, "meta": {"src": rel}}) + "\n" for t in texts))
    (base / "README.md").write_text("not data\n")
    src = shipped_source("stage2", "dm-maths")
    out = build(mini_spec(tmp_path, [src]), tmp_path / "out", source_root=str(tmp_path / "hub"))
    files = {f for (f,) in q(out, "SELECT file FROM files WHERE source = 'dm-maths'")}
    assert files == {f"hf://datasets/LLM360/TxT360/data/dm_maths/{rel}" for rel in problems}
    assert sorted(decoded_texts(out).values()) == sorted(t for ts in problems.values() for t in ts)


def test_released_gsm8k_synthetic_parquet_split_train_119k(tmp_path: Path):
    """amd/Instella-GSM8K-synthetic: parquet with `messages`; stage 2 reads split train_119K, not its superset."""
    data = tmp_path / "hub/amd/Instella-GSM8K-synthetic/data"
    data.mkdir(parents=True)

    def convo(i: int) -> dict:
        return {"messages": [{"role": "user", "content": f" Tom has {i} apples and buys 2 more. How many? "},
                             {"role": "assistant", "content": f"{i} + 2 = {i + 2}\n#### {i + 2}"}]}

    pq.write_table(pa.Table.from_pylist([convo(i) for i in range(3)]), data / "train_119K-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([convo(i) for i in range(100, 110)]), data / "train-00000-of-00001.parquet")
    src = shipped_source("stage2", "instella-gsm8k-synthetic")
    out = build(mini_spec(tmp_path, [src]), tmp_path / "out", source_root=str(tmp_path / "hub"))
    assert q(out, "SELECT condition, n_files FROM sources") == [("ok", 1)]
    # Instella's rendering: each message's content stripped + "\n", no role tags
    expected = {f"Tom has {i} apples and buys 2 more. How many?\n{i} + 2 = {i + 2}\n#### {i + 2}\n" for i in range(3)}
    assert set(decoded_texts(out).values()) == expected


def test_long_sft_renderers_and_tulu_subset(tmp_path: Path):
    hub = tmp_path / "hub"
    omi = hub / "nvidia/OpenMathInstruct-2/data"
    omi.mkdir(parents=True)
    omi_rows = [{"problem": "What is $2+3$?", "generated_solution": "We add: $2+3=\\boxed{5}$.",
                 "expected_answer": "5", "problem_source": "augmented_math"}]
    pq.write_table(pa.Table.from_pylist(omi_rows), omi / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(omi_rows * 5), omi / "train_1M-00000-of-00001.parquet")  # a subset split
    mmlu = hub / "cais/mmlu/auxiliary_train"
    mmlu.mkdir(parents=True)
    mmlu_rows = [{"train": {"question": "Which is a mammal? ", "subject": "", "choices": ["Shark", "Whale", "Trout"],
                            "answer": 1}},
                 {"train": {"question": "Broken", "subject": "", "choices": ["a", "b"], "answer": 7}}]
    pq.write_table(pa.Table.from_pylist(mmlu_rows), mmlu / "train-00000-of-00001.parquet")
    tulu = hub / "allenai/tulu-3-sft-mixture/data"
    tulu.mkdir(parents=True)
    persona = shipped_source("long-sft", "tulu3-if")["filter"]["source"][0]
    tulu_rows = [{"id": f"t{i}", "source": persona if i % 2 else "ai2-adapt-dev/flan_v2_converted",
                  "messages": [{"role": "user", "content": f"Write {i} words."}, {"role": "assistant", "content": "Ok."}]}
                 for i in range(6)]
    pq.write_table(pa.Table.from_pylist(tulu_rows), tulu / "train-00000-of-00001.parquet")
    sources = [shipped_source("long-sft", n) for n in ("openmathinstruct-2", "mmlu-auxiliary", "tulu3-if")]
    spec = mini_spec(tmp_path, sources, packing={"mode": "sft", "loss_mask": True})
    # --strict stops on bad input, not on rows a filter leaves out (the bad MMLU row is left out of this run)
    pq.write_table(pa.Table.from_pylist(mmlu_rows[:1]), mmlu / "train-00000-of-00001.parquet")
    strict = build(spec, tmp_path / "strict", source_root=str(hub), strict=True)
    assert dict(q(strict, "SELECT reason, count(*) FROM documents GROUP BY 1"))["filtered-out"] == 3
    pq.write_table(pa.Table.from_pylist(mmlu_rows), mmlu / "train-00000-of-00001.parquet")
    out = build(spec, tmp_path / "out", source_root=str(hub))
    texts = decoded_texts(out)
    omi_texts = [t for d, t in texts.items() if "boxed" in t]
    assert omi_texts == ["What is $2+3$?\nWe add: $2+3=\\boxed{5}$.\n"]  # train only, not train_1M
    assert "Which is a mammal?\nA. Shark\nB. Whale\nC. Trout\nB. Whale\n" in texts.values()
    reasons = dict(q(out, "SELECT source || ':' || coalesce(reason, 'kept'), count(*) FROM documents GROUP BY 1"))
    assert reasons["mmlu-auxiliary:bad-answer-index"] == 1
    assert reasons["tulu3-if:kept"] == 3 and reasons["tulu3-if:filtered-out"] == 3
    assert {d for d in texts if d.startswith("t")} == {"t1", "t3", "t5"}


def test_source_map_prefixes():
    m = SourceMap.parse(["s3://swh/=/data/swh", "s3://swh/content/=/fast/content", "https://x.org/d/=s3://mirror/d"],
                        source_root="/hub")
    assert m.apply("s3://swh/content/ab") == "/fast/content/ab"  # longest prefix wins
    assert m.apply("s3://swh/other/ab") == "/data/swh/other/ab"
    assert m.apply("hf://datasets/o/r/f.parquet") == "/hub/o/r/f.parquet"
    assert m.apply("https://x.org/d/f.json") == "s3://mirror/d/f.json"
    assert m.apply("gs://elsewhere/f") == "gs://elsewhere/f"
    assert m.canonical("/fast/content/ab") == "s3://swh/content/ab"
    assert m.canonical("/hub/o/r/f.parquet") == "hf://datasets/o/r/f.parquet"
    assert m.canonical("/unmapped/f") is None
    for bad in ("no-equals", "=/dir", "s3://b/=", "relative/prefix=/dir"):
        with pytest.raises(SourceMapError):
            SourceMap.parse([bad])


@pytest.mark.parametrize("edit, message", [
    ({"tokens": "lots"}, "field 'tokens' must be a number"),
    ({"tokens": -5}, "field 'tokens' must be a positive"),
    ({"sources": [{"name": "a", "uri": "x", "share": 1.5}]}, "sources[0]: field 'share' must be in (0, 1]"),
    ({"sources": [{"name": "a", "uri": "x", "share": 0.7}, {"name": "b", "uri": "y", "share": 0.6}]}, "sums to 1.3"),
    ({"sources": [{"name": "a", "uri": "x", "fetch": {"uri": "s3://b/{id}", "compression": "xz"}}]},
     "field 'fetch': 'compression' must be one of"),
    ({"sources": [{"name": "a", "uri": "x", "fetch": {"uri": "s3://b/content"}}]}, "must name exactly one row field"),
    ({"sources": [{"name": "a", "uri": "x", "filter": {"source": "persona"}}]}, "field 'filter.source' must be a non-empty list"),
    ({"sources": [{"name": "a", "uri": "x", "format": "mmlu-typo"}]}, "field 'format' must be one of"),
])
def test_new_spec_keys_are_validated(tmp_path: Path, edit: dict, message: str):
    raw = {"name": "t", "seq_len": 64, "tokenizer": str(TOKENIZER), "sources": [{"name": "a", "uri": "x"}], **edit}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as e:
        load_spec(str(path))
    assert str(path) in str(e.value) and message in str(e.value)


def test_cli_exits_2_on_bad_spec_key_and_bad_source_map(tmp_path: Path):
    import cli

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "seq_len": 64, "tokenizer": str(TOKENIZER), "tokens": "many",
                                    "sources": [{"name": "a", "uri": "x"}]}))
    res = CliRunner().invoke(cli.app, ["build-mixture", str(path), "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 2 and "tokens" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli.app, ["build-mixture", "stage2", "--out", str(tmp_path / "o"), "--source-map", "nope"])
    assert res.exit_code == 2 and "PREFIX=DIR" in res.output


def test_token_targets_rate_needed_and_planned_vs_achieved(tmp_path: Path):
    hub = tmp_path / "hub"
    for name, n in (("big", 60), ("small", 20)):
        (hub / name).mkdir(parents=True)
        (hub / name / "part-0.jsonl").write_text("".join(
            json.dumps({"id": f"{name}{i}", "text": f"{name} document number {i} " * 5}) + "\n" for i in range(n)))
    sources = [{"name": "big", "uri": f"{hub}/big/*.jsonl", "share": 0.5},
               {"name": "small", "uri": f"{hub}/small/*.jsonl", "share": 0.5, "sample": 2}]
    spec = load_spec(str(mini_spec(tmp_path, sources, tokens="3e3")))
    assert spec.tokens == 3000.0

    from pipelines.build.options import BuildOptions
    from pipelines.build.run import dry_run

    plan = dry_run(spec, BuildOptions(out=str(tmp_path / "out"), progress=False))
    for est in plan.sources:
        assert est.est_tokens and est.rate_needed == pytest.approx(0.5 * 3000 / (est.est_tokens / est.sample))
    out = build(spec.path, tmp_path / "out")
    plan_rows = {r[0]: r[1:] for r in q(out, "SELECT source, planned_share, achieved_share, planned_tokens, "
                                             "achieved_tokens FROM share_plan")}
    achieved = dict(q(out, "SELECT source, share FROM composition"))
    for name in ("big", "small"):
        planned, got, planned_tokens, got_tokens = plan_rows[name]
        assert planned == 0.5 and planned_tokens == 1500 and got == pytest.approx(achieved[name]) and got_tokens > 0
    assert q(out, "SELECT target_tokens FROM build") == [(3000.0,)]


def test_dry_run_estimates_a_filtered_source_from_its_kept_rows(tmp_path: Path):
    from pipelines.build.options import BuildOptions
    from pipelines.build.run import dry_run

    folder = tmp_path / "tulu"
    folder.mkdir()
    rows = [{"id": f"r{i}", "source": "keep" if i < 10 else "other",
             "messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]}
            for i in range(100)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-0.parquet")
    src = {"name": "t", "uri": f"{folder}/*.parquet", "format": "messages"}
    est = {}
    for name, extra in (("all", {}), ("subset", {"filter": {"source": ["keep"]}})):
        spec = load_spec(str(mini_spec(tmp_path, [{**src, **extra}])))
        (est[name],) = dry_run(spec, BuildOptions(out=str(tmp_path / "o"), progress=False)).sources
    assert est["subset"].est_tokens == pytest.approx(est["all"].est_tokens / 10, rel=0.01)


def test_fetch_concurrency_is_bounded(monkeypatch):
    import threading
    import time

    import fsspec

    from pipelines.read.fetch import BlobFetcher, FetchConfig

    lock, state = threading.Lock(), {"now": 0, "max": 0}

    class Slow:
        def cat_file(self, path):
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.02)
            with lock:
                state["now"] -= 1
            return gzip.compress(path.encode())

    monkeypatch.setattr(fsspec.core, "url_to_fs", lambda uri, **kw: (Slow(), uri))
    cfg = FetchConfig(uri="s3://bucket/{blob_id}", concurrency=4)
    fetcher = BlobFetcher(cfg, cfg.uri, "text", "blob_id")
    fetcher.cache = None  # no content cache: every row reaches the store
    rows = fetcher([{"blob_id": f"b{i}"} for i in range(24)])
    assert [r["text"] for r in rows] == [f"s3://bucket/b{i}" for i in range(24)]  # row order kept
    assert 1 < state["max"] <= 4

"""Global dedup, exclusion and id repair as parallel stages (pipelines/dedup/global_stages.py) over stage-A intermediates.

The stages only read stage A's `*.docs.parquet` key columns, so most tests write those files directly: each row's
text_hash / minhash bands / url are chosen so that exactly the planted copies share a key with their original.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TOKENIZER, build

from pipelines.build.executors import ExecutorOptions, run_stages
from pipelines.dedup import global_stages as ds
from pipelines.dedup.decisions import doc_key, read_decisions
from pipelines.shards.format import MANIFEST
from pipelines.steps.intermediate import intermediate_paths

BANDS = 8


def fresh_bands(rng: np.random.Generator) -> list[int]:
    return rng.integers(-2**63, 2**63 - 1, BANDS, dtype=np.int64).tolist()


def doc(doc_id: str, rng: np.random.Generator, status: str = "kept", **kw) -> dict:
    row = {"doc_id": doc_id, "status": status, "text_hash": int(rng.integers(-2**63, 2**63 - 1)),
           "minhash": fresh_bands(rng), "url": None}
    row.update(kw)
    return row


def write_tasks(work: Path, tasks: list[list[dict]]) -> None:
    """Fake stage-A intermediates: one docs parquet per task (file path, line and the dedup key columns)."""
    schema = pa.schema([("doc_id", pa.string()), ("file", pa.string()), ("line", pa.int64()),
                        ("status", pa.string()), ("text_hash", pa.int64()), ("minhash", pa.list_(pa.int64())),
                        ("url", pa.string())])
    for t, rows in enumerate(tasks):
        path = Path(intermediate_paths(str(work / "docs"), t)[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        default_file = f"/data/src{t % 2}/part-{t}.jsonl"
        full = [{"file": r.get("file", default_file), "line": i + 1, **r} for i, r in enumerate(rows)]
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in full], schema=schema), path)


def run(work: Path, n_tasks: int, workers: int = 1, n_buckets: int | None = None, **kw) -> dict[int, dict]:
    """Run the global stages; returns {key: decision row} over every task."""
    cfg = ds.GlobalDedupConfig(work_dir=str(work), n_tasks=n_tasks, n_buckets=n_buckets or ds.n_buckets_for(n_tasks),
                               exact=True, url=True, minhash=True, **kw)
    run_stages(ds.stages_for(cfg), ExecutorOptions(workers=workers), str(work / f"logs-{workers}-{n_buckets}"),
               progress=False)
    out = {}
    for t in range(n_tasks):
        for r in read_decisions(str(work), t).to_pylist():
            out[doc_key(t, r["idx"])] = r
    return out


def by_id(tasks: list[list[dict]]) -> dict[str, int]:
    return {r["doc_id"]: doc_key(t, i) for t, rows in enumerate(tasks) for i, r in enumerate(rows)}


def test_planted_copies_go_and_nothing_else(tmp_path: Path):
    rng = np.random.default_rng(0)
    tasks = [[doc(f"t{t}-{i}", rng) for i in range(40)] for t in range(5)]
    want = {}  # copy id -> (reason, original id)
    for t in range(1, 5):  # copies in later files of docs of earlier files (and of the same file)
        for j in range(3):
            src = tasks[rng.integers(0, t)][j + 4 * t]
            exact = doc(f"exact-{t}-{j}", rng, text_hash=src["text_hash"], minhash=src["minhash"])
            near_bands = fresh_bands(rng)
            near_bands[j] = src["minhash"][j]  # one shared band is enough to link
            near = doc(f"near-{t}-{j}", rng, minhash=near_bands)
            tasks[t] += [exact, near]
            want[exact["doc_id"]] = ("exact-dup", src["doc_id"])
            want[near["doc_id"]] = ("near-dup", src["doc_id"])
        url_src = tasks[t - 1][1]
        url_src["url"] = f"https://x.org/{t}"
        tasks[t].append(doc(f"url-{t}", rng, url=f"https://x.org/{t}"))
        want[f"url-{t}"] = ("url-dup", url_src["doc_id"])
    # a copy that stage A already dropped (e.g. contaminated) is no dedup decision
    tasks[2].append(doc("dropped-copy", rng, status="dropped", text_hash=tasks[0][0]["text_hash"]))
    write_tasks(tmp_path, tasks)
    keys = by_id(tasks)
    got = run(tmp_path, len(tasks))
    names = {v: k for k, v in keys.items()}
    assert {names[k]: (r["reason"], names[r["duplicate_of"]]) for k, r in got.items()} == want


def test_duplicate_of_names_the_final_survivor(tmp_path: Path):
    """B is a near copy of A, C an exact copy of B: C must point at A (main's find_duplicates pointed it at B, which
    is itself dropped). D repeats A's URL after an exact copy E of D: E follows D to A too."""
    rng = np.random.default_rng(1)
    a = doc("A", rng, url="https://a.org/")
    b_bands = fresh_bands(rng)
    b_bands[3] = a["minhash"][3]
    b = doc("B", rng, minhash=b_bands)
    c = doc("C", rng, text_hash=b["text_hash"], minhash=b["minhash"])
    d = doc("D", rng, url="https://a.org/")
    e = doc("E", rng, text_hash=d["text_hash"], minhash=d["minhash"])
    tasks = [[a, doc("x", rng)], [b, d], [c, e]]
    write_tasks(tmp_path, tasks)
    k = by_id(tasks)
    got = run(tmp_path, len(tasks))
    assert {key: (r["reason"], r["duplicate_of"]) for key, r in got.items()} == {
        k["B"]: ("near-dup", k["A"]), k["C"]: ("exact-dup", k["A"]), k["D"]: ("url-dup", k["A"]),
        k["E"]: ("exact-dup", k["A"])}


def test_decisions_identical_for_any_workers_buckets_and_chunking(tmp_path: Path):
    rng = np.random.default_rng(2)
    tasks = [[doc(f"{t}-{i}", rng) for i in range(60)] for t in range(6)]
    for t in range(1, 6):
        for i in range(0, 60, 7):
            src = tasks[t - 1][i]
            tasks[t][i] = doc(f"{t}-{i}", rng, text_hash=src["text_hash"] if i % 2 else None,
                              minhash=src["minhash"][:4] + fresh_bands(rng)[4:])
        tasks[t][5]["doc_id"] = "0-5"  # a repeated id
    write_tasks(tmp_path, tasks)
    one = run(tmp_path, 6, workers=1, n_buckets=1)
    assert len(one) > 40
    # 16 records per sort: many sub-ranges; 7 documents per sorted sign run: several runs per file
    many = run(tmp_path, 6, workers=3, n_buckets=7, chunk_records=16, sign_run_docs=7)
    assert many == one


def test_clustering_holds_only_keys_that_have_a_duplicate(tmp_path: Path):
    rng = np.random.default_rng(3)
    tasks = [[doc(f"{t}-{i}", rng) for i in range(2000)] for t in range(3)]
    for i in range(5):  # 5 exact pairs and 5 near pairs out of 6000 documents
        tasks[2][i] = doc(f"exact{i}", rng, text_hash=tasks[0][i]["text_hash"], minhash=tasks[0][i]["minhash"])
        tasks[2][10 + i] = doc(f"near{i}", rng, minhash=tasks[1][i]["minhash"][:6] + fresh_bands(rng)[6:])
    write_tasks(tmp_path, tasks)
    got = run(tmp_path, 3)
    assert len(got) == 10
    stats = json.loads(Path(ds.GlobalDedupConfig(str(tmp_path), 3, ds.n_buckets_for(3)).stats_path).read_text())
    assert stats["keys_held"] == 20  # the copies and their originals, not the 6000 documents
    # a near pair sharing 6 bands is 6 identical band groups, an exact pair 8: each is held once
    assert stats["band_members_held"] == 2 * 10


def test_repeated_ids_get_their_whole_path(tmp_path: Path):
    rng = np.random.default_rng(4)
    tasks = [[doc("same", rng, file="/a/one/x.jsonl"), doc("other", rng, file="/a/one/x.jsonl")],
             [doc("same", rng, file="/a/two/x.jsonl", status="dropped"), doc("same", rng, file="/a/two/x.jsonl")]]
    write_tasks(tmp_path, tasks)
    got = run(tmp_path, 2)
    assert {k: r["doc_id"] for k, r in got.items()} == {
        doc_key(1, 0): "same@/a/two/x.jsonl:1", doc_key(1, 1): "same@/a/two/x.jsonl:2"}  # same basename, distinct
    assert all(r["reason"] is None for r in got.values())


def test_ids_colliding_after_repair_fail_before_anything_is_written(tmp_path: Path):
    rng = np.random.default_rng(5)
    # the repeat of "x" in /d/b.jsonl:1 would be repaired to an id that a record of /d/a.jsonl already has
    write_tasks(tmp_path, [[doc("x@/d/b.jsonl:1", rng, file="/d/a.jsonl"), doc("x", rng, file="/d/a.jsonl")],
                           [doc("x", rng, file="/d/b.jsonl")]])
    cfg = ds.GlobalDedupConfig(str(tmp_path), 2, 2)
    for s in ds.stages_for(cfg)[:-1]:
        run_stages([s], ExecutorOptions(), str(tmp_path / "logs"), progress=False)
    with pytest.raises(ds.DuplicateIdError, match=r"/d/b.jsonl:1 .* and /d/a.jsonl:1 .*same id even after repair"):
        ds.cluster_and_decide(cfg)
    assert not (tmp_path / "decisions").exists()


def fake_build(out: Path, ids: list[str]) -> str:
    out.mkdir(parents=True)
    con = duckdb.connect(str(out / MANIFEST))
    con.execute("CREATE TABLE segments AS SELECT unnest(?::VARCHAR[]) AS doc_id", [ids])
    con.close()
    return str(out)


def test_exclusion_comes_before_dedup_and_matches_final_ids(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(ds, "EXCLUDE_RUN_IDS", 3)  # several sorted runs per excluded build
    rng = np.random.default_rng(6)
    a = doc("A", rng)
    tasks = [[a, doc("B", rng), doc("gone", rng, status="dropped"), doc("R", rng, file="/p/r.jsonl")],
             [doc("A2", rng, text_hash=a["text_hash"]), doc("A3", rng, text_hash=a["text_hash"]),
              doc("R", rng, file="/p/r2.jsonl")]]
    write_tasks(tmp_path / "w", tasks)
    other = fake_build(tmp_path / "s1", ["A", "A", "gone", "R@/p/r2.jsonl:3"] + [f"noise{i}" for i in range(10)])
    third = fake_build(tmp_path / "s0", ["B", "A"])
    got = run(tmp_path / "w", 2, exclude=(other, third))
    k = by_id(tasks)
    assert {key: (r["reason"], r["duplicate_of"], r["doc_id"]) for key, r in got.items()} == {
        k["A"]: ("excluded", None, None),
        k["B"]: ("excluded", None, None),
        doc_key(1, 1): ("exact-dup", doc_key(1, 0), None),  # A is excluded, so A2 survives and A3 points at it
        doc_key(1, 2): ("excluded", None, "R@/p/r2.jsonl:3"),  # the repeat matched under its repaired id
    }  # "gone" was dropped by stage A: it stays as it was; the first R keeps its id and is not excluded


def test_build_repairs_ids_and_points_duplicates_at_kept_docs(tmp_path: Path):
    data = tmp_path / "data"
    for sub in ("a", "b"):
        (data / sub).mkdir(parents=True)
        text = "The same long enough paragraph about rivers and their banks, repeated in two files. " * 8
        (data / sub / "part.jsonl").write_text("".join(
            json.dumps({"id": f"doc-{i}", "text": text if i == 0 else f"unique text {sub} {i} " * 30}) + "\n"
            for i in range(3)))
    spec = {"name": "ids", "seq_len": 64, "tokenizer": str(TOKENIZER), "dedup": {"minhash": False},
            "sources": [{"name": "s", "uri": str(data / "*" / "part.jsonl")}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = build(tmp_path / "spec.yaml", tmp_path / "out", source_root=None, workers=2)
    con = duckdb.connect(str(out / MANIFEST), read_only=True)
    rows = dict(con.execute("SELECT doc_id, coalesce(reason, status) || ':' || coalesce(duplicate_of, '') "
                            "FROM documents").fetchall())
    later = str(data / "b" / "part.jsonl")
    assert rows == {"doc-0": "kept:", "doc-1": "kept:", "doc-2": "kept:",
                    f"doc-0@{later}:1": "exact-dup:doc-0", f"doc-1@{later}:2": "kept:", f"doc-2@{later}:3": "kept:"}


def test_stage_plan_does_not_depend_on_workers():
    cfg = ds.GlobalDedupConfig("/w", n_tasks=3000, n_buckets=ds.n_buckets_for(3000))
    assert cfg.n_buckets == ds.MAX_BUCKETS and [s.tasks for s in ds.stages_for(cfg)] == [3000, 1024, 1]
    assert [s.name for s in ds.stages_for(replace(cfg, exclude=("x",)))] == [
        "dedup_sign", "dedup_exclude", "dedup_buckets", "dedup_clusters"]


def test_cli_exits_2_when_ids_collide_after_repair(tmp_path: Path):
    from typer.testing import CliRunner

    import cli

    data = tmp_path / "d"
    data.mkdir()
    later = data / "b.jsonl"
    (data / "a.jsonl").write_text(json.dumps({"id": f"x@{later}:1", "text": "first text " * 20}) + "\n" +
                                  json.dumps({"id": "x", "text": "second text " * 20}) + "\n")
    later.write_text(json.dumps({"id": "x", "text": "third text " * 20}) + "\n")
    spec = {"name": "c", "seq_len": 64, "tokenizer": str(TOKENIZER),
            "sources": [{"name": "s", "uri": str(data / "*.jsonl")}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(cli.app, ["build-mixture", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"),
                                       "--no-progress"])
    assert res.exit_code == 2, res.output
    # datatrove logs the task's failure; our one-line message (wrapped by the console) comes last
    assert "error: documents" in res.output and " ".join(res.output.split()).endswith("same id even after repair")
    assert not (tmp_path / "out" / MANIFEST).exists()

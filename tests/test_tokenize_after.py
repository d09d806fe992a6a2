"""`dedup: {tokenize_after: true}` (pipelines/dedup/late_tokens.py): duplicates are never tokenized, the shards are
the same bytes as without the option, for any worker count, and a dropped duplicate's `n_tokens` is null."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest import HUB, ROOT, TOKENIZER, build

PLANTED = HUB / "allenai/dolmino-mix-1124/data/math/dolmino_math_synth/gsm8k-synth/resample_v1_6x/resample-0000.jsonl"
DEDUP = {"exact": True, "minhash": True, "url": True}
DEDUP_REASONS = ("exact-dup", "near-dup", "url-dup")


def _words(rng: random.Random, n: int) -> list[str]:
    return [f"w{rng.randrange(20000)}" for _ in range(n)]


def write_corpus(folder: Path) -> None:
    """Three files: unique documents, near duplicates (one word changed), exact copies under other ids, documents
    that contain GSM8K test items (the mirror's planted ones) and a near duplicate of a kept document in another file."""
    rng = random.Random(7)
    originals = [" ".join(_words(rng, 300)) for _ in range(40)]
    planted = [json.loads(line) for line in PLANTED.read_text().splitlines()][:8]
    folder.mkdir(parents=True)
    a = [{"id": f"orig-{i}", "text": t} for i, t in enumerate(originals)]
    a += [{"id": f"planted-{i}", "text": r["text"]} for i, r in enumerate(planted)]
    b = []
    for i, t in enumerate(originals[:20]):  # near duplicates of the first 20
        w = t.split()
        w[150] = "changed"
        b.append({"id": f"near-{i}", "text": " ".join(w)})
    b += [{"id": f"copy-{i}", "text": t} for i, t in enumerate(originals[20:30])]  # exact copies
    b += [{"id": f"unique-b-{i}", "text": " ".join(_words(rng, 200))} for i in range(15)]
    c = [{"id": f"unique-c-{i}", "text": " ".join(_words(rng, 250))} for i in range(15)]
    c += [{"id": f"copy-planted-{i}", "text": r["text"]} for i, r in enumerate(planted[:3])]
    for name, rows in (("a", a), ("b", b), ("c", c)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _spec(folder: Path, name: str, **dedup) -> Path:
    spec = {"name": "late", "seq_len": 64, "tokenizer": str(TOKENIZER),
            "sources": [{"name": "web", "uri": str(folder / "data" / "*.jsonl")}],
            "dedup": {**DEDUP, **dedup}, "decontaminate": {"ngram": 13}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def _documents(out: Path) -> list[tuple]:
    with duckdb.connect(str(out / "manifest.duckdb"), read_only=True) as con:
        return con.execute("SELECT doc_id, status, reason, duplicate_of, n_tokens FROM documents ORDER BY doc_id"
                           ).fetchall()


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("late")
    write_corpus(tmp / "data")
    return {"before": build(_spec(tmp, "before"), tmp / "before", workers=2),
            "after-1": build(_spec(tmp, "after", tokenize_after=True), tmp / "after-1", workers=1),
            "after-3": build(_spec(tmp, "after", tokenize_after=True), tmp / "after-3", workers=3)}


def test_same_shards_as_tokenizing_everything_for_any_worker_count(builds):
    before = _shards(builds["before"])
    assert before and _shards(builds["after-1"]) == before and _shards(builds["after-3"]) == before


def test_duplicates_are_not_tokenized_and_everything_else_is_as_before(builds):
    before, after = _documents(builds["before"]), _documents(builds["after-1"])
    reasons = {r[2] for r in before}
    assert {"near-dup", "exact-dup", "contaminated"} <= reasons  # the corpus exercises every path
    assert [r[:4] for r in before] == [r[:4] for r in after]  # same decisions, same survivors
    for b, a in zip(before, after):
        if b[2] in DEDUP_REASONS:
            assert b[4] > 0 and a[4] is None, (b, a)  # never tokenized
        else:
            assert a[4] == b[4], (b, a)  # kept ones: the same token counts (contaminated: never tokenized)
    assert _documents(builds["after-3"]) == after


def test_the_late_stage_tokenized_only_the_survivors(builds):
    out = builds["after-1"]
    stats = json.loads(next((out / "work").glob("*/logs/late_tokens/stats.json")).read_text())
    step = next(s for s in stats if "tokenize survivors" in s["name"])
    with duckdb.connect(str(out / "manifest.duckdb"), read_only=True) as con:
        kept, = con.execute("SELECT count(*) FROM documents WHERE status = 'kept'").fetchone()
        dups, = con.execute(f"SELECT count(*) FROM documents WHERE reason IN {DEDUP_REASONS}").fetchone()
    assert step["stats"]["tokenized"]["total"] == kept and dups >= 30
    # no copies pass: exact copies are not tokenized either way
    assert not list((out / "work").glob("*/logs/copies_sign"))


@pytest.mark.parametrize("dedup, packing, message", [
    ({"tokenize_after": "yes"}, None, "dedup.tokenize_after must be true or false"),
    ({"tokenize_after": True}, {"mode": "concat", "loss_mask": True}, "does not combine with loss masks"),
])
def test_bad_tokenize_after_is_one_line_and_exit_2(tmp_path, dedup, packing, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text(json.dumps({"id": "x", "text": "some text " * 20}) + "\n")
    spec = yaml.safe_load(_spec(tmp_path, "bad", **dedup).read_text())
    if packing:
        spec["packing"] = packing
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "cli.py", "build-mixture", str(tmp_path / "bad.yaml"), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and message in proc.stderr + proc.stdout


def test_late_tokens_run_again_on_a_rewritten_file_gives_the_same_intermediates(builds):
    """A build killed after `late_tokens` rewrote a file's intermediates but before datatrove marked the task done
    runs the task again on the rewritten file: the same tokens and rows come out (status and decisions are
    unchanged, the tokens are recomputed from the text), and the next build reuses everything."""
    import pyarrow.parquet as pq

    from pipelines.build.context import prepare
    from pipelines.build.options import BuildOptions
    from pipelines.build.run import plan_stages
    from pipelines.build.spec import load_spec
    from pipelines.steps.intermediate import intermediate_paths

    out = builds["after-1"]
    ctx = prepare(load_spec(str(out.parent / "after.yaml")), BuildOptions(out=str(out), workers=1, progress=False,
                                                                          source_root=str(HUB)))
    stage = next(s for s in plan_stages(ctx) if s.name == "late_tokens")
    for rank in range(stage.tasks):
        docs_path, tok_path, _ = intermediate_paths(str(Path(ctx.work_dir) / "docs"), rank)
        rows, tokens = pq.read_table(docs_path), Path(tok_path).read_bytes()
        data = None
        for step in stage.pipeline:
            data = step.run(data, rank, stage.tasks)
        assert list(data) == []
        assert pq.read_table(docs_path).equals(rows) and Path(tok_path).read_bytes() == tokens
        assert not list(Path(docs_path).parent.glob("*.tmp.*"))
    shards = _shards(out)
    build(out.parent / "after.yaml", out, workers=1)
    assert _shards(out) == shards


def test_on_ray_the_same_shards(builds, tmp_path):
    """The late stage is a per-file stage like stage A: on Ray's executor too, the same bytes."""
    ray = pytest.importorskip("ray", reason="Ray is the `[ray]` extra (make setup installs it)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {
        "PYTHONPATH": str(ROOT)}})
    try:
        on_ray = build(builds["after-1"].parent / "after.yaml", tmp_path / "ray", workers=2, executor="ray")
    finally:
        ray.shutdown()
    assert _shards(on_ray) == _shards(builds["before"])
    assert _documents(on_ray) == _documents(builds["after-1"])

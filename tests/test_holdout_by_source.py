"""By-source packing (rows and shards never mix sources) and held-out documents carved at build time (issue 19),
checked through the manifest, the holdout files and `verify`; and `train --mix` on such a build."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TOKENIZER, build

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
SOURCES = {"web": 300, "math": 80, "code": 150}


def write_sources(d: Path) -> dict[str, dict[str, str]]:
    rng = random.Random(0)
    texts: dict[str, dict[str, str]] = {}
    for name, n in SOURCES.items():
        texts[name] = {}
        with open(d / f"{name}.jsonl", "w") as f:
            for i in range(n):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 120))) + f" {name} é {i}"
                texts[name][f"{name}-{i}"] = text
                f.write(json.dumps({"id": f"{name}-{i}", "text": text}) + "\n")
    return texts


def spec(d: Path, **extra) -> Path:
    raw = {"name": "pools", "seq_len": 64, "tokenizer": str(TOKENIZER), "shard_tokens": 1024,
           "sources": [{"name": n, "uri": str(d / f"{n}.jsonl")} for n in SOURCES], **extra}
    path = d / f"spec-{abs(hash(json.dumps(extra, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


HOLDOUT = {"fraction": 0.05, "max_docs": 5}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pools")
    return d, write_sources(d)


@pytest.fixture(scope="module")
def pools(data):
    d, _ = data
    return build(spec(d, packing={"mode": "concat", "by_source": True}, holdout=HOLDOUT), d / "pools")


def q(out: Path, sql: str):
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_rows_and_shards_never_mix_sources(pools):
    mixed_rows = q(pools, """SELECT count(*) FROM (SELECT s.shard, s.row FROM segments s JOIN documents d USING (doc_id)
                              GROUP BY s.shard, s.row HAVING count(DISTINCT d.source) > 1)""")[0][0]
    assert mixed_rows == 0
    shards = q(pools, "SELECT count(*) FROM shards")[0][0]
    per_source = dict(q(pools, "SELECT source, count(*) FROM source_shards GROUP BY source"))
    assert sum(per_source.values()) == shards and set(per_source) == set(SOURCES)  # every shard is one source's
    # each source's tokens: exactly its kept documents, and its rows padded only at its own end
    kept = dict(q(pools, "SELECT source, sum(n_tokens * n_copies) FROM documents WHERE status = 'kept' GROUP BY 1"))
    written = dict(q(pools, "SELECT source, n_tokens FROM composition"))
    assert kept == written
    rows = dict(q(pools, "SELECT source, sum(n_rows) FROM source_shards GROUP BY 1"))
    assert all(rows[s] == -(-written[s] // 64) for s in SOURCES)


def test_a_plain_concat_build_mixes_sources_and_mixing_it_is_refused(data, pools):
    from trainer.mixing import load_pools

    d, _ = data
    plain = build(spec(d), d / "plain")
    assert q(plain, "SELECT count(*) FROM source_shards")[0][0] < q(plain, "SELECT count(*) FROM shards")[0][0]
    with pytest.raises(ValueError, match=r"shard shards/shard-\d+\.npy mixes sources .* --by-source"):
        load_pools([str(plain)], 64)
    # the by-source build's pools are its sources' rows
    _, found = load_pools([str(pools)], 64)
    rows = dict(q(pools, "SELECT source, sum(n_rows) FROM source_shards GROUP BY 1"))
    assert {s: p.n_units for s, p in found.items()} == rows


def test_holdout_documents_are_in_no_row_and_in_their_files(data, pools):
    from tokenizers import Tokenizer

    _, texts = data
    held = q(pools, "SELECT source, doc_id, reason, n_copies, detail FROM documents WHERE status = 'holdout'")
    assert held and all(r[2] == "held-out" and r[3] == 0 and r[4].startswith(f"holdout/{r[0]}.npy") for r in held)
    assert q(pools, "SELECT count(*) FROM segments s JOIN documents d ON d.doc_id = s.doc_id "
                    "AND d.status = 'holdout'")[0][0] == 0
    per_source = {}
    for s, doc_id, *_ in held:
        per_source.setdefault(s, set()).add(doc_id)
    assert all(len(ids) <= HOLDOUT["max_docs"] for ids in per_source.values())
    table = {r[0]: r for r in q(pools, "SELECT source, path, n_docs, n_tokens, n_bytes, sha256 FROM holdout")}
    assert set(table) == set(per_source)
    tok = Tokenizer.from_file(str(TOKENIZER))
    for source, ids in per_source.items():
        tokens = np.load(pools / "holdout" / f"{source}.npy")
        idx = pq.read_table(pools / "holdout" / f"{source}.idx.parquet")
        assert idx.schema.names == ["doc_id", "start", "length", "n_chars", "n_bytes"]
        assert str(idx.schema.field("doc_id").type) == "string" and tokens.dtype == np.uint16 and tokens.ndim == 1
        assert set(idx["doc_id"].to_pylist()) == ids
        _, path, n_docs, n_tokens, n_bytes, _ = table[source]
        assert (path, n_docs, n_tokens, n_bytes) == (f"holdout/{source}.npy", len(ids), len(tokens),
                                                     sum(idx["n_bytes"].to_pylist()))
        for doc_id, start, length, n_chars, nb in zip(*(idx[c].to_pylist() for c in idx.schema.names)):
            piece = tokens[start:start + length]
            assert piece[-1] == 0  # EOS
            text = texts[source][doc_id]
            assert tok.decode(piece[:-1].tolist()) == text
            assert (n_chars, nb) == (len(text), len(text.encode()))


def test_holdout_is_stable_across_worker_counts_and_capped(data, pools):
    d, _ = data
    again = build(spec(d, packing={"mode": "concat", "by_source": True}, holdout=HOLDOUT), d / "pools-2w", workers=2)
    for f in sorted((pools / "holdout").iterdir()) + sorted((pools / "shards").iterdir()):
        assert f.read_bytes() == (again / f.relative_to(pools)).read_bytes(), f.name
    sel = "SELECT doc_id FROM documents WHERE status = 'holdout' ORDER BY 1"
    assert q(pools, sel) == q(again, sel)
    # a larger cap keeps every document the smaller cap held out (smallest hashes first)
    more = build(spec(d, holdout={"fraction": 0.05, "max_docs": 50}), d / "more")
    assert set(q(pools, sel)) <= set(q(more, sel))
    n = dict(q(more, "SELECT source, count(*) FROM documents WHERE status = 'holdout' GROUP BY 1"))
    assert 0 < sum(n.values()) < 0.15 * sum(SOURCES.values())  # about fraction x docs, well under the cap


def test_verify_checks_holdout_files_and_rows(data, pools):
    from pipelines.shards.verify import verify_build

    d, _ = data
    assert verify_build(pools) == []
    broken = d / "broken"
    shutil.copytree(pools, broken)
    f = next((broken / "holdout").glob("*.npy"))
    arr = np.load(f)
    arr[0] = (int(arr[0]) + 1) % 50000
    np.save(f, arr)
    assert any(f"holdout/{f.name}: sha256 differs" in p for p in verify_build(broken))
    (broken / "holdout" / f.name).unlink()
    assert any(f"holdout/{f.name}: missing" in p for p in verify_build(broken))


def test_rebuild_without_holdout_removes_the_previous_holdout(data, tmp_path):
    d, _ = data
    out = tmp_path / "out"
    build(spec(d, holdout=HOLDOUT), out)
    assert (out / "holdout").is_dir() and q(out, "SELECT count(*) FROM holdout")[0][0] > 0
    build(spec(d), out)
    assert not (out / "holdout").exists()
    assert q(out, "SELECT count(*) FROM documents WHERE status = 'holdout'")[0][0] == 0
    assert "holdout" not in {r[0] for r in q(out, "SELECT table_name FROM information_schema.tables")}


def test_swap_recovery_restores_the_previous_holdout(data, tmp_path):
    """A build killed after moving the previous build aside (swap step 2) gets the previous build back, held-out
    files included."""
    from pipelines.shards.swap import recover_interrupted_swap

    d, _ = data
    out = build(spec(d, holdout=HOLDOUT), tmp_path / "out")
    before = sorted(p.name for p in (out / "holdout").iterdir())
    (out / "manifest.duckdb").rename(out / "manifest.duckdb.prev")
    (out / "shards").rename(out / "shards.prev")
    (out / "holdout").rename(out / "holdout.prev")
    assert recover_interrupted_swap(out).startswith("restored")
    assert sorted(p.name for p in (out / "holdout").iterdir()) == before and (out / "manifest.duckdb").exists()


@pytest.mark.parametrize("extra,message", [
    ({"holdout": {"fraction": 0}}, "field 'holdout.fraction' must be a number in (0, 1]"),
    ({"holdout": {"fraction": 0.1, "max_docs": 0}}, "field 'holdout.max_docs' must be an integer >= 1"),
    ({"holdout": {"fraction": 0.1, "every": 3}}, "field 'holdout' has unknown key(s) ['every']"),
    ({"packing": {"mode": "sft-4k", "by_source": True}}, "field 'packing.by_source' applies to mode concat only"),
    ({"packing": {"mode": "concat", "by_source": "yes"}}, "field 'packing.by_source' must be true or false"),
])
def test_bad_holdout_and_by_source_spec_values(data, extra, message):
    from pipelines.build.spec import SpecError, load_spec

    d, _ = data
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        load_spec(str(spec(d, **extra)))


def test_spec_without_the_new_keys_hashes_as_before(data):
    from pipelines.build.spec import load_spec

    d, _ = data
    s = load_spec(str(spec(d)))
    assert "holdout" not in s.to_dict()  # so shipped specs keep their spec_yaml / spec_hash (fingerprints)
    assert load_spec(str(spec(d, holdout=HOLDOUT))).to_dict()["holdout"] == HOLDOUT


def test_train_mix_on_a_by_source_build(pools, tmp_path):
    import torch

    from trainer.config import TrainConfig
    from trainer.mixing import parse_mix
    from trainer.train import train

    torch.set_num_threads(1)
    mix = {"builds": [str(pools)], "request": parse_mix("web=0.5,code=0.3,math=0.2").to_dict()}
    train(TrainConfig(data=str(pools), out=str(tmp_path / "run"), preset="tiny", steps=25, micro_batch=4,
                      progress=False, plot=False, mix=mix))
    report = json.loads((tmp_path / "run" / "mixture.json").read_text())
    for s, w in (("web", 0.5), ("code", 0.3), ("math", 0.2)):
        assert abs(report["sources"][s]["realized_share"] - w) < 0.01  # 100 rows: whole-row rounding


@pytest.mark.parametrize("args,message", [
    (["--by-source", "--max-tokens", "1000"], "--max-tokens does not combine with by-source packing"),
    (["--by-source"], "--by-source applies to concat packing only"),
])
def test_by_source_flag_errors_exit_2(data, tmp_path, args, message):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    d, _ = data
    s = spec(d, packing={"mode": "sft-4k"}) if "--max-tokens" not in args else spec(d)
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "build-mixture", str(s), "--out", str(tmp_path / "o"),
                        *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    assert r.returncode == 2 and message in r.stdout + r.stderr and "Traceback" not in r.stderr + r.stdout, r.stderr

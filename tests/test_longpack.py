"""Long-context packing: the shipped long-64k / long-256k / long-sft specs built from the mirror at scaled-down
sequence lengths (4,096 / 16,384 with 4,096 windows), plus the packers' pure helpers.

The full-length check (65,536 / 262,144) is `bench/long_context_full.py` (too slow for the test budget on 2 cores).
"""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import yaml
from conftest import build

from pipelines.build.spec import MIXTURES_DIR, SpecError
from pipelines.pack.long import Piece, fill_short_rows, group_distinct, sample_windows
from pipelines.shards.reader import connect
from pipelines.shards.verify import verify_build
from pipelines.synth.longqa import generate as longqa

L1, L2, SUB = 4096, 16384, 4096
NOT_IN_MIRROR = {"textbooks", "stackexchange", "openmathinstruct-2", "mmlu-auxiliary"}  # ../shared/data/hub lacks them


def scaled_spec(name: str, tmp: Path, **changes) -> Path:
    raw = yaml.safe_load((MIXTURES_DIR / f"{name}.yaml").read_text())
    long_sample, short_sample = changes.pop("sample", (1.0, 1.0))
    packing = changes.pop("packing", {})
    raw.update(changes)
    raw["packing"] = {**raw["packing"], **packing}
    # a source with a planned share is never optional: the ones the mirror lacks are left out of the scaled spec
    raw["sources"] = [s for s in raw["sources"] if s["name"] not in NOT_IN_MIRROR]
    for s in raw["sources"]:  # scaled down: fewer short docs keep the test within its CPU budget
        s["sample"] = long_sample if s["packing"] == "long" else short_sample
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def rows_of(out: Path) -> tuple[list[np.ndarray], duckdb.DuckDBPyConnection]:
    con = connect(out)
    arrays = [np.load(out / p) for p, in con.execute("SELECT path FROM shards ORDER BY path").fetchall()]
    return arrays, con


@pytest.fixture(scope="module")
def long_builds(tmp_path_factory, hub):
    """Stage 1 takes 30% of the long documents (and 5% of the short ones); stage 2 reads all long documents (10% of
    the short ones) with --exclude stage 1, so the two overlap in their inputs and exclusion has work to do."""
    tmp = tmp_path_factory.mktemp("long")
    s1 = build(scaled_spec("long-64k", tmp, seq_len=L1, sample=(0.3, 0.05)), tmp / "s1")
    s2 = build(scaled_spec("long-256k", tmp, seq_len=L2, sample=(1.0, 0.1),
                           packing={"sub_seq_len": SUB, "max_windows_per_doc": 4}), tmp / "s2", exclude=(str(s1),))
    return s1, s2


# ------------------------------------------------------------------------------------------------------------------ #
def test_sample_windows_are_disjoint_inside_the_document_and_capped():
    rng = np.random.default_rng(0)
    for n, size, cap in [(10_000, 4096, None), (100_000, 4096, 3), (4096, 4096, 8), (4095, 4096, 8)]:
        starts = sample_windows(n, size, cap, rng)
        assert len(starts) == (min(n // size, cap) if cap else n // size)
        assert all(0 <= s and s + size <= n for s in starts)
        assert all(b - a >= size for a, b in zip(starts, starts[1:]))
    picks = {tuple(sample_windows(100_000, 4096, 3, np.random.default_rng(s))) for s in range(5)}
    assert len(picks) > 1  # random, not always the first windows


def test_short_rows_are_exact_and_discard_the_overflow():
    pieces = [Piece(k, 0, 0, n, "s") for k, n in enumerate([300, 500, 250, 900, 10, 100])]
    rows, tail = fill_short_rows(pieces, 1000)
    assert [sum(p.length for p in r) for r in rows] == [1000, 1000]
    assert [(p.key, p.length) for p in rows[0]] == [(0, 300), (1, 500), (2, 200)]  # doc 2 cut, its 50 tokens gone
    assert [(p.key, p.length) for p in rows[1]] == [(3, 900), (4, 10), (5, 90)]
    assert all(p.doc_start == 0 for r in rows for p in r) and tail == []


def test_group_distinct_never_puts_one_document_twice_in_a_row():
    rng = np.random.default_rng(1)
    units = [Piece(k, 0, i * 10, 10, "s") for k, count in enumerate([7, 1, 1, 2, 3, 1]) for i in range(count)]
    rows, left = group_distinct(units, 4, rng)
    assert all(len(r) == 4 and len({p.key for p in r}) == 4 for r in rows)
    # 3 rows would need sum(min(count, 3)) = 11 >= 12 units: 2 rows is the most possible
    assert len(rows) * 4 + len(left) == len(units) and len(rows) == 2


def test_long_64k_rows_are_exact_and_long_docs_fill_whole_rows(long_builds, hub, tokenizer_path):
    s1, _ = long_builds
    assert verify_build(s1) == []
    arrays, con = rows_of(s1)
    assert con.execute("SELECT seq_len, rope_theta FROM build").fetchone() == (L1, 514640.0)
    assert con.execute("SELECT sum(n_pad) FROM shards").fetchone()[0] == 0
    # every row is covered exactly: segments tile [0, L) without gaps
    bad = con.execute(f"SELECT count(*) FROM (SELECT shard, row, sum(length) AS n FROM segments GROUP BY ALL) "
                      f"WHERE n <> {L1}").fetchone()[0]
    assert bad == 0
    long_sources = ("books", "code_repos", "textbooks")
    # a long-source document never shares a row and always covers all of it
    n_long, n_bad = con.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE s.length <> {L1} OR s.start <> 0)
        FROM segments s JOIN documents d USING (doc_id) WHERE d.source IN {long_sources}""").fetchone()
    assert n_long > 10 and n_bad == 0
    # long docs shorter than L were dropped with a reason, none silently
    short_long = con.execute(f"SELECT count(*) FROM documents WHERE source IN {long_sources} AND status = 'kept' "
                             f"AND n_tokens < {L1}").fetchone()[0]
    assert short_long == 0
    assert con.execute(f"SELECT count(*) FROM documents WHERE reason = 'shorter-than-{L1}'").fetchone()[0] > 0
    # the window written is the document's own tokens at doc_start
    doc_id, shard, row, doc_start = con.execute("""
        SELECT s.doc_id, s.shard, s.row, s.doc_start FROM segments s JOIN documents d USING (doc_id)
        WHERE d.source = 'books' AND s.doc_start > 0 ORDER BY s.doc_id LIMIT 1""").fetchone()
    file, line = con.execute("SELECT file, line FROM documents WHERE doc_id = ?", [doc_id]).fetchone()
    text = [r.text for r in longqa.iter_records(str(hub / file.removeprefix("hf://datasets/")))][line - 1]
    ids = longqa.load_tokenizer(str(tokenizer_path)).encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(arrays[int(shard[-9:-4])][row], np.array(ids[doc_start:doc_start + L1]))


def test_long_256k_packs_four_distinct_windows_and_shares_nothing_with_stage_1(long_builds):
    s1, s2 = long_builds
    assert verify_build(s2) == []
    _, con = rows_of(s2)
    assert con.execute("SELECT seq_len, rope_theta FROM build").fetchone() == (L2, 3691950.0)
    assert con.execute("SELECT sum(n_pad) FROM shards").fetchone()[0] == 0
    con.execute(f"ATTACH '{s1 / 'manifest.duckdb'}' AS s1 (READ_ONLY)")
    shared = con.execute("SELECT count(*) FROM (SELECT DISTINCT doc_id FROM segments "
                         "INTERSECT SELECT DISTINCT doc_id FROM s1.segments)").fetchone()[0]
    assert shared == 0
    n_excluded = con.execute("SELECT count(*) FROM documents WHERE reason = 'excluded'").fetchone()[0]
    n_s1 = con.execute("SELECT count(DISTINCT doc_id) FROM s1.segments").fetchone()[0]
    assert n_excluded == n_s1  # every stage-1 document was seen and refused
    rows = con.execute("""
        SELECT list(d.source), list(s.length), count(DISTINCT s.doc_id), count(*)
        FROM segments s JOIN documents d USING (doc_id) GROUP BY s.shard, s.row""").fetchall()
    kinds = {"full": 0, "4x": 0, "short": 0}
    for sources, lengths, n_distinct, n in rows:
        assert sum(lengths) == L2
        if set(sources) <= {"books", "code_repos", "textbooks"}:
            if lengths == [L2]:
                kinds["full"] += 1
            else:
                assert lengths == [SUB] * 4 and n_distinct == 4
                kinds["4x"] += 1
        else:
            kinds["short"] += 1
    assert all(v > 0 for v in kinds.values()), kinds


def test_shares_budget_sources_under_max_tokens(tmp_path, hub):
    budget = 40 * L1
    spec = scaled_spec("long-64k", tmp_path, seq_len=L1, sample=(0.25, 0.05))
    out = build(spec, tmp_path / "b", max_tokens=budget)
    con = connect(out)
    comp = dict(con.execute("SELECT source, n_tokens FROM composition").fetchall())
    assert sum(comp.values()) <= budget
    assert 0.30 * budget - L1 <= comp["books"] <= 0.30 * budget  # share met to within a row
    assert comp["arxiv"] <= 0.03 * budget
    assert con.execute("SELECT count(*) FROM documents WHERE reason = 'over-share'").fetchone()[0] > 0


def test_long_sft_pads_rows_and_masks_exactly_the_answers(tmp_path, hub, tokenizer_path):
    # long-QA samples in the synth output format (books from the mirror, canned QA), plus the short SFT sources
    books = hub / "princeton-nlp/prolong-raw/books/books-0000.json.gz"
    prompts = longqa.load_prompts()
    qa_dir = tmp_path / "out/synth/long-qa"
    qa_dir.mkdir(parents=True)
    samples = [longqa.make_sample(f"qa-{r.doc_id}", "book", [r.text[:20_000]], f"What happens in {r.doc_id}?",
                                  f"Many things happen in {r.doc_id}.", prompts) for r in longqa.iter_records(str(books))]
    (qa_dir / "books.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    raw = yaml.safe_load((MIXTURES_DIR / "long-sft.yaml").read_text())
    raw["seq_len"] = L2
    # only the books QA is synthesised here: a source with a planned share is never optional, so the others go
    raw["sources"] = [s for s in raw["sources"] if (not s["uri"].startswith("out/") or s["name"] == "longqa-books")
                      and s["name"] not in NOT_IN_MIRROR]
    for s in raw["sources"]:
        if s["uri"].startswith("out/"):
            s["uri"] = str(tmp_path / s["uri"])
        s.pop("filter", None)  # the mirror's Tülu rows are all GSM8K-derived: no persona-IF `source` to select
    spec = tmp_path / "long-sft.yaml"
    spec.write_text(yaml.safe_dump(raw))
    out = build(spec, tmp_path / "sft")
    assert verify_build(out) == []
    con = connect(out)
    assert con.execute("SELECT has_loss_mask FROM build").fetchone()[0]
    tok = longqa.load_tokenizer(str(tokenizer_path))
    by_id = {s["id"]: s for s in samples}
    n_checked = 0
    for path, n_rows in con.execute("SELECT path, n_rows FROM shards ORDER BY path").fetchall():
        arr, mask = np.load(out / path), np.load(out / path.replace(".npy", ".mask.npy"))
        assert arr.shape == mask.shape == (n_rows, L2)
        segs = con.execute("SELECT row, start, length, doc_id, doc_start FROM segments WHERE shard = ? "
                           "ORDER BY row, start", [path]).fetchall()
        ends: dict[int, int] = {}
        for row, start, length, doc_id, doc_start in segs:
            assert doc_start == 0 and start == ends.get(row, 0)  # whole samples, contiguous from offset 0
            ends[row] = start + length
            if doc_id in by_id:  # the mask is 1 exactly on the answer's tokens (+ the EOS closing it)
                s = by_id[doc_id]
                enc = tok.encode(s["text"], add_special_tokens=False)
                expected = [1 if a >= s["answer_start"] else 0 for a, _ in enc.offsets] + [1]
                np.testing.assert_array_equal(mask[row, start:start + length], expected)
                np.testing.assert_array_equal(arr[row, start:start + length], enc.ids + [0])
                n_checked += 1
        for row, end in ends.items():  # padding only after the last sample of a row
            assert (arr[row, end:] == 1).all() and (mask[row, end:] == 0).all()
    assert n_checked == len(samples)
    pad = dict(con.execute("SELECT source, pad_fraction FROM padding").fetchall())
    assert set(pad) >= {"longqa-books", "ultrachat-200k", "tulu3-if"} and all(0 <= v < 1 for v in pad.values())
    n_pad_view, n_pad_shards = con.execute("SELECT (SELECT sum(n_pad) FROM padding), sum(n_pad) FROM shards").fetchone()
    assert abs(n_pad_view - n_pad_shards) <= len(pad)  # rounding per source only
    # openmathinstruct-2 (share 0.10) is not in the mirror: with it in the spec the build stops instead of writing
    # a mix without it (a planned share is never optional)
    raw["sources"].append(next(s for s in yaml.safe_load((MIXTURES_DIR / "long-sft.yaml").read_text())["sources"]
                               if s["name"] == "openmathinstruct-2"))
    spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="source 'openmathinstruct-2' carries a planned share"):
        build(spec, tmp_path / "sft-missing")


def test_long_packing_runs_in_bounded_partitions_and_accounts_for_every_document(tmp_path, hub, monkeypatch):
    """A build larger than one pack partition is packed partition by partition (each sees only its documents'
    lengths): rows stay exact, every document is placed or dropped with a reason, the budget holds, and the
    partition count -- from the data size -- does not change with the worker count."""
    from pipelines.pack import layout

    monkeypatch.setattr(layout, "ITEMS_PER_PARTITION", 2_000)  # the mirror's long-64k inputs: several partitions
    budget = 60 * L1
    spec = scaled_spec("long-64k", tmp_path, seq_len=L1, sample=(0.5, 0.1))
    one = build(spec, tmp_path / "w1", workers=1, max_tokens=budget)
    plan_parts = list((one / "work").glob("*/stage_b/plan/*.json"))
    assert len(plan_parts) >= 3, plan_parts
    con = connect(one)
    assert verify_build(one) == []
    assert con.execute("SELECT sum(n_pad) FROM shards").fetchone()[0] == 0  # long rows: exactly seq_len, no padding
    assert con.execute("SELECT count(*) FROM documents WHERE status = 'kept' AND doc_id NOT IN "
                       "(SELECT doc_id FROM segments)").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM documents WHERE status = 'dropped' AND reason IS NULL").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM documents WHERE reason = 'over-share'").fetchone()[0] > 0
    comp = dict(con.execute("SELECT source, n_tokens FROM composition").fetchall())
    assert sum(comp.values()) <= budget
    assert 0.30 * budget - len(plan_parts) * L1 <= comp["books"] <= 0.30 * budget  # within a row per partition
    two = build(spec, tmp_path / "w2", workers=2, max_tokens=budget)
    digest = lambda out: {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}  # noqa: E731
    assert digest(two) == digest(one)

"""Dedup + decontamination inside a real `build-mixture stage2-clean` from the mirror (the session
`stage2_clean_build`; the faithful `stage2` does neither, as Instella)."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
from typer.testing import CliRunner

PLANTED = "allenai/dolmino-mix-1124/data/math/dolmino_math_synth/gsm8k-synth/resample_v1_6x/resample-0000.jsonl"
# incidental hits listed in shared/data/README.md (only OpenHermes row 162 is in stage2)
INCIDENTAL = {"openhermes-2.5/openhermes2_5.json:163", "teknium/OpenHermes-2.5/openhermes2_5.json:163"}


def q(out: Path, sql: str):
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_planted_docs_dropped_with_exact_ids(stage2_clean_build: Path, hub: Path):
    want = {}
    for line in (hub / PLANTED).read_text().splitlines():
        rec = json.loads(line)
        want[rec["id"]] = rec["metadata"]["embedded_benchmark_id"]
    rows = q(stage2_clean_build, """SELECT d.doc_id, d.status, d.reason, c.benchmark, c.item_id, c.n_matches
                              FROM documents d LEFT JOIN contamination c USING (doc_id)
                              WHERE d.source = 'dolmino-math-synth'""")
    got = {r[0]: r[1:] for r in rows}
    assert set(got) == set(want)
    for doc_id, item in want.items():
        status, reason, bench, item_id, n = got[doc_id]
        assert (status, reason, bench, item_id) == ("dropped", "contaminated", "gsm8k", item) and n >= 1
    # one hit per planted doc: each names its own test item and nothing else
    assert q(stage2_clean_build, "SELECT count(*) FROM contamination c JOIN documents d USING (doc_id) "
                           "WHERE d.source = 'dolmino-math-synth'") == [(20,)]


def test_no_other_contamination_and_nothing_written(stage2_clean_build: Path):
    contaminated = {r[0] for r in q(stage2_clean_build, "SELECT doc_id FROM documents WHERE reason = 'contaminated'")}
    others = {d for d in contaminated if not d.startswith("contaminated-gsm8k-test-")}
    print(f"\nstage2: {len(contaminated)} contaminated docs, others: {sorted(others)}")
    assert others <= INCIDENTAL
    assert {r[0] for r in q(stage2_clean_build, "SELECT DISTINCT doc_id FROM contamination")} == contaminated
    assert q(stage2_clean_build, "SELECT count(*) FROM segments s JOIN documents d USING (doc_id) "
                           "WHERE d.reason = 'contaminated'") == [(0,)]
    # GSM8K *train* (Dolmino math/gsm8k) is training data: none of it is flagged
    assert q(stage2_clean_build, "SELECT count(*) FROM documents WHERE source = 'dolmino-math-gsm8k' "
                           "AND reason = 'contaminated'") == [(0,)]
    assert q(stage2_clean_build, "SELECT n_docs FROM composition WHERE source = 'dolmino-math-synth'") == [(0,)]


def test_duplicates_point_at_kept_survivors(stage2_clean_build: Path):
    rows = q(stage2_clean_build, """SELECT d.doc_id, d.reason, d.duplicate_of, s.status, d.n_copies
                              FROM documents d LEFT JOIN documents s ON s.doc_id = d.duplicate_of
                              WHERE d.reason IN ('exact-dup', 'near-dup', 'url-dup')""")
    assert rows, "the mirror's stage2 has duplicate flan/dm-maths docs"
    for doc_id, reason, dup_of, survivor_status, n_copies in rows:
        assert dup_of and dup_of != doc_id and survivor_status == "kept" and n_copies == 0, (doc_id, reason)
    assert q(stage2_clean_build, "SELECT count(*) FROM documents WHERE duplicate_of IS NOT NULL "
                           "AND reason NOT IN ('exact-dup', 'near-dup', 'url-dup')") == [(0,)]


def test_contamination_command(stage2_clean_build: Path):
    import cli

    res = CliRunner().invoke(cli.app, ["contamination", str(stage2_clean_build), "--items", "3"])
    assert res.exit_code == 0, res.output
    assert "gsm8k" in res.output and "dolmino-math-synth" in res.output and "contaminated-gsm8k-test-" in res.output
    res = CliRunner().invoke(cli.app, ["contamination", str(stage2_clean_build / "nope")])
    assert res.exit_code == 2 and "no manifest" in res.output

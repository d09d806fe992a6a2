"""Issue 20, defect 10: a MinHash LSH candidate pair is dropped only when its estimated Jaccard (share of equal
signature values) reaches the threshold; the estimate is recorded in `documents.detail`."""
from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
import pytest
from conftest import build
from test_integrity_inputs import write_spec

from pipelines.dedup.signatures import DedupConfig, MinHasher


def short_pair(rng: random.Random) -> tuple[str, str]:
    """Two 22-word documents differing in one word in the middle: Jaccard of 5-gram shingles 0.565 (< 0.69)."""
    words = [f"w{rng.randrange(5000)}" for _ in range(22)]
    other = list(words)
    other[11] = f"z{rng.randrange(5000)}"
    return " ".join(words), " ".join(other)


def long_pair(rng: random.Random) -> tuple[str, str]:
    """A 300-word document and a copy with one word changed: Jaccard ~0.97."""
    words = [f"v{rng.randrange(5000)}" for _ in range(300)]
    other = list(words)
    other[150] = "changed"
    return " ".join(words), " ".join(other)


def test_signatures_estimate_jaccard_of_planted_pairs():
    h = MinHasher(DedupConfig())
    rng = random.Random(0)
    a, b = short_pair(rng)
    sig, has = h.signatures_batch([a, b])
    assert has.all() and 0.35 < (sig[0] == sig[1]).mean() < 0.8


def test_near_dups_are_confirmed_by_estimated_jaccard_and_recorded(tmp_path: Path):
    rng = random.Random(1)
    shorts = [short_pair(rng) for _ in range(120)]  # band-only LSH drops ~16% of these (issue 20)
    longs = [long_pair(rng) for _ in range(10)]
    records = [{"id": f"short-{i}-{k}", "text": t} for i, p in enumerate(shorts) for k, t in enumerate(p)]
    records += [{"id": f"long-{i}-{k}", "text": t} for i, p in enumerate(longs) for k, t in enumerate(p)]
    src = tmp_path / "planted.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = write_spec(tmp_path, [{"name": "planted", "uri": str(src)}],
                      dedup={"exact": True, "minhash": True, "url": False})
    out = build(spec, tmp_path / "out")
    con = duckdb.connect(str(out / "manifest.duckdb"), read_only=True)
    near = con.execute("SELECT doc_id, duplicate_of, detail FROM documents WHERE reason = 'near-dup' "
                       "ORDER BY doc_id").fetchall()
    con.close()
    assert not [d for d, _, _ in near if d.startswith("short-")]  # old code: ~19 of 120 short pairs dropped
    assert sorted(d for d, _, _ in near) == sorted(f"long-{i}-1" for i in range(10))
    for doc_id, dup_of, detail in near:
        assert dup_of == doc_id[:-1] + "0"
        est = float(detail.split("estimated jaccard ")[1].split()[0])
        assert est >= DedupConfig().jaccard_threshold


def test_verify_false_keeps_band_only_decisions():
    from test_text_integrity import dedup_drops

    rng = random.Random(2)
    texts = [t for _ in range(150) for t in short_pair(rng)]
    assert dedup_drops(texts, DedupConfig(url=False)) == {}
    assert len(dedup_drops(texts, DedupConfig(url=False, verify=False))) > 5  # the old behaviour, on purpose


@pytest.mark.parametrize("bad", [0, 1.5, "high", True])
def test_bad_threshold_is_a_spec_error(bad):
    with pytest.raises(ValueError, match="dedup.threshold"):
        DedupConfig.from_spec({"threshold": bad})


def test_candidate_pairs_are_every_pair_of_small_groups_and_a_star_and_chain_of_large_ones():
    """The clustering step proposes pairs for all band groups at once (vectorised by group size); the set must be
    the documented one, for groups on both sides of GROUP_ALL_PAIRS."""
    import numpy as np

    from pipelines.dedup.global_stages import GROUP_ALL_PAIRS, candidate_pairs

    rng = np.random.default_rng(0)
    sizes = [2, 3, 3, 5, GROUP_ALL_PAIRS, GROUP_ALL_PAIRS + 1, 2, 150, 4]
    gid, key, expected = [], [], set()
    for g, m in enumerate(sizes):
        members = np.sort(rng.choice(10_000, m, replace=False)).astype(np.int64) + (g % 3 << 32)
        gid += [g] * m
        key += members.tolist()
        if m <= GROUP_ALL_PAIRS:
            expected |= {(int(a), int(b)) for i, a in enumerate(members) for b in members[i + 1:]}
        else:
            expected |= {(int(members[0]), int(b)) for b in members[1:]}
            expected |= {(int(a), int(b)) for a, b in zip(members[1:-1], members[2:])}
    u, v = candidate_pairs(np.array(gid, np.int64), np.array(key, np.int64))
    assert list(zip(u.tolist(), v.tolist())) == sorted(expected)  # distinct, u < v, sorted


def test_stored_signatures_are_read_back_with_missing_ones_unknown(tmp_path: Path):
    """`Signatures` reads `minhash_sig` for chosen keys at once: values for signed rows, unknown (NaN Jaccard) for
    rows without one (empty or null), whatever the row order asked for."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.dedup.global_stages import GlobalDedupConfig, Signatures
    from pipelines.steps.intermediate import intermediate_paths

    sigs = [np.arange(8, dtype=np.uint32) + 10 * i for i in range(6)]
    values = [sigs[0].tobytes(), None, sigs[2].tobytes(), b"", sigs[4].tobytes(), sigs[0].tobytes()]
    docs = tmp_path / "docs"
    docs.mkdir()
    pq.write_table(pa.table({"minhash_sig": pa.array(values, pa.binary())}), intermediate_paths(str(docs), 3)[0])
    cfg = GlobalDedupConfig(work_dir=str(tmp_path), n_tasks=4, n_buckets=1)
    k = lambda i: (3 << 32) | i  # noqa: E731
    s = Signatures(cfg, np.array([k(5), k(4), k(1), k(0), k(3), k(2)], np.int64))
    u, v = np.array([k(0), k(0), k(0), k(2)], np.int64), np.array([k(5), k(2), k(1), k(3)], np.int64)
    est = s.jaccard(u, v)
    assert est[0] == 1.0 and est[1] == 0.0 and np.isnan(est[2]) and np.isnan(est[3])

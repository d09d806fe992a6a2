"""Decontamination: planted GSM8K test items in the mirror, no false positives over the whole mirror, surface changes."""
from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path

import pytest
from datatrove.data import Document
from quality_mirror import iter_mirror_docs

from pipelines.decontam.ngram import (
    DecontamConfig,
    DecontaminationStep,
    DecontamIndex,
    build_decontam_index,
)

PLANTED = "allenai/dolmino-mix-1124/data/math/dolmino_math_synth/gsm8k-synth/resample_v1_6x/resample-0000.jsonl"
# the incidental hits shared/data/README.md lists (a real corpus would have them too); allowed, not required
INCIDENTAL = {"cpython-lib-heapq", "cpython-lib-doctest", "teknium/OpenHermes-2.5/openhermes2_5.json:163"}


@pytest.fixture(scope="session")
def index(tmp_path_factory, shared: Path) -> DecontamIndex:
    cfg = DecontamConfig.from_spec({}, shared)
    path = tmp_path_factory.mktemp("decontam") / "index"
    build_decontam_index(cfg, path)
    return DecontamIndex(path)


@pytest.fixture(scope="session")
def mirror_docs(hub: Path) -> list[tuple[str, str, str]]:
    return list(iter_mirror_docs(hub))


@pytest.fixture(scope="session")
def planted_ids(hub: Path) -> dict[str, str]:
    """doc id -> the GSM8K test id embedded in it (from the mirror's own metadata)."""
    out = {}
    for line in (hub / PLANTED).read_text().splitlines():
        rec = json.loads(line)
        out[rec["id"]] = rec["metadata"]["embedded_benchmark_id"]
    assert len(out) == 20
    return out


def test_default_suite_and_index_contents(index: DecontamIndex):
    meta = index.meta
    assert set(meta["items_per_benchmark"]) == {"arc_challenge", "arc_easy", "boolq", "hellaswag", "piqa", "sciq",
                                                 "winogrande", "openbookqa", "mmlu", "bbh", "gsm8k", "minerva_math"}
    assert meta["items_per_benchmark"]["gsm8k"] == 1319  # test split only: train is training data here
    assert meta["short_lengths"] == [8, 9, 10, 11, 12] and meta["n_short"] > 1000 and meta["n_hashes"] > 10**6
    assert meta["unmatchable_items"] < 0.02 * meta["n_items"]


def scan(index: DecontamIndex, docs: list[tuple[str, str, str]], **kw) -> dict[str, list[dict]]:
    """doc_id -> hits for docs with any, matched in ~1 MB batches as the build step does."""
    out, batch, size = {}, [], 0
    for i, (_, doc_id, text) in enumerate(docs):
        batch.append((doc_id, text))
        size += len(text)
        if size >= 1 << 20 or i == len(docs) - 1:
            out.update((d, h) for (d, _), h in zip(batch, index.hits_batch([t for _, t in batch], **kw)) if h)
            batch, size = [], 0
    return out


def test_whole_mirror_only_planted_and_listed_incidental(index, mirror_docs, planted_ids):
    hits = scan(index, mirror_docs)
    # every planted doc hits exactly its own GSM8K test item, and nothing else
    for doc_id, item in planted_ids.items():
        assert [(h["benchmark"], h["item_id"]) for h in hits.get(doc_id, [])] == [("gsm8k", item)], doc_id
    others = set(hits) - set(planted_ids)
    assert others <= INCIDENTAL, {k: hits[k] for k in others - INCIDENTAL}
    # the short-item rule (whole-sequence containment, 8-12 words) alone: no hit outside the planted docs
    short_hits = set(scan(index, mirror_docs, rules=("short",)))
    print(f"\nmirror: {len(mirror_docs):,} docs, {len(hits)} contaminated ({len(others)} incidental: "
          f"{sorted(others)}); short-item rule hits outside the planted docs: {len(short_hits - set(planted_ids))}")
    assert short_hits - set(planted_ids) == set()


def _gsm8k_test(shared: Path, i: int) -> dict:
    return json.loads((shared / "gsm8k" / "test.jsonl").read_text().splitlines()[i])


def _bench_row(shared: Path, name: str, pred) -> dict:
    with gzip.open(shared / "benchmarks" / f"{name}.jsonl.gz", "rt") as f:
        return next(r for r in map(json.loads, f) if pred(r))


def _surface_variants(question: str, choices: list[str] | None) -> dict[str, str]:
    """The item as planted text (question, then its choices one per line) under surface changes."""
    listed = "\n".join(f"{'ABCDEFGH'[k]}) {c}" for k, c in enumerate(choices or []))
    item = "\n".join([question, *(choices or [])])
    return {
        "upper": item.upper(),
        "lower": item.lower(),
        "collapsed-ws": " ".join(item.split()).replace(", ", ","),
        "added-ws": "  \n\t ".join(item.split(" ")),
        "wrapped": textwrap.fill(item, width=28),
        "markdown": f"### Problem\n\n> **{question}**\n\n```\n{item}\n```\n- _done_",
        "choices-A)": f"Question: {question}\n{listed}\nAnswer:" if choices else f"Question: {question}\nAnswer:",
        "choices-(a)": f"{question}\n" + "  ".join(f"({'abcdefgh'[k]}) {c}" for k, c in enumerate(choices or [])),
    }


@pytest.mark.parametrize("case", ["gsm8k", "arc-short", "mmlu", "hellaswag"])
def test_planted_text_survives_surface_changes(index, mirror_docs, shared, case):
    if case == "gsm8k":
        row = _gsm8k_test(shared, 17)
        bench, item, question, choices = "gsm8k", "gsm8k-test-17", row["question"], None
    elif case == "arc-short":  # 6-word question: matched as question + choices (whole-sequence rule)
        r = _bench_row(shared, "arc_easy", lambda r: r["id"] == "MCAS_2000_4_6")
        bench, item, question, choices = "arc_easy", r["id"], r["question"], r["choices"]
    elif case == "mmlu":
        r = _bench_row(shared, "mmlu", lambda r: 14 <= len(r["question"].split()) <= 30)
        bench, item, question, choices = "mmlu", r["id"], r["question"], r["choices"]
    else:
        r = _bench_row(shared, "hellaswag", lambda r: len(r["question"].split()) >= 20)
        bench, item, question, choices = "hellaswag", r["id"], r["question"], r["choices"]
    filler = next(t for f, _, t in mirror_docs if "dolmino-mix-1124/data/wiki" in f and len(t) > 2000)
    assert index.hits(filler) == []
    for name, variant in _surface_variants(question, choices).items():
        doc = filler[:1000] + "\n\n" + variant + "\n\n" + filler[1000:2000]
        hits = index.hits(doc)
        assert (bench, item) in {(h["benchmark"], h["item_id"]) for h in hits}, (case, name, hits)


def test_short_question_alone_is_not_enough(index, shared):
    """A 6-word ARC question without its choices is too generic to call contamination."""
    r = _bench_row(shared, "arc_easy", lambda r: r["id"] == "MCAS_2000_4_6")
    assert index.hits(f"Some chat. {r['question']} Nobody knows.") == []


def test_gsm8k_train_is_data_not_benchmark(tmp_path, shared):
    """Rows of a `train` split are skipped (counted), so GSM8K train in the mixture is never flagged."""
    bench = tmp_path / "mixed.jsonl"
    train = [json.loads(x) for x in (shared / "gsm8k" / "train.jsonl").read_text().splitlines()[:3]]
    test = _gsm8k_test(shared, 5)
    rows = [{"benchmark": "gsm8k", "split": "train", "id": f"tr-{i}", "question": r["question"], "answer": r["answer"]}
            for i, r in enumerate(train)]
    rows.append({"benchmark": "gsm8k", "split": "test", "id": "te-5", "question": test["question"], "answer": test["answer"]})
    bench.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = DecontamConfig.from_spec({"benchmarks": str(bench)}, tmp_path)
    build_decontam_index(cfg, tmp_path / "idx", use_cache=False)
    idx = DecontamIndex(tmp_path / "idx")
    assert idx.meta["skipped_rows"] == {"split=train": 3} and idx.meta["n_items"] == 1
    assert idx.hits(train[0]["question"] + "\n" + train[0]["answer"]) == []
    assert [h["item_id"] for h in idx.hits(test["question"])] == ["te-5"]


def test_bad_benchmark_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine question here", "id": "a"}\n{not json\n')
    cfg = DecontamConfig.from_spec({"benchmarks": [str(bad)]}, tmp_path)
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        build_decontam_index(cfg, tmp_path / "idx", use_cache=False)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        DecontamConfig.from_spec({"benchmarks": "nothing-here/*.jsonl"}, tmp_path)
    with pytest.raises(ValueError, match="unknown key"):
        DecontamConfig.from_spec({"ngrams": 13}, tmp_path)


def test_step_marks_and_yields_every_doc(index, shared, planted_ids, hub):
    cfg = DecontamConfig.from_spec({}, shared)
    planted = json.loads((hub / PLANTED).read_text().splitlines()[0])
    docs = [
        Document(text=planted["text"], id=planted["id"], metadata={"status": "kept", "reason": None}),
        Document(text="A perfectly ordinary sentence about farming in the valley.", id="clean",
                 metadata={"status": "kept", "reason": None}),
        Document(text=planted["text"], id="already-dropped", metadata={"status": "dropped", "reason": "sampled-out"}),
    ]
    out = list(DecontaminationStep(cfg, index.path).run(iter(docs)))
    assert [d.id for d in out] == [planted["id"], "clean", "already-dropped"]
    first, clean, dropped = (d.metadata for d in out)
    assert (first["status"], first["reason"]) == ("dropped", "contaminated")
    assert first["contamination"] == [{"benchmark": "gsm8k", "item_id": planted_ids[planted["id"]],
                                       "n_matches": first["contamination"][0]["n_matches"]}]
    assert first["contamination"][0]["n_matches"] >= 1
    assert clean["status"] == "kept" and "contamination" not in clean
    assert dropped["reason"] == "sampled-out" and "contamination" not in dropped


def test_batches_match_like_single_docs_and_never_across_docs(index, shared, mirror_docs, planted_ids):
    """The step matches ~1 MB batches at once: same hits as one doc at a time, and no n-gram spans two docs."""
    q = _gsm8k_test(shared, 42)["question"].split()
    pieces = [" ".join(q[i:i + 10]) for i in range(0, len(q), 10)]  # < 13 words each: no 13-gram of their own
    assert index.hits(" ".join(pieces)) and index.hits_batch(pieces) == [[]] * len(pieces)
    sample = [t for _, d, t in mirror_docs[::97]] + [t for _, d, t in mirror_docs if d in planted_ids][:5]
    texts = [*pieces, *sample, "", *pieces]
    assert index.hits_batch(texts) == [index.hits(t) for t in texts]
    assert sum(bool(h) for h in index.hits_batch(texts)) == 5

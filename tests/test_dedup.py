"""Dedup: near-duplicate recall on controlled word edits of mirror docs, exact and URL dedup, determinism."""
from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest
from datatrove.data import Document
from quality_mirror import iter_mirror_docs

from pipelines.dedup.signatures import DedupConfig, DedupSignatureStep, find_duplicates
from pipelines.text import fold_exact, fold_words

N_BASE = 300


def shingles(text: str, n: int = 5) -> set[tuple[bytes, ...]]:
    w = fold_words(text).split()
    return {tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def edit_words(text: str, n_edits: int, rng: random.Random, vocab: list[str]) -> str:
    """Substitute, insert or delete `n_edits` random words (whitespace tokens) of text."""
    words = text.split()
    for _ in range(n_edits):
        i = rng.randrange(len(words))
        op = rng.choice(("sub", "ins", "del"))
        if op == "sub":
            words[i] = rng.choice(vocab)
        elif op == "ins":
            words.insert(i, rng.choice(vocab))
        elif len(words) > 10:
            del words[i]
    return " ".join(words)


@pytest.fixture(scope="session")
def base_docs(hub: Path) -> list[tuple[str, str]]:
    """Mirror docs of 150-1500 words from several folders, deterministic choice, mutually dissimilar."""
    pool = [(d, t) for f, d, t in iter_mirror_docs(hub)
            if f.startswith(("allenai/OLMoE-mix-0924/data/dclm", "allenai/OLMoE-mix-0924/data/wiki",
                             "princeton-nlp/prolong-raw/fineweb-edu", "allenai/OLMoE-mix-0924/data/arxiv"))
            and 150 <= len(t.split()) <= 1500]
    rng = random.Random(7)
    rng.shuffle(pool)
    return pool[:N_BASE]


def run_signatures(cfg: DedupConfig, docs: list[tuple[str, str, dict]]) -> pl.DataFrame:
    step = DedupSignatureStep(cfg)
    out = list(step.run(iter(Document(text=t, id=i, metadata=dict(m)) for i, t, m in docs)))
    return pl.DataFrame({
        "key": list(range(len(out))), "doc_id": [d.id for d in out],
        "text_hash": [d.metadata["text_hash"] for d in out], "minhash": [d.metadata.get("minhash") for d in out],
        "url": [d.metadata["url"] for d in out],
    }, schema={"key": pl.Int64, "doc_id": pl.Utf8, "text_hash": pl.Int64, "minhash": pl.List(pl.Int64),
               "url": pl.Utf8})


def test_near_dup_recall_and_precision(base_docs):
    cfg = DedupConfig.from_spec({"exact": True, "minhash": True, "url": True})
    rng = random.Random(11)
    vocab = sorted({w for _, t in base_docs[:20] for w in t.split()})
    docs, pairs = [], []  # pairs: (copy id, original id, jaccard)
    for k, (doc_id, text) in enumerate(base_docs):
        docs.append((doc_id, text, {"status": "kept"}))
        if k % 5 == 4:
            continue  # a fifth of the docs have no copy: they must all survive
        n_words = len(text.split())
        # exact copy, then ~0.7%, ~1.7% and ~5% of the words edited: Jaccard ~0.95, ~0.88 and ~0.7
        n_edits = [0, max(1, n_words // 150), max(1, n_words // 60), max(2, n_words // 20)][k % 5]
        copy = edit_words(text, n_edits, rng, vocab) if n_edits else text
        pairs.append((f"{doc_id}~copy", doc_id, jaccard(text, copy), n_edits == 0))
        docs.append((f"{doc_id}~copy", copy, {"status": "kept"}))
    df = run_signatures(cfg, docs)
    found = find_duplicates(df, cfg).join(df.select("key", "doc_id"), on="key")
    dropped = dict(zip(found["doc_id"].to_list(), zip(found["reason"].to_list(), found["duplicate_of"].to_list())))

    # precision: only copies are dropped, each as a duplicate of its own original (originals come first in order)
    partner = {c: o for c, o, _, _ in pairs}
    assert set(dropped) <= set(partner), set(dropped) - set(partner)
    assert all(dropped[c][1] == partner[c] for c in dropped)
    # exact copies always go, as exact-dup
    exact = [c for c, _, _, is_exact in pairs if is_exact]
    assert exact and all(dropped.get(c, (None,))[0] == "exact-dup" for c in exact)
    # recall for Jaccard >= 0.85 (the edit sizes put pairs on both sides of it)
    hi = [c for c, _, j, is_exact in pairs if j >= 0.85 and not is_exact]
    lo = [c for c, _, j, _ in pairs if j < 0.7]
    recall = sum(c in dropped for c in hi) / len(hi)
    print(f"\n{len(hi)} near-dup pairs with J >= 0.85: recall {recall:.3f}; "
          f"{len(lo)} pairs with J < 0.7: {sum(c in dropped for c in lo)} caught; {len(exact)} exact copies")
    assert len(hi) >= 60 and recall >= 0.95
    # an edit can leave the exact key unchanged (a word replaced by itself): then it is an exact dup
    texts = {i: t for i, t, _ in docs}
    assert all(dropped[c][0] == ("exact-dup" if fold_exact(texts[c]) == fold_exact(texts[partner[c]]) else "near-dup")
               for c in hi if c in dropped)


def test_exact_url_and_deterministic_survivor():
    cfg = DedupConfig.from_spec({"exact": True, "minhash": False, "url": True})
    docs = [
        ("a", "The quick brown fox jumps over the lazy dog near the river bank.", {"status": "kept"}),
        ("b", "THE QUICK brown fox   jumps over the lazy\ndog near the river bank. ", {"status": "kept"}),  # case, spaces
        ("c", "Completely different words about state budgets.", {"status": "kept", "url": "https://x.org/p#top"}),
        ("d", "Another crawl of the same page with new text.", {"status": "kept", "url": "https://X.org/p/"}),
        ("e", "Unrelated text.", {"status": "kept", "metadata": {"url": "https://y.org/q"}}),
        ("https://y.org/q", "Dolma id that is the same URL.", {"status": "kept"}),
    ]
    df = run_signatures(cfg, docs)
    want = {"b": ("exact-dup", "a"), "d": ("url-dup", "c"), "https://y.org/q": ("url-dup", "e")}
    got = find_duplicates(df, cfg).join(df.select("key", "doc_id"), on="key")
    assert {r["doc_id"]: (r["reason"], r["duplicate_of"]) for r in got.iter_rows(named=True)} == want
    # the survivor depends on `key` (build order), not on the row order of the frame
    assert find_duplicates(df.reverse(), cfg).equals(find_duplicates(df, cfg))
    assert find_duplicates(df.head(0), cfg).columns == ["key", "reason", "duplicate_of"]


def test_near_dup_clusters_collapse_to_lowest_key():
    cfg = DedupConfig()
    base = " ".join(f"word{i}" for i in range(300))
    docs = [(f"v{k}", base + f" tail{k}", {"status": "kept"}) for k in range(4)]
    df = run_signatures(cfg, docs)
    # keys in reverse build order: v3 has the lowest key and must survive
    df = df.with_columns((3 - pl.col("key")).alias("key"))
    got = find_duplicates(df, cfg).join(df.select("key", "doc_id"), on="key")
    assert sorted(got["doc_id"].to_list()) == ["v0", "v1", "v2"]
    assert set(got["duplicate_of"].to_list()) == {"v3"} and set(got["reason"].to_list()) == {"near-dup"}


def test_step_only_signs_kept_docs_and_config():
    cfg = DedupConfig.from_spec({"bands": 10, "rows": 5})
    docs = [Document(text="one two three four five six", id="k", metadata={"status": "kept"}),
            Document(text="one two three four five six", id="d", metadata={"status": "dropped", "reason": "x"})]
    out = list(DedupSignatureStep(cfg).run(iter(docs)))
    assert [d.id for d in out] == ["k", "d"]
    assert len(out[0].metadata["minhash"]) == 10 and isinstance(out[0].metadata["text_hash"], int)
    assert all(-(2**63) <= h < 2**63 for h in out[0].metadata["minhash"])
    assert "minhash" not in out[1].metadata
    assert DedupConfig.from_spec(None) is None and DedupConfig.from_spec({"exact": False, "minhash": False, "url": False}) is None
    with pytest.raises(ValueError, match="unknown key"):
        DedupConfig.from_spec({"band": 3})
    d = DedupConfig()
    assert d.p_caught(0.8) > 0.97 and d.p_caught(0.85) > 0.99 and d.p_caught(0.3) < 0.01

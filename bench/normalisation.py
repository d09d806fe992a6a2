"""Exact- and near-dup drops on the mirror's math and code sources under the old normalisation (words only: case,
punctuation, symbols, signs and whitespace folded, for both the exact key and the MinHash shingles) and the current
one (`fold_exact` key: NFC, case and whitespace only; MinHash over `fold_tokens`: words and symbol runs), with
examples of pairs the old key called identical. Each source is deduplicated on its own, as a stage-2 build would
within it (dedup runs across sources too, which can only add drops).

    python bench/normalisation.py [--examples 3]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rss_peak import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("MIDTRAIN_SHARED", ROOT.parent / "shared" / "data"))
SOURCES = {  # name: (glob under the hub mirror, reader format)
    "dm-maths": ("LLM360/TxT360/data/dm_maths/**/*.jsonl.gz", "text"),
    "python-edu": ("HuggingFaceTB/smollm-corpus/python-edu/*.parquet", "text"),
    "dolmino-math-gsm8k": ("allenai/dolmino-mix-1124/data/math/gsm8k/*/train/*.jsonl.zst", "text"),
    "dolmino-math-synth": ("allenai/dolmino-mix-1124/data/math/dolmino_math_synth/**/*.jsonl", "text"),
    "open-web-math": ("allenai/OLMoE-mix-0924/data/open-web-math/*.jsonl.gz", "text"),
    "starcoder": ("allenai/OLMoE-mix-0924/data/starcoder/*.json.gz", "text"),
    "code-feedback": ("m-a-p/Code-Feedback/data/*.parquet", "messages"),
    "webinstructsub": ("TIGER-Lab/WebInstructSub/data/*.parquet", "question_answer"),
}


def old_signals(texts: list[str], cfg):
    """(exact keys, MinHash band lists) as the previous normalisation computed them: words only."""
    import numpy as np
    import xxhash

    from pipelines.dedup.signatures import MinHasher
    from pipelines.text import fold_words, ngram_hashes, sequence_hash, word_hashes

    h = MinHasher(cfg)
    keys, bands = [], []
    for t in texts:
        norm = fold_words(t)
        keys.append(int(np.uint64(xxhash.xxh3_64_intdigest(norm or t.strip().encode())).view(np.int64)))
        wh = word_hashes(norm)
        if len(wh) == 0:
            bands.append(None)
            continue
        sh = ngram_hashes(wh, cfg.ngram) if len(wh) >= cfg.ngram else np.array([sequence_hash(wh)], np.uint64)
        sh = (sh >> np.uint64(32)).astype(np.uint32)
        sig = h.signatures(sh, np.zeros(len(sh), np.int64), 1)
        bands.append(h.band_hashes(sig)[0].view(np.int64).tolist())
    return keys, bands


def new_signals(texts: list[str], cfg):
    from pipelines.dedup.signatures import MinHasher, exact_key

    bands = MinHasher(cfg).bands_batch(texts)
    return [exact_key(t) for t in texts], [None if b is None else b.view("int64").tolist() for b in bands]


def drops(keys, bands, cfg) -> dict[int, tuple[str, str]]:
    import polars as pl

    from pipelines.dedup.signatures import find_duplicates

    df = pl.DataFrame({"key": range(len(keys)), "doc_id": [str(i) for i in range(len(keys))], "text_hash": keys,
                       "minhash": bands, "url": [None] * len(keys)},
                      schema={"key": pl.Int64, "doc_id": pl.Utf8, "text_hash": pl.Int64, "minhash": pl.List(pl.Int64),
                              "url": pl.Utf8})
    f = find_duplicates(df, cfg)
    return {k: (r, d) for k, r, d in zip(f["key"], f["reason"], f["duplicate_of"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=3, help="old false positives to print per source")
    args = ap.parse_args()

    from pipelines.dedup.signatures import DedupConfig
    from pipelines.read.formats import iter_records
    from pipelines.text import fold_exact

    cfg = DedupConfig(url=False)
    print(f"{'source':20s} {'docs':>6s} | {'exact-dup old':>13s} {'new':>5s} | {'near-dup old':>12s} {'new':>5s} | "
          f"old drops whose text differs (new key)")
    for name, (pattern, fmt) in SOURCES.items():
        files = sorted((SHARED / "hub").glob(pattern))
        texts = [r.text for f in files for r in iter_records(str(f), fmt) if r.text]
        if not texts:
            continue
        old, new = drops(*old_signals(texts, cfg), cfg), drops(*new_signals(texts, cfg), cfg)
        count = lambda d, reason: sum(r == reason for r, _ in d.values())  # noqa: E731
        false_pos = [(k, int(s)) for k, (r, s) in old.items() if fold_exact(texts[k]) != fold_exact(texts[int(s)])]
        print(f"{name:20s} {len(texts):6d} | {count(old, 'exact-dup'):13d} {count(new, 'exact-dup'):5d} | "
              f"{count(old, 'near-dup'):12d} {count(new, 'near-dup'):5d} | {len(false_pos)}")
        for k, s in false_pos[: args.examples]:
            print(f"    dropped {texts[k][:70]!r}\n    as dup  {texts[s][:70]!r}  ({old[k][0]})")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (one source's texts, signals and keys at a time)")


if __name__ == "__main__":
    main()

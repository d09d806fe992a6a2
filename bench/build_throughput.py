"""End-to-end build throughput vs raw `tokenizers.Tokenizer.encode_batch` on the same documents, same run.

The corpus is the mirror's Dolma-format text (dclm .json.zst, wiki/flan .json.gz) replicated into larger files so
that fixed costs (process start, stage B) weigh as they would on real shards. The build reads, decompresses,
parses, samples, tokenizes, writes intermediates, packs, writes shards and the manifest; the baseline only
tokenizes texts already in memory. Target from issue #2: ratio >= 0.8.

    python bench/build_throughput.py [--copies 6] [--workers 2]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("MIDTRAIN_SHARED", ROOT.parent / "shared" / "data"))
TOKENIZER = SHARED / "tokenizers" / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"


def make_corpus(dest: Path, copies: int) -> list[str]:
    from pipelines.formats import iter_records

    hub = SHARED / "hub" / "allenai"
    files = sorted(hub.glob("dolmino-mix-1124/data/dclm/**/*.json.zst")) + sorted(hub.glob("dolmino-mix-1124/data/wiki/*.json.gz")) \
        + sorted(hub.glob("OLMoE-mix-0924/data/dclm/*.json.zst"))
    texts = [r.text for f in files for r in iter_records(str(f)) if r.text]
    dest.mkdir(parents=True)
    all_texts = []
    for c in range(copies):  # each copy is a separate file with distinct ids, like more shards of the same source
        lines = [json.dumps({"id": f"c{c}-{i}", "text": t}) for i, t in enumerate(texts)]
        (dest / f"part-{c:04d}.json.gz").write_bytes(gzip.compress("\n".join(lines).encode(), compresslevel=1))
        all_texts += texts
    return all_texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=6, help="replications of the mirror text (one file each)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from pipelines.build import BuildOptions, build_mixture
    from pipelines.manifest import connect
    from pipelines.spec import parse_spec

    tmp = Path(tempfile.mkdtemp(prefix="midtrain-bench-"))
    try:
        texts = make_corpus(tmp / "data", args.copies)
        n_bytes = sum(len(t.encode()) for t in texts)

        tok = Tokenizer.from_file(str(TOKENIZER))
        t0 = time.perf_counter()
        for i in range(0, len(texts), 4096):
            tok.encode_batch(texts[i:i + 4096], add_special_tokens=False)
        raw_s = time.perf_counter() - t0

        spec = parse_spec({"name": "bench", "seq_len": 4096, "tokenizer": str(TOKENIZER),
                           "sources": [{"name": "web", "uri": str(tmp / "data" / "*.json.gz")}]}, "bench.yaml")
        t0 = time.perf_counter()
        build_mixture(spec, BuildOptions(out=str(tmp / "out"), workers=args.workers, progress=False))
        e2e_s = time.perf_counter() - t0
        con = connect(tmp / "out")
        n_tokens, = con.execute("SELECT sum(n_tokens) FROM documents WHERE status='kept'").fetchone()
        con.close()

        raw_tps, e2e_tps = n_tokens / raw_s, n_tokens / e2e_s
        print(f"documents {len(texts):,}  text {n_bytes / 1e6:.1f} MB  tokens {n_tokens:,}  workers {args.workers}")
        print(f"raw tokenizers encode_batch : {raw_tps:12,.0f} tokens/s  ({raw_s:.2f} s)")
        print(f"build-mixture end to end    : {e2e_tps:12,.0f} tokens/s  ({e2e_s:.2f} s)")
        print(f"ratio end-to-end / raw      : {e2e_tps / raw_tps:.2f}x  (target >= 0.80x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Throughput of symbolic synthetic GSM8K, in train problems per second.

Baseline (same run): abstraction alone (parse + bind + verify, no sampling), one process. Then the full pipeline
(abstraction, resampling, rewrite, re-check, 13-gram test filter, token count) with 1 and 2 workers, as problems/s
and as a ratio to the baseline. `--full` runs all 7,473 train problems and also prints the abstraction rate, the
variants and the token total at the default settings.

    python bench/synth_gsm8k.py [--problems 1000] [--variants 50] [--full]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.synth.gsm8k.binding import Rejected  # noqa: E402
from pipelines.synth.gsm8k.program import abstract  # noqa: E402
from pipelines.synth.gsm8k.symbolic import SymbolicConfig, run_symbolic  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=1000, help="first N train problems")
    ap.add_argument("--variants", type=int, default=50, help="variants per problem (default setting: 50)")
    ap.add_argument("--full", action="store_true", help="all train problems")
    args = ap.parse_args()
    train, test = SHARED / "gsm8k" / "train.jsonl", SHARED / "gsm8k" / "test.jsonl"
    tok = SHARED / "tokenizers" / "allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    n = len(rows) if args.full else min(args.problems, len(rows))

    t = time.perf_counter()
    ok = 0
    for i, r in enumerate(rows[:n]):
        try:
            abstract(i, r["question"], r["answer"])
            ok += 1
        except Rejected:
            pass
    base = n / (time.perf_counter() - t)
    print(f"baseline  abstraction only, 1 process : {base:8.1f} problems/s  (abstracted {ok}/{n} = {ok / n:.1%})")

    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            rep = run_symbolic(train, out, SymbolicConfig(variants=args.variants, workers=workers), test, tok,
                               limit=n)
            rate = n / (time.perf_counter() - t)
        print(f"synthesis {args.variants} variants, {workers} worker(s) : {rate:8.1f} problems/s  "
              f"({rate / base:.2f}x baseline; {rep['variants_emitted']} variants, "
              f"{rep['variants_emitted'] / rep['seconds']:.0f} variants/s, {rep['tokens']:,} tokens)")
    if args.full:
        print(f"full train set: abstraction rate {rep['abstraction_rate']:.2%}, "
              f"{rep['problems_with_variants']} problems with variants, {rep['variants_emitted']:,} variants, "
              f"{rep['tokens']:,} tokens (Instella: 28.5M) -> reaches target: {rep['reaches_instella_target']}")
        print("main rejections:", json.dumps(dict(list(rep["problems_rejected"].items())[:5])))
    print(f"peak RSS: this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, largest worker "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()

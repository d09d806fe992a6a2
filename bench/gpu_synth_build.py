"""Write a synthetic build for a short `cli.py train` on a machine without the builder's inputs (bench/gpu_check.sh).

    python bench/gpu_synth_build.py OUT [--seq-len 1024] [--tokens 800000] [--seed 0]

Documents of random lengths (log-uniform, 16 to 4 x seq_len tokens, so rows hold several documents and some
documents span rows) in the format of docs/FORMAT.md, through trainer.data_synthetic.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.data_synthetic import write_synthetic_build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="build directory to write")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per packed row")
    ap.add_argument("--tokens", type=int, default=800_000, help="about this many real tokens")
    ap.add_argument("--rows-per-shard", type=int, default=128, help="rows per shard file")
    ap.add_argument("--seed", type=int, default=0, help="seed of the document lengths")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    lens = []
    while sum(lens) < args.tokens:
        lens.append(int(np.exp(rng.uniform(np.log(16), np.log(4 * args.seq_len)))))
    b = write_synthetic_build(args.out, np.array(lens), args.seq_len, args.rows_per_shard)
    print(f"synthetic build {b.path}: {b.n_docs} documents, {b.n_tokens:,} tokens, {b.n_rows} rows of "
          f"{args.seq_len}, {b.n_shards} shards")


if __name__ == "__main__":
    main()

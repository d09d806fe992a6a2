"""Reading one very long JSON-lines record: `iter_records` vs the quadratic line splitter it replaced, same run.

The old splitter appended every decoded chunk to one growing bytes object (`pending += chunk`), so a line spanning
n chunks cost O(n^2) copying (issue 11: 16 MB took 3.8 s, 50 MB 80 s). The baseline here is that splitter fed the
same chunks; the floor is `orjson.loads` of the line already in memory. Prints seconds and peak RSS.

    python bench/long_lines.py [--mb 50] [--skip-old]
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


def old_lines(chunks):
    """The splitter before issue 11 (quadratic in line length)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--skip-old", action="store_true", help="skip the quadratic baseline (80 s at 50 MB)")
    args = ap.parse_args()

    import orjson

    from pipelines.read.formats import iter_records

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.jsonl"
        text = "word " * (args.mb * (1 << 20) // 5)
        line = json.dumps({"id": "long", "text": text}).encode()
        path.write_bytes(line + b"\n" + json.dumps({"id": "short", "text": "after"}).encode() + b"\n")
        size_mb = path.stat().st_size / 2**20

        t = time.perf_counter()
        orjson.loads(line)
        floor = time.perf_counter() - t

        t = time.perf_counter()
        recs = list(iter_records(str(path)))
        new = time.perf_counter() - t
        assert [r.doc_id for r in recs] == ["long", "short"] and len(recs[0].text) == len(text)

        old = None
        if not args.skip_old:
            t = time.perf_counter()
            with open(path, "rb") as f:  # the reader's 16 KiB chunks
                n = sum(1 for _ in old_lines(iter(lambda: f.read(1 << 14), b"")))
            old = time.perf_counter() - t
            assert n == 2

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"file {size_mb:.1f} MB, one {len(line) / 2**20:.1f} MB line")
    print(f"orjson.loads of the line in memory (floor): {floor:.3f} s")
    print(f"iter_records (read + split + parse):         {new:.3f} s")
    if old is not None:
        print(f"old splitter alone (baseline, no parsing):  {old:.3f} s  -> {old / new:.0f}x slower than iter_records")
    print(f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()

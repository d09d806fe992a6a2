"""Full-length long-context check on the mirror (too slow for the test suite on 2 cores; run it once):

    python bench/long_context_full.py [--source-root ../shared/data/hub] [--out out/bench-long]

Builds the shipped `long-64k` (seq_len 65,536; --max-tokens 1,572,864 = 24 rows, so the recipe's shares apply and
some long documents are left for stage 2; without a cap stage 1 takes every document and stage 2 is empty) and then
`long-256k` (262,144) with `--exclude` of the first, and
checks: every 64K row is exactly 65,536 tokens with no padding; every long-source (books, code_repos) document
fills whole rows (one segment of exactly seq_len per row, starting at 0); the 256K build shares no document with
the 64K build (SQL INTERSECT over both manifests); `verify` passes for both. Prints counts and timings.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.build.options import BuildOptions
from pipelines.build.run import build_mixture  # noqa: E402
from pipelines.shards.reader import connect  # noqa: E402
from pipelines.build.spec import load_spec  # noqa: E402
from pipelines.shards.verify import verify_build  # noqa: E402

LONG = ("books", "code_repos", "textbooks")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-root", default=str(ROOT.parent / "shared" / "data" / "hub"), help="mirror root")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-long"), help="where the two builds go")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    s1, s2 = out / "long-64k", out / "long-256k"
    t0 = time.perf_counter()
    build_mixture(load_spec("long-64k"), BuildOptions(out=str(s1), source_root=args.source_root, progress=False,
                                                      max_tokens=24 * 65536))
    t1 = time.perf_counter()
    build_mixture(load_spec("long-256k"), BuildOptions(out=str(s2), source_root=args.source_root, progress=False,
                                                       exclude=(str(s1),)))
    t2 = time.perf_counter()
    ok = True
    for out_dir in (s1, s2):
        problems = verify_build(out_dir)
        con = connect(out_dir)
        seq_len, = con.execute("SELECT seq_len FROM build").fetchone()
        n_rows, n_pad = con.execute("SELECT coalesce(sum(n_rows), 0), coalesce(sum(n_pad), 0) FROM shards").fetchone()
        bad_rows, = con.execute(f"SELECT count(*) FROM (SELECT shard, row, sum(length) n FROM segments GROUP BY ALL) "
                                f"WHERE n <> {seq_len}").fetchone()
        long_docs, long_rows, long_bad = con.execute(f"""
            SELECT count(DISTINCT s.doc_id), count(*),
                   count(*) FILTER (WHERE s.length NOT IN ({seq_len}, 65536) OR (s.length = {seq_len} AND s.start <> 0))
            FROM segments s JOIN documents d USING (doc_id) WHERE d.source IN {LONG}""").fetchone()
        drops = con.execute("SELECT reason, count(*) FROM documents WHERE status = 'dropped' GROUP BY 1 ORDER BY 2 DESC").fetchall()
        print(f"{out_dir.name}: {n_rows} rows x {seq_len}, padding {n_pad}, rows != seq_len: {bad_rows}, "
              f"long-source docs {long_docs} in {long_rows} segments (bad {long_bad}), drops {drops}, verify {problems}")
        comp = con.execute("SELECT source, n_tokens FROM composition WHERE n_tokens > 0").fetchall()
        print(f"  composition: {comp}")
        ok &= not problems and n_pad == 0 and bad_rows == 0 and long_bad == 0 and n_rows > 0
        con.close()
    con = connect(s2)
    con.execute(f"ATTACH '{s1 / 'manifest.duckdb'}' AS s1 (READ_ONLY)")
    shared, = con.execute("SELECT count(*) FROM (SELECT doc_id FROM segments INTERSECT SELECT doc_id FROM s1.segments)").fetchone()
    moby = con.execute("SELECT doc_id, n_tokens, status, reason FROM s1.documents WHERE n_tokens > 262144").fetchall()
    print(f"documents shared by the two builds: {shared}; docs > 256K tokens in the mirror: {moby}")
    print(f"build seconds: long-64k {t1 - t0:.1f}, long-256k {t2 - t1:.1f}")
    import resource

    print(f"peak RSS: this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, largest worker "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")
    ok &= shared == 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Scale of the global dedup stages (pipelines/dedup/global_stages.py) on synthetic stage-A intermediates.

For each N, writes N documents as fake `*.docs.parquet` files (`--per-task` rows each) with planted copies:
exact copies (same text hash and bands as an earlier original), near copies (two bands shared with an earlier
original, the rest fresh) and URL copies (an earlier original's URL, fresh text). Then runs every stage, each in a
fresh process (tasks in sequence, like one worker), and prints per stage: wall time, documents/s and peak RSS of
that process; then recall and precision of the planted copies. `--baseline-max N` also runs main's one-process
`find_duplicates` over all kept documents (the key columns only, a lower bound of what stage B loaded) for N up to
that size, in the same run.

    nice -n 10 python bench/scale_dedup.py --docs 500000 2000000 5000000 --baseline-max 500000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rss_peak import peak_rss_mb

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.dedup import global_stages as ds  # noqa: E402
from pipelines.dedup.decisions import read_decisions  # noqa: E402
from pipelines.steps.intermediate import intermediate_paths  # noqa: E402
from pipelines.text import mix64  # noqa: E402

BANDS = 20
PLANT = {"exact": 0.02, "near": 0.02, "url": 0.01}  # shares of documents that are planted copies
URL_EVERY = 10  # originals with key % URL_EVERY == 0 carry a URL


def _h(x: np.ndarray, salt: int) -> np.ndarray:
    return mix64(x.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt))


def original_bands(keys: np.ndarray) -> np.ndarray:
    return _h(keys[:, None] * BANDS + np.arange(BANDS)[None, :], 2).view(np.int64)


def plant_kind(keys: np.ndarray) -> np.ndarray:
    """0 = original, 1 exact, 2 near, 3 url copy (decided by the key alone, so sources can be checked)."""
    u = (_h(keys, 3) >> np.uint64(11)).astype(np.float64) / 2.0**53
    kind = np.zeros(len(keys), np.int8)
    edges = np.cumsum([PLANT["exact"], PLANT["near"], PLANT["url"]])
    kind[u < edges[2]] = 3
    kind[u < edges[1]] = 2
    kind[u < edges[0]] = 1
    return kind


def pick_sources(keys: np.ndarray, all_keys: np.ndarray, rng: np.random.Generator, need_url: bool) -> np.ndarray:
    """An earlier original (and one with a URL if need_url) for each key."""
    src = np.full(len(keys), -1, np.int64)
    todo = np.arange(len(keys))
    while len(todo):
        pos = (rng.random(len(todo)) * np.searchsorted(all_keys, keys[todo])).astype(np.int64)
        cand = all_keys[pos]
        ok = (plant_kind(cand) == 0) & (cand < keys[todo])
        if need_url:
            ok &= cand % URL_EVERY == 0
        src[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return src


def write_corpus(work: str, n_docs: int, per_task: int, seed: int = 0) -> dict[int, tuple[str, int]]:
    """Fake stage-A intermediates; returns the planted copies {key: (reason, source key)}."""
    rng = np.random.default_rng(seed)
    n_tasks = -(-n_docs // per_task)
    all_keys = np.concatenate([(np.int64(t) << 32) + np.arange(min(per_task, n_docs - t * per_task))
                               for t in range(n_tasks)])
    truth: dict[int, tuple[str, int]] = {}
    for t in range(n_tasks):
        keys = all_keys[(all_keys >> 32) == t]
        kind = plant_kind(keys)
        kind[keys == all_keys[0]] = 0  # the first document has nothing earlier to copy
        th = _h(keys, 1).view(np.int64).copy()
        bands = original_bands(keys)
        url = np.where(keys % URL_EVERY == 0, keys, -1)
        for k, reason in ((1, "exact-dup"), (2, "near-dup"), (3, "url-dup")):
            sel = np.flatnonzero(kind == k)
            src = pick_sources(keys[sel], all_keys, rng, need_url=k == 3)
            if k == 1:
                th[sel], bands[sel] = _h(src, 1).view(np.int64), original_bands(src)
            elif k == 2:
                cols = rng.integers(0, BANDS, (len(sel), 2))
                rows = np.repeat(sel, 2)
                bands[rows, cols.ravel()] = original_bands(src)[np.repeat(np.arange(len(sel)), 2), cols.ravel()]
            else:
                url[sel] = src
            if k != 3:
                url[sel] = -1
            truth.update(zip(keys[sel].tolist(), [(reason, s) for s in src.tolist()]))
        ids = [f"d{k}" for k in keys.tolist()]
        urls = [f"https://site.example/{u}" if u >= 0 else None for u in url.tolist()]
        table = pa.table({
            "doc_id": ids, "file": [f"/bench/part-{t:05d}.jsonl"] * len(keys),
            "line": np.arange(1, len(keys) + 1), "status": ["kept"] * len(keys), "text_hash": th,
            "minhash": pa.ListArray.from_arrays(np.arange(0, len(keys) * BANDS + 1, BANDS, dtype=np.int32),
                                                bands.ravel()),
            "url": pa.array(urls, pa.string()),
        })
        path = intermediate_paths(os.path.join(work, "docs"), t)[0]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(table, path)
    return truth


def run_stage_here(cfg: ds.GlobalDedupConfig, name: str) -> None:
    stage = next(s for s in ds.stages_for(cfg) if s.name == name)
    for rank in range(stage.tasks):
        stage.pipeline[0].run(None, rank, stage.tasks)


def baseline_here(cfg: ds.GlobalDedupConfig) -> None:
    import polars as pl

    from pipelines.dedup.signatures import DedupConfig, find_duplicates

    frames = [pl.read_parquet(intermediate_paths(os.path.join(cfg.work_dir, "docs"), t)[0],
                              columns=["doc_id", "text_hash", "minhash", "url"])
              .with_columns(((pl.lit(t, pl.Int64) * 2**32) + pl.int_range(pl.len(), dtype=pl.Int64)).alias("key"))
              for t in range(cfg.n_tasks)]
    found = find_duplicates(pl.concat(frames), DedupConfig(bands=BANDS))
    found.select("key", "reason").write_parquet(os.path.join(cfg.work_dir, "baseline.parquet"))


def in_subprocess(cfg: ds.GlobalDedupConfig, what: str) -> dict:
    t0 = time.time()
    out = subprocess.run([sys.executable, __file__, "--child", what, "--cfg", json.dumps(asdict(cfg))],
                         check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["seconds"] = time.time() - t0
    return res


def score(truth: dict[int, tuple[str, int]], got: dict[int, tuple[str, int]]) -> tuple[float, float, float]:
    hit = sum(1 for k in truth if k in got)
    exact_ok = sum(1 for k, v in truth.items() if got.get(k) == v)
    return hit / max(1, len(truth)), hit / max(1, len(got)), exact_ok / max(1, len(truth))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[500_000, 2_000_000, 5_000_000])
    ap.add_argument("--per-task", type=int, default=100_000, help="documents per stage-A file (task)")
    ap.add_argument("--baseline-max", type=int, default=500_000, help="run main's find_duplicates up to this N")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        cfg = ds.GlobalDedupConfig(**{k: tuple(v) if k == "exclude" else v for k, v in json.loads(a.cfg).items()})
        baseline_here(cfg) if a.child == "baseline" else run_stage_here(cfg, a.child)
        print(json.dumps({"rss_mb": peak_rss_mb()}))
        return
    for n in a.docs:
        work = tempfile.mkdtemp(prefix=f"scale-dedup-{n}-", dir=a.tmp)
        try:
            t0 = time.time()
            truth = write_corpus(work, n, a.per_task)
            n_tasks = -(-n // a.per_task)
            cfg = ds.GlobalDedupConfig(work_dir=work, n_tasks=n_tasks, n_buckets=ds.n_buckets_for(n_tasks),
                                       exact=True, url=True, minhash=True)
            print(f"N={n:,}: {n_tasks} files, {len(truth):,} planted copies, written in {time.time() - t0:.0f}s, "
                  f"P={cfg.n_buckets}", flush=True)
            peak = 0.0
            total = 0.0
            for stage in ds.stages_for(cfg):
                r = in_subprocess(cfg, stage.name)
                peak, total = max(peak, r["rss_mb"]), total + r["seconds"]
                print(f"  {stage.name:15s} {stage.tasks:5d} tasks {r['seconds']:8.1f}s "
                      f"{n / r['seconds']:10,.0f} docs/s "
                      f"peak RSS {r['rss_mb']:7.0f} MB", flush=True)
            got = {}
            for t in range(n_tasks):
                dec = read_decisions(work, t)
                for idx, reason, dup in zip(dec["idx"].to_pylist(), dec["reason"].to_pylist(),
                                            dec["duplicate_of"].to_pylist()):
                    if reason:
                        got[(t << 32) | idx] = (reason, dup)
            recall, precision, exact = score(truth, got)
            print(f"  all stages     {total:8.1f}s {n / total:10,.0f} docs/s, largest process {peak:.0f} MB; "
                  f"recall {recall:.5f} precision {precision:.5f}, reason+survivor right {exact:.5f}", flush=True)
            if n <= a.baseline_max:
                r = in_subprocess(cfg, "baseline")
                import polars as pl

                base = pl.read_parquet(os.path.join(work, "baseline.parquet"))
                b_recall, b_precision, _ = score(truth, dict.fromkeys(base["key"].to_list(), ("", 0)))
                print(f"  baseline (main's find_duplicates, one process) {r['seconds']:.1f}s peak RSS "
                      f"{r['rss_mb']:.0f} MB; recall {b_recall:.5f} precision {b_precision:.5f}; "
                      f"RSS ratio baseline/stages {r['rss_mb'] / peak:.1f}x", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Trainer data path at scale (issue 10): memory, start-up and open files of the first step vs the build's size.

    python bench/trainer_data_scale.py [--docs 5000000] [--mirror-docs 10000] [--rows-per-shard 64]
                                       [--work /tmp/trainer_data_scale] [--baseline-ref eac4e4b]
    python bench/trainer_data_scale.py --builds out/stage2 /tmp/scale/scale-5000000-*/out   # two real builds

Writes two synthetic builds straight in the documented format (trainer/data_synthetic.py: shards + per-shard
`.idx.arrow` + a manifest with `build`, `shards` and, for the baseline, `segments`): a large one (`--docs` short
documents of 2-39 tokens, 4,096-token rows) and a mirror-sized one. For each build, each implementation runs in a
fresh subprocess that imports everything first, resets the peak-RSS counter, then constructs
`PackedDataset(build)` + `StepLoader(world=8, grad_accum=4, micro_batch=1)` and fetches the first step's batches:
  * baseline: trainer/data.py at `--baseline-ref` (the last commit before issue 10), which loads the manifest's
    whole `segments` table and memory-maps every shard at start-up;
  * ours: the working tree's trainer/data.py (per-shard indexes read lazily, LRU of open shards, Feistel order).
Reported: peak RSS increase over the process's RSS before construction (VmHWM after resetting it through
/proc/self/clear_refs; ru_maxrss when that is not allowed), start-up (construct) and first-step time, open file
descriptors after the first step, and the mean time of 20 more steps. Target: our first step on the large build needs
≤ 100 MB more than on the mirror-sized one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(impl: str, build: str, module_path: str | None) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    import importlib.util

    import duckdb  # noqa: F401  (imported before measuring: both implementations use it)
    import numpy as np  # noqa: F401
    import pyarrow  # noqa: F401
    import torch  # noqa: F401

    import pipelines.shards.manifest  # noqa: F401

    if module_path:
        spec = importlib.util.spec_from_file_location("baseline_trainer_data", module_path)
        data = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = data
        spec.loader.exec_module(data)
    else:
        import trainer.data as data
    rss0 = _status_kb("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    ds = data.PackedDataset(build)
    loader = data.StepLoader(ds, seed=0, rank=0, world=8, micro_batch=1, grad_accum=4)
    t1 = time.perf_counter()
    batches = loader.next_step()
    t2 = time.perf_counter()
    peak = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fds = len(os.listdir("/proc/self/fd"))
    n_tokens = sum(len(b.input_ids) for b in batches)
    t3 = time.perf_counter()
    for _ in range(20):
        loader.next_step()
    step_s = (time.perf_counter() - t3) / 20
    print(json.dumps({"impl": impl, "peak_mb": (peak - rss0) / 1024, "startup_s": t1 - t0, "first_step_s": t2 - t1,
                      "fds": fds, "step_s": step_s, "tokens": n_tokens, "peak_exact": reset}))


def make_builds(work: Path, docs: int, mirror_docs: int, rows_per_shard: int) -> dict[str, Path]:
    import numpy as np

    from trainer.data_synthetic import write_synthetic_build

    builds = {}
    for name, n in (("mirror", mirror_docs), ("large", docs)):
        out = work / f"{name}-{n}-{rows_per_shard}"
        if not (out / "manifest.duckdb").exists():
            t = time.perf_counter()
            lens = np.random.default_rng(n).integers(2, 40, n)
            b = write_synthetic_build(out, lens, seq_len=4096, rows_per_shard=rows_per_shard)
            print(f"wrote {name}: {b.n_docs:,} docs, {b.n_rows:,} rows, {b.n_shards} shards "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)
        builds[name] = out
    return builds


def _describe(build: Path) -> tuple[int, int]:
    import duckdb

    con = duckdb.connect(str(build / "manifest.duckdb"), read_only=True)
    try:
        n_seg = con.execute("select count(*) from segments").fetchone()[0]
        n_shards = con.execute("select count(*) from shards").fetchone()[0]
    finally:
        con.close()
    return n_seg, n_shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=5_000_000, help="documents in the large build")
    ap.add_argument("--mirror-docs", type=int, default=10_000, help="documents in the mirror-sized build")
    ap.add_argument("--rows-per-shard", type=int, default=64, help="4,096-token rows per shard")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "trainer_data_scale"),
                    help="where the synthetic builds are written (reused when present)")
    ap.add_argument("--baseline-ref", default="eac4e4b", help="git ref of the baseline trainer/data.py")
    ap.add_argument("--builds", nargs=2, metavar=("MIRROR", "LARGE"),
                    help="measure these two finished builds instead of writing synthetic ones (e.g. `make demo`'s "
                         "out/stage2 and a build kept by `bench/scale.py --keep`)")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "BUILD"), help=argparse.SUPPRESS)
    ap.add_argument("--module", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.module)
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.builds:
        builds = {"mirror": Path(args.builds[0]), "large": Path(args.builds[1])}
    else:
        builds = make_builds(work, args.docs, args.mirror_docs, args.rows_per_shard)
    baseline = work / "baseline_trainer_data.py"
    src = subprocess.run(["git", "show", f"{args.baseline_ref}:trainer/data.py"], cwd=ROOT, capture_output=True,
                         text=True)
    impls = [("ours", None)]
    if src.returncode == 0:
        baseline.write_text(src.stdout)
        impls.insert(0, ("baseline", str(baseline)))
    else:
        print(f"baseline {args.baseline_ref}:trainer/data.py not found; measuring ours only", file=sys.stderr)

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    rows = []
    for name, build in builds.items():
        n_seg, n_shards = _describe(build)
        for impl, module in impls:
            cmd = [sys.executable, __file__, "--child", impl, str(build)] + (["--module", module] if module else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"{impl} on {name} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"build": name, "segments": n_seg, "shards": n_shards, **r})

    print(f"\n{'build':8} {'segments':>10} {'shards':>6} {'impl':9} {'peak RSS +MB':>12} {'start-up s':>10} "
          f"{'1st step s':>10} {'open fds':>8} {'next steps s':>12}")
    for r in rows:
        print(f"{r['build']:8} {r['segments']:>10,} {r['shards']:>6,} {r['impl']:9} {r['peak_mb']:>12.1f} "
              f"{r['startup_s']:>10.3f} {r['first_step_s']:>10.3f} {r['fds']:>8} {r['step_s']:>12.4f}")
    by = {(r["build"], r["impl"]): r for r in rows}
    for impl, _ in impls:
        growth = by[("large", impl)]["peak_mb"] - by[("mirror", impl)]["peak_mb"]
        verdict = "meets" if growth <= 100 else "misses"
        print(f"{impl}: first step on the large build needs {growth:+.1f} MB vs the mirror-sized one "
              f"({verdict} the ≤ 100 MB target)")
    if not all(r["peak_exact"] for r in rows):
        print("note: /proc/self/clear_refs not writable; peaks are ru_maxrss (include the imports' peak)")


if __name__ == "__main__":
    main()

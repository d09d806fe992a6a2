"""Issue 20, defect 9: a finished two-process run must exit 0 every time.

Runs `cli.py train --nproc 2 --preset tiny --steps 40 --save-every 20` on a build N times and counts exit codes and
teardown aborts (`terminate called ...`, SIGABRT). Slow (each run starts two torch processes): a bench, not a test.

    python bench/teardown_loop.py --data out/stage2 --runs 20 [--root CHECKOUT]
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a finished build (e.g. the mirror's stage2)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]),
                    help="checkout whose cli.py is run (to measure an older commit)")
    args = ap.parse_args()
    codes: collections.Counter[int] = collections.Counter()
    aborts = 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t_start = time.time()
    for i in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="teardown-"))
        t0 = time.time()
        proc = subprocess.run([sys.executable, "cli.py", "train", "--nproc", "2", "--preset", "tiny", "--steps",
                               str(args.steps), "--save-every", str(args.steps // 2), "--data", args.data,
                               "--out", str(out / "run"), "--no-progress"], cwd=args.root, env=env,
                              capture_output=True, text=True)
        aborted = "terminate called" in proc.stderr or "SIGABRT" in proc.stderr
        aborts += aborted
        codes[proc.returncode] += 1
        print(f"run {i + 1}/{args.runs}: exit {proc.returncode}{' (teardown abort)' if aborted else ''} "
              f"{time.time() - t0:.0f}s", flush=True)
        if proc.returncode:
            print("\n".join(proc.stderr.splitlines()[-8:]), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"{args.runs} runs in {time.time() - t_start:.0f}s: exit codes {dict(codes)}, teardown aborts {aborts}")


if __name__ == "__main__":
    main()

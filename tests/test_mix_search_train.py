"""mix-search end to end through real anneals (`cli.py train --mix`, in-loop evaluation) on a small by-source build
with held-out data per source."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from holdout_fixture import write_holdout

from trainer.data_synthetic import SOURCE_TOKEN_SPAN, write_synthetic_mixture

ROOT = Path(__file__).resolve().parents[1]
SEQ = 64


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def by_source_build(tmp_path_factory) -> Path:
    """Three sources in their own shards; each holds out 6 documents of its own token range."""
    out = tmp_path_factory.mktemp("msr") / "build"
    rng = np.random.default_rng(0)
    names = ("code", "math", "web")
    write_synthetic_mixture(out, {"code": rng.integers(20, 120, 300), "math": rng.integers(10, 80, 300),
                                  "web": rng.integers(20, 150, 400)}, SEQ, rows_per_shard=64)
    for i, name in enumerate(names):
        lo = 2 + i * SOURCE_TOKEN_SPAN
        docs = [(f"{name}-{k}", rng.integers(lo, lo + 50, int(rng.integers(10, 40))).tolist(), "x" * 100)
                for k in range(6)]
        write_holdout(out, name, docs)
    return out


def test_mix_search_runs_real_anneals_and_reruns_nothing(by_source_build, tmp_path):
    base = tmp_path / "base"
    p = _cli("train", "--data", str(by_source_build), "--out", str(base), "--preset", "tiny", "--steps", "3",
             "--micro-batch", "2", "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "search"
    args = ("mix-search", "--data", str(by_source_build), "--init-from", str(base), "--out", str(out),
            "--candidates", "4", "--steps", "3", "--train-arg=--micro-batch", "--train-arg=2",
            "--train-arg=--max-repeat", "--train-arg=8")
    p = _cli(*args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for name in ("mixes.parquet", "results.parquet", "fit.json", "proposed.yaml", "report.md", "report.png"):
        assert (out / name).stat().st_size > 0, name
    res = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["mix_id"] for r in res} == {0, 1, 2, 3, 4} and {r["step"] for r in res} == {3}
    assert {r["metric"] for r in res} >= {"bpb:code", "bpb:math", "bpb:web"}
    mixes = pq.read_table(out / "mixes.parquet").to_pylist()
    for mix_id in range(5):  # every anneal trained on its own mixture, from the same weights, LR linear to 0
        run = out / "anneals" / f"mix-{mix_id:03d}" / "run"
        cfg = json.loads((run / "train_config.json").read_text())
        want = {m["source"]: m["weight"] for m in mixes if m["mix_id"] == mix_id}
        got = cfg["mix"]["request"]["weights"]
        assert got == pytest.approx(want, abs=2e-6)
        assert (cfg["init_from"], cfg["schedule"], cfg["final_lr_ratio"], cfg["warmup"]) == \
            (str(base), "linear", 0.0, 0)
        assert (run / "mixture.json").exists()
    report = (out / "report.md").read_text()
    assert "Predicted target" in report and "realized" in report
    # proposed.yaml is itself a --mix file (this build recorded no spec)
    p = _cli("train", "--data", str(by_source_build), "--out", str(tmp_path / "again"), "--init-from", str(base),
             "--steps", "1", "--micro-batch", "2", "--mix", str(out / "proposed.yaml"), "--max-repeat", "8",
             "--lr", "1e-3",
             "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    # a second run finds every anneal finished
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("anneals/*/result.json")}
    p = _cli(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("anneals/*/result.json")} == stamp

"""Executors: Slurm arrays beyond max_array_size with correct dependencies, per-stage resources, Ray really run on a
local cluster (byte-identical to local), failing tasks fail the build naming the file, and the dry-run."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TOKENIZER, build

FAKE_SBATCH = """#!/usr/bin/env python3
import os, sys
log = os.environ["FAKE_SLURM_LOG"]
n = sum(1 for _ in open(log)) + 1 if os.path.exists(log) else 1
script = open(sys.argv[-1]).read()
import json
with open(log, "a") as f:
    f.write(json.dumps({"id": n, "args": sys.argv[1:-1], "script": script}) + "\\n")
print(f"Submitted batch job {n}")
"""


def _noop(data, rank, world_size):  # a picklable one-line pipeline step
    return iter(())


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("scontrol", "#!/bin/sh\nexit 0\n")):
        p = bin_dir / name
        p.write_text(body)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "sbatch.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(log))
    return log


def _submissions(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _directive(script: str, name: str) -> str | None:
    m = re.search(rf"^#SBATCH --{name}=(.*)$", script, re.M)
    return m.group(1) if m else None


def test_slurm_arrays_beyond_max_array_size_and_per_stage_resources(tmp_path, fake_slurm):
    """2,500 per-file tasks with max_array_size 1,000 -> 3 arrays submitted side by side; the global stage waits
    `afterok` on all three (datatrove alone chains them `afterany` and waits on the last one only)."""
    from pipelines.build.executors import (
        ExecutorOptions,
        make_executors,
        parse_executor_options,
    )
    from pipelines.stages import Stage

    stages = [Stage("read", [_noop], 2500, kind="per-file"), Stage("pack", [_noop], 1, kind="global")]
    opts = ExecutorOptions(kind="slurm", workers=1, job_prefix="mix", options=parse_executor_options(
        ["max_array_size=1000", "partition=cpu", "per-file.mem_per_cpu_gb=1", "per-file.time=01:00:00",
         "global.mem_per_cpu_gb=16", "global.cpus_per_task=8", "global.time=12:00:00"]))
    make_executors(stages, opts, str(tmp_path / "logs"))[-1].run()

    subs = _submissions(fake_slurm)
    arrays = [s for s in subs if _directive(s["script"], "job-name") == "mix-read" and "merge_stats" not in s["script"]]
    assert len(arrays) == 3
    assert [_directive(s["script"], "array") for s in arrays] == ["0-999"] * 3
    assert all(not any(a.startswith("--dependency") for a in s["args"]) for s in arrays)  # side by side
    assert [a for s in arrays for a in s["args"] if "RUN_OFFSET" in a] == [
        "--export=ALL,RUN_OFFSET=0", "--export=ALL,RUN_OFFSET=1", "--export=ALL,RUN_OFFSET=2"]
    pack = [s for s in subs if _directive(s["script"], "job-name") == "mix-pack" and "merge_stats" not in s["script"]]
    assert len(pack) == 1
    ids = ":".join(str(s["id"]) for s in arrays)
    assert f"--dependency=afterok:{ids}" in pack[0]["args"]
    # resources per kind of stage
    assert _directive(arrays[0]["script"], "mem-per-cpu") == "1G" and _directive(arrays[0]["script"], "time") == "01:00:00"
    assert _directive(pack[0]["script"], "mem-per-cpu") == "16G"
    assert _directive(pack[0]["script"], "cpus-per-task") == "8" and _directive(pack[0]["script"], "time") == "12:00:00"
    assert all(_directive(s["script"], "partition") == "cpu" for s in arrays + pack)


def test_executor_option_errors_exit_2(tmp_path):
    for bad in (["--executor-opt", "novalue"], ["--executor-opt", "gpu.mem=1"], ["--executor", "dask"],
                ["--executor-opt", "partition=cpu"]):  # slurm options make no sense for the local executor
        r = subprocess.run([sys.executable, "cli.py", "build-mixture", "stage2", "--out", str(tmp_path / "o"),
                            "--source-root", str(ROOT.parent / "shared" / "data" / "hub"), "--no-progress", *bad],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
        assert "error" in r.stdout.lower() or "error" in r.stderr.lower()


def _small_spec(tmp_path: Path, extra_source: str = "") -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    for f in range(4):
        with open(data / f"part-{f}.jsonl", "w") as fh:
            for i in range(60):
                text = " ".join(rng.choice(words, size=int(rng.integers(20, 200))))
                fh.write(json.dumps({"id": f"d{f}-{i}", "text": f"document {f}-{i}: {text}"}) + "\n")
    spec = tmp_path / "small.yaml"
    spec.write_text(f"""name: small
seq_len: 256
tokenizer: {TOKENIZER}
seed: 3
sources:
  - {{name: web, uri: "{data}/part-[0-2].jsonl", sample: 0.7}}
  - {{name: again, uri: "{data}/part-3.jsonl", sample: 1.5}}
{extra_source}""")
    return spec


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.npy"))}


def _corrupt_parquet(tmp_path: Path) -> str:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    return f'  - {{name: broken, uri: "{bad}/*.parquet"}}\n'


def test_local_failing_task_fails_build_naming_file(tmp_path):
    spec = _small_spec(tmp_path, _corrupt_parquet(tmp_path))
    r = subprocess.run([sys.executable, "cli.py", "build-mixture", str(spec), "--out", str(tmp_path / "out"),
                        "--workers", "2", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "broken.parquet" in r.stdout + r.stderr
    assert not (tmp_path / "out" / "manifest.duckdb").exists()


ray = pytest.importorskip("ray", reason="Ray is the `[ray]` extra (make setup installs it)")


@pytest.fixture(scope="module")
def ray_env():
    # one local Ray cluster for this module's builds, so every build joins it instead of starting its own
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}})
    yield
    ray.shutdown()


def test_ray_build_byte_identical_to_local(tmp_path, ray_env):
    spec = _small_spec(tmp_path)
    local = build(spec, tmp_path / "local", workers=1)
    on_ray = build(spec, tmp_path / "ray", workers=2, executor="ray")
    assert _shard_bytes(local) and _shard_bytes(local) == _shard_bytes(on_ray)
    import duckdb

    q = "SELECT source, n_docs, n_tokens FROM composition ORDER BY source"
    a = duckdb.connect(str(local / "manifest.duckdb"), read_only=True).execute(q).fetchall()
    b = duckdb.connect(str(on_ray / "manifest.duckdb"), read_only=True).execute(q).fetchall()
    assert a == b


def test_ray_failing_task_fails_build_naming_file(tmp_path, ray_env):
    from pipelines.build.executors import StageFailed

    spec = _small_spec(tmp_path, _corrupt_parquet(tmp_path))
    with pytest.raises(StageFailed, match="broken.parquet"):
        build(spec, tmp_path / "out", workers=2, executor="ray")
    assert not (tmp_path / "out" / "manifest.duckdb").exists()


def test_dry_run_estimates_without_writing(tmp_path):
    """The dry-run's token estimate is close to what the build writes, and it writes nothing."""
    spec = _small_spec(tmp_path)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "cli.py", "build-mixture", str(spec), "--out", str(out), "--dry-run"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    assert "stage_a" in r.stdout and "per-file" in r.stdout
    total = re.search(r"│ total\s*│\s*([\d,]+)\s*│.*│\s*([\d,]+)\s*│\s*([\d,]+)\s*│", r.stdout)
    assert total, r.stdout
    est_tokens = int(total.group(3).replace(",", ""))
    built = build(spec, out)
    import duckdb

    written, = duckdb.connect(str(built / "manifest.duckdb"), read_only=True).execute(
        "SELECT sum(n_tokens) FROM composition").fetchone()
    assert abs(est_tokens - written) / written < 0.1, (est_tokens, written)

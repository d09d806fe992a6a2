"""Unit-level checks of the spine: row cutting, sampling, URI mapping, executor pass-through."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import HUB

from pipelines.pack.base import cut_into_rows
from pipelines.read.sources import map_uri, resolve_source
from pipelines.steps.sample import sample_copies


@pytest.mark.parametrize("seed", range(5))
def test_cut_into_rows_covers_every_token_once(seed: int):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=200)
    keys = np.arange(200)
    seg, n_rows = cut_into_rows(keys, np.zeros(200, np.int32), lengths, seq_len=128)
    assert n_rows == -(-lengths.sum() // 128)
    assert (seg["start"] + seg["length"] <= 128).all() and (seg["length"] > 0).all()
    per_doc = seg.group_by("key").sum().sort("key")
    assert per_doc["length"].to_list() == lengths.tolist()
    flat = (seg["row"] * 128 + seg["start"]).to_numpy()
    assert (np.diff(flat) == seg["length"].to_numpy()[:-1]).all()  # contiguous, in order, no gaps


def test_sampling_is_stable_and_close_to_rate():
    picks = [sample_copies(0, "s", f"doc-{i}", 0.25) for i in range(20000)]
    assert picks == [sample_copies(0, "s", f"doc-{i}", 0.25) for i in range(20000)]
    assert abs(sum(picks) / 20000 - 0.25) < 0.02
    assert {sample_copies(3, "s", f"d{i}", 1.5) for i in range(100)} == {1, 2}


def test_source_root_maps_hf_uris():
    assert map_uri("hf://datasets/allenai/x/data/a.json.gz", "/m") == "/m/allenai/x/data/a.json.gz"
    assert map_uri("s3://bucket/a.json.gz", "/m") == "s3://bucket/a.json.gz"
    r = resolve_source("hf://datasets/allenai/dolmino-mix-1124/data/dclm/**/*.json.zst", str(HUB))
    assert len(r.files) == 9 and all(f.endswith(".json.zst") for f in r.files)
    assert resolve_source("hf://datasets/allenai/dolmino-mix-1124/data/pes2o/*.json.gz", str(HUB)).files == ()


def test_slurm_executor_pass_through(tmp_path, monkeypatch):
    """--executor slurm composes datatrove's SlurmPipelineExecutor: stage A one task per file, then the global
    stages, each depending on the one before, the manifest (one task) last."""
    from datatrove.executor import SlurmPipelineExecutor

    from pipelines.build.context import prepare
    from pipelines.build.options import BuildOptions
    from pipelines.build.run import make_executors
    from pipelines.build.spec import load_spec

    monkeypatch.chdir(tmp_path)  # the optional synthetic source (relative URI) is absent here
    opts = BuildOptions(out=str(tmp_path), source_root=str(HUB), executor="slurm",
                        executor_options={"partition": "cpu", "time": "01:00:00"})
    ctx = prepare(load_spec("stage2"), opts)
    executors = make_executors(ctx)
    by_name = {e.logging_dir.path.rstrip("/").rsplit("/", 1)[-1]: e for e in executors}
    stage_a, manifest = by_name["stage_a"], executors[-1]
    if "copies_sign" in by_name:  # exact copies are decided first when the spec dedups
        assert executors[0] is by_name["copies_sign"] and executors[0].world_size == len(ctx.tasks)
    assert all(isinstance(e, SlurmPipelineExecutor) for e in executors) and len(executors) >= 3
    assert stage_a.world_size == len(ctx.tasks) == 25 and manifest.world_size == 1
    assert all(b.depends is a for a, b in zip(executors, executors[1:])) and stage_a.partition == "cpu"


def test_local_workers_split_the_cores_for_the_tokenizer(monkeypatch):
    """Several local workers on one machine each get cores / workers tokenizer threads (no oversubscription); a
    cluster task or a single worker keeps the library default, and a user's own setting wins."""
    import os

    from pipelines.steps.tokenize import limit_tokenizer_threads, worker_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert worker_threads("local", 2, 10) == 4
    assert worker_threads("local", 16, 10) == 1  # 10 files: at most 10 workers run at once
    assert worker_threads("local", 1, 10) is None and worker_threads("local", 4, 1) is None
    assert worker_threads("slurm", 64, 1000) is None and worker_threads("ray", 8, 100) is None
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    limit_tokenizer_threads(1)
    assert os.environ["RAYON_NUM_THREADS"] == "1" and os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("RAYON_NUM_THREADS", "3")
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    limit_tokenizer_threads(1)
    assert os.environ["RAYON_NUM_THREADS"] == "3" and "TOKENIZERS_PARALLELISM" not in os.environ

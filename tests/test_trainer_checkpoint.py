"""Checkpoint safety (issue 11): RNG state is stored as tensors and numbers and read with weights_only=True, so a
checkpoint carrying a pickled object is refused instead of running it; a normal resume stays bit-exact."""
from __future__ import annotations

import os
import pathlib
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    load_model_weights,
    load_rng_file,
    rng_state,
    set_rng_state,
)
from trainer.config import TrainConfig
from trainer.metrics import read_metrics
from trainer.train import train

ROOT = Path(__file__).resolve().parents[1]


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(load_rng_file(tmp_path / "rng.pt"))
    assert _draws() == expected


class _Payload:
    """Unpickling this object would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _run(build, out: Path, steps: int, **kw) -> None:
    torch.set_num_threads(1)
    train(TrainConfig(data=str(build), out=str(out), preset="tiny", seq_len=128, steps=steps, progress=False,
                      plot=False, **kw))


@pytest.fixture(scope="module")
def full_run(stage2_build, tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "full"
    _run(stage2_build, run, 4, save_every=2)
    return run


def test_resume_is_bit_exact(full_run, stage2_build, tmp_path):
    resumed = tmp_path / "resumed"
    _run(stage2_build, resumed, 4, resume=str(full_run), resume_step=2)
    a = {r["step"]: r for r in read_metrics(full_run)}
    b = read_metrics(resumed)
    assert [r["step"] for r in b] == [3, 4]
    for r in b:
        assert (r["loss"], r["grad_norm"], r["lr"]) == (a[r["step"]]["loss"], a[r["step"]]["grad_norm"],
                                                       a[r["step"]]["lr"])
    wa, wb = load_model_weights(full_run), load_model_weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert torch.load(checkpoint_dir(full_run, 2) / "rng-rank00000.pt", weights_only=True)  # plain data only


def test_checkpoint_with_a_pickled_payload_is_refused(full_run, stage2_build, tmp_path):
    import shutil

    run = tmp_path / "tampered"
    shutil.copytree(full_run, run)
    marker = tmp_path / "payload-ran"
    rng = checkpoint_dir(run, 2) / "rng-rank00000.pt"
    torch.save({"torch": _Payload(marker), "numpy": {}, "python": {}}, rng)
    with pytest.raises(CheckpointError, match="refused"):
        load_rng_file(rng)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--data", str(stage2_build), "--out",
                           str(tmp_path / "resumed"), "--preset", "tiny", "--seq-len", "128", "--steps", "4",
                           "--resume", str(run), "--resume-step", "2", "--no-progress"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()  # the payload never ran

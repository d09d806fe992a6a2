"""Acceptance on CPU/gloo: two-process FSDP through `cli.py train --nproc 2`, exact resume, merge, init-from.

One uninterrupted 40-step run (FSDP over 2 ranks, checkpoint at 20) and one run resumed from its step 20 are shared
by the tests. The resumed run uses HSDP (`--replicate 2`: a 2-D replicate x shard mesh), so the test also covers
loading a checkpoint into another parallel layout; identical data order and fp64-accumulated grad-norm make the
two runs agree bit for bit on this machine (the tolerance asked for is 1e-5).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import checkpoint_dir, load_model_weights
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--preset", "tiny", "--seq-len", "128", "--steps", "40", "--nproc", "2", "--no-progress"]


def _cli(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(stage2_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    full, resumed = root / "full", root / "resumed"
    _cli("--data", str(stage2_build), "--out", str(full), "--save-every", "20", *COMMON)
    _cli("--data", str(stage2_build), "--out", str(resumed), "--resume", str(full), "--resume-step", "20",
         "--replicate", "2", *COMMON)
    return full, resumed


def test_two_process_fsdp_loss_falls(runs):
    full, _ = runs
    m = read_metrics(full)
    assert [r["step"] for r in m] == list(range(1, 41))
    first, last = sum(r["loss"] for r in m[:5]) / 5, sum(r["loss"] for r in m[-5:]) / 5
    assert first > 10.0  # ~ln(50,304) at init
    assert last < first - 1.0
    assert all(r["n_tokens"] == 2 * 128 for r in m)  # two ranks x one 128-token microbatch
    assert all(k in m[0] for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"))
    assert (full / "loss.png").stat().st_size > 0
    assert (full / "model.safetensors").exists() and (checkpoint_dir(full, 40) / ".metadata").exists()
    # two ranks wrote their own shards
    assert len(list(checkpoint_dir(full, 20).glob("*.distcp"))) == 2


def test_resume_reproduces_the_uninterrupted_run(runs):
    full, resumed = runs
    a = {r["step"]: r for r in read_metrics(full)}
    b = read_metrics(resumed)
    assert [r["step"] for r in b] == list(range(21, 41))
    for r in b:
        assert r["loss"] == pytest.approx(a[r["step"]]["loss"], abs=1e-5), r["step"]
        assert r["grad_norm"] == pytest.approx(a[r["step"]]["grad_norm"], abs=1e-5), r["step"]
        assert r["lr"] == pytest.approx(a[r["step"]]["lr"], rel=1e-12)
    wa, wb = load_model_weights(full), load_model_weights(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-5, msg=k)
    # and training did move the weights between step 20 and step 40
    w20 = load_model_weights(checkpoint_dir(full, 20))
    assert not torch.allclose(w20["lm_head.weight"], wa["lm_head.weight"])


def test_merge_is_elementwise_mean_and_merged_model_trains(runs, stage2_build, tmp_path):
    full, resumed = runs
    paths = [checkpoint_dir(full, 20), checkpoint_dir(full, 40), resumed]  # two DCP checkpoints + one export
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "merge", *map(str, paths), "--out",
                           str(tmp_path / "soup")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [load_model_weights(p) for p in paths]
    merged = load_model_weights(tmp_path / "soup")
    for k, v in merged.items():
        torch.testing.assert_close(v, (states[0][k] + states[1][k] + states[2][k]) / 3, rtol=1e-6, atol=1e-7)

    from trainer.config import TrainConfig
    from trainer.train import train

    torch.set_num_threads(1)
    run = tmp_path / "from-soup"
    last = train(TrainConfig(data=str(stage2_build), out=str(run), preset="tiny", seq_len=128, steps=3,
                             init_from=str(tmp_path / "soup"), progress=False, plot=False, lr=1e-3, warmup=0))
    m = read_metrics(run)
    assert len(m) == 3 and last["step"] == 3
    assert m[0]["loss"] < 9.0  # starts from the trained soup, not from a fresh init (~10.8)
    assert not torch.equal(load_model_weights(run)["lm_head.weight"], merged["lm_head.weight"])

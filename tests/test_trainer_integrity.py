"""Issue 20, trainer side: a run is pinned to its build, refuses damaged data and checkpoints, stops on a full disk
with one line, publishes exports atomically and is not mistaken for an unfinished run after a teardown crash."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from conftest import build

from trainer.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SEQ = 128  # units of 128 tokens cut from the build's 4,096-token rows: fast steps


def _spec(tmp: Path, seed: int) -> Path:
    """stage2 with small shards (several per build) and its own seed (so two builds differ in content)."""
    text = (ROOT / "mixtures" / "stage2.yaml").read_text().replace("\nseed: 0\n", f"\nseed: {seed}\n")
    spec = tmp / f"stage2-small-shards-{seed}.yaml"
    spec.write_text(text + "\nshard_tokens: 163840\n")
    return spec


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> tuple[Path, Path]:
    """Two builds of the same layout (several shards each) and different content."""
    tmp = tmp_path_factory.mktemp("pinned")
    a = build(_spec(tmp, 0), tmp / "a")
    b = build(_spec(tmp, 1), tmp / "b")
    assert len(list((a / "shards").glob("*.npy"))) >= 4
    return a, b


def _copy(build_dir: Path, dst: Path) -> Path:
    shutil.copytree(build_dir, dst, ignore=shutil.ignore_patterns("work"))
    return dst


def _swap(out: Path, new: Path, keep_old: bool) -> None:
    """What `swap_in` does to a build directory: the old shards/ renamed aside, the new one renamed into place,
    the old one deleted (unless `keep_old`)."""
    os.replace(out / "shards", out / "shards.prev")
    shutil.copytree(new / "shards", out / "shards.next")
    os.replace(out / "shards.next", out / "shards")
    shutil.copy2(new / "manifest.duckdb", out / "manifest.duckdb")
    if not keep_old:
        shutil.rmtree(out / "shards.prev")


def _cfg(data: Path, out: Path, steps: int, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), preset="tiny", seq_len=SEQ, steps=steps, progress=False,
                       plot=False, **kw)


def _train(cfg: TrainConfig) -> dict:
    from trainer.train import train

    torch.set_num_threads(1)
    return train(cfg)


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1, proc.stderr
    for needle in needles:
        assert needle in line[0], line[0]


# ------------------------------------------------------------------------------------------- 3: pinned build


def test_a_swapped_build_never_mixes_into_a_running_dataset(builds, tmp_path):
    from trainer.data import PackedDataset
    from trainer.integrity import BuildChangedError

    a, b = builds
    for keep_old in (True, False):
        out = _copy(a, tmp_path / f"out-{keep_old}")
        ds = PackedDataset(out, SEQ, max_open_shards=1)
        per_shard = len(ds) // len(ds.info.shards)
        first, second = 0, 2 * per_shard  # units in shards 0 and 2
        before = [ds[first].tokens.copy(), PackedDataset(a, SEQ)[second].tokens.copy()]
        _swap(out, b, keep_old)
        assert not np.array_equal(PackedDataset(out, SEQ)[second].tokens, before[1])  # the new build differs there
        assert np.array_equal(ds[first].tokens, before[0])  # an open shard keeps its (old) file
        if keep_old:  # the old files still exist: the run keeps reading its own build, never the new one
            assert np.array_equal(ds[second].tokens, before[1])
        else:  # the old files are gone: stop, naming the build, rather than read the new build's shard 2
            with pytest.raises(BuildChangedError, match="replaced while this run trained"):
                ds[second]


def test_trainer_that_sees_its_build_swapped_mid_run_stops_with_exit_2(builds, tmp_path, monkeypatch, capsys):
    import trainer.train as train_mod
    from trainer.cli import run_one

    a, b = builds
    out = _copy(a, tmp_path / "build")
    real_step = train_mod._train_step

    def step_then_swap(step, *args, **kw):
        result = real_step(step, *args, **kw)
        if step == 1:
            _swap(out, b, keep_old=False)
        return result

    monkeypatch.setattr(train_mod, "_train_step", step_then_swap)
    torch.set_num_threads(1)
    cfg = _cfg(out, tmp_path / "run", 30, save_every=10)
    assert run_one(cfg, 1) == 2  # old code: exit 0 after training on a mix of both builds
    err = capsys.readouterr().err
    assert "replaced while this run trained" in err and str(out) in err
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())["build"]
    from trainer.integrity import build_fingerprint

    assert saved == build_fingerprint(a).to_dict()


def test_resume_on_another_build_is_refused_unless_allowed(builds, tmp_path):
    from trainer.checkpoint import checkpoint_dir, read_trainer_state
    from trainer.integrity import BuildChangedError, build_fingerprint

    a, b = builds
    run = tmp_path / "run"
    _train(_cfg(a, run, 2, save_every=1))
    fp_a = build_fingerprint(a).to_dict()
    assert read_trainer_state(checkpoint_dir(run, 1))["build"] == fp_a
    assert json.loads((run / "train_config.json").read_text())["build"] == fp_a
    assert build_fingerprint(b).fingerprint != fp_a["fingerprint"]
    with pytest.raises(BuildChangedError, match="allow-data-change"):
        _train(_cfg(b, tmp_path / "resumed", 2, resume=str(run), resume_step=1))
    with pytest.warns(UserWarning, match="continuing on the new build"):
        _train(_cfg(b, tmp_path / "allowed", 2, resume=str(run), resume_step=1, allow_data_change=True))
    proc = _cli("train", "--data", str(b), "--out", str(tmp_path / "cli"), "--preset", "tiny", "--seq-len", str(SEQ),
                "--steps", "2", "--resume", str(run), "--resume-step", "1", "--no-progress")
    _one_line_error(proc, "--allow-data-change", str(b))


# --------------------------------------------------------------------------------- 6: damaged shards refused


def _damaged(a: Path, tmp: Path, how: str) -> Path:
    out = _copy(a, tmp / how)
    shard = out / "shards" / "shard-00001.npy"
    if how == "truncated":
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size - 4096)
    elif how == "n_rows":
        with duckdb.connect(str(out / "manifest.duckdb")) as con:
            con.execute("update shards set n_rows = n_rows - 1 where path = 'shards/shard-00001.npy'")
    elif how == "n_segments":
        with duckdb.connect(str(out / "manifest.duckdb")) as con:
            con.execute("update shards set n_segments = n_segments + 1 where path = 'shards/shard-00001.npy'")
    elif how == "index":
        (out / "shards" / "shard-00001.idx.arrow").write_bytes(b"not arrow")
    elif how in ("flipped", "flipped-after-verify"):
        if how == "flipped-after-verify":
            from trainer.integrity import write_verified_marker

            write_verified_marker(out)
        with open(shard, "r+b") as f:  # one token changed: size and header intact
            f.seek(shard.stat().st_size - 100)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
        if how == "flipped-after-verify":
            os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    return out


@pytest.mark.parametrize("how", ["truncated", "n_rows", "n_segments", "index", "flipped-after-verify"])
def test_cheap_checks_refuse_a_damaged_build_at_start(builds, tmp_path, how):
    from trainer.cli import check_data
    from trainer.integrity import DataError

    out = _damaged(builds[0], tmp_path, how)
    with pytest.raises(DataError, match="shard-00001"):
        check_data(_cfg(out, tmp_path / "run", 2))


def test_verify_data_rehashes_and_train_exits_2_naming_the_shard(builds, tmp_path):
    from trainer.cli import check_data
    from trainer.integrity import DataError

    out = _damaged(builds[0], tmp_path, "flipped")
    check_data(_cfg(out, tmp_path / "run", 2))  # size and headers intact: only a re-hash sees it
    with pytest.raises(DataError, match="shard-00001.npy: sha256 differs"):
        check_data(_cfg(out, tmp_path / "run", 2, verify_data=True))
    common = ("--out", str(tmp_path / "cli"), "--preset", "tiny", "--seq-len", str(SEQ), "--steps", "2",
              "--no-progress")
    _one_line_error(_cli("train", "--data", str(out), "--verify-data", *common), "shard-00001.npy", "sha256")
    truncated = _damaged(builds[0], tmp_path, "truncated")
    _one_line_error(_cli("train", "--data", str(truncated), *common), "shard-00001.npy", "truncated")


# ---------------------------------------------------------------------------- 4: checkpoints with checksums


@pytest.fixture(scope="module")
def ckpt_run(builds, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ckpt") / "run"
    _train(_cfg(builds[0], run, 2, save_every=1))
    return run


def _flip_distcp(run: Path, tmp: Path) -> tuple[Path, Path]:
    from trainer.checkpoint import checkpoint_dir

    copy = tmp / "damaged"
    shutil.copytree(run, copy)
    for name in ("model.safetensors", "config.json"):  # only checkpoints: export/merge must read them
        (copy / name).unlink()
    step = checkpoint_dir(copy, 2)
    target = sorted(step.glob("*.distcp"))[0]
    with open(target, "r+b") as f:
        f.seek(target.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    return copy, target


def test_every_checkpoint_carries_checksums_of_all_its_files(ckpt_run):
    from trainer.checkpoint import checkpoint_dir
    from trainer.ckpt_files import CHECKSUMS

    for step in (1, 2):
        d = checkpoint_dir(ckpt_run, step)
        listed = json.loads((d / CHECKSUMS).read_text())["files"]
        assert set(listed) == {p.name for p in d.iterdir()} - {CHECKSUMS}
    assert not list((ckpt_run / "checkpoints").glob("*.tmp"))


def test_a_flipped_byte_in_a_checkpoint_is_refused_everywhere(builds, ckpt_run, tmp_path):
    from trainer.checkpoint import CheckpointError, load_model_weights

    damaged, target = _flip_distcp(ckpt_run, tmp_path)
    with pytest.raises(CheckpointError, match=target.name):
        load_model_weights(damaged)  # old code: loads with exit 0 and different weights
    with pytest.raises(CheckpointError, match=target.name):  # resume
        _train(_cfg(builds[0], tmp_path / "resumed", 3, resume=str(damaged)))
    _one_line_error(_cli("merge", str(damaged), str(ckpt_run), "--out", str(tmp_path / "merged")), target.name)
    _one_line_error(_cli("export-hf", str(damaged), "--out", str(tmp_path / "hf")), target.name)
    _one_line_error(_cli("train", "--data", str(builds[0]), "--out", str(tmp_path / "init"), "--seq-len", str(SEQ),
                         "--steps", "1", "--lr", "1e-3", "--init-from", str(damaged), "--no-progress"),
                    target.name)
    assert not (tmp_path / "merged" / "model.safetensors").exists() and not (tmp_path / "hf").exists()



def test_a_rank_refusal_under_nproc_2_is_still_one_line_and_exit_2(builds, ckpt_run, tmp_path):
    """With --nproc 2 the ranks run under torchrun, which exits 1 and prints its own ChildFailedError traceback
    whatever its ranks did: both ranks refuse the damaged checkpoint, the user still gets one line and exit 2. The
    run directory is relative and the launch is from another directory: the ranks resolve it where the user is."""
    damaged, target = _flip_distcp(ckpt_run, tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--data", str(builds[0]), "--out", "resumed",
                           "--preset", "tiny", "--seq-len", str(SEQ), "--steps", "3", "--resume", str(damaged),
                           "--nproc", "2", "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    _one_line_error(proc, target.name)
    assert (tmp_path / "resumed" / "train_config.json").exists()

# ------------------------------------------------------------------------------ 7: full disk during a save


def _tmpfs(path: Path, size: str = "20m") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return path


@pytest.fixture
def small_disk(tmp_path):
    disk = _tmpfs(tmp_path / "disk")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_tmp(builds, small_disk, tmp_path, monkeypatch):
    import trainer.checkpoint as ckpt
    from trainer.ckpt_files import DiskFullError

    run = small_disk / "run"  # a tiny-preset checkpoint is ~47 MB, the disk 20 MB
    proc = _cli("train", "--data", str(builds[0]), "--out", str(run), "--preset", "tiny", "--seq-len", str(SEQ),
                "--steps", "2", "--save-every", "1", "--no-progress")
    _one_line_error(proc, str(run / "checkpoints"), "needs about", "free")
    assert not list((run / "checkpoints").glob("*"))  # no step-N.tmp left
    # the disk fills up *while* writing (the free-space estimate fooled): same line, nothing left behind
    monkeypatch.setattr(ckpt, "free_bytes", lambda path: 1 << 40)
    run2 = small_disk / "run2"
    with pytest.raises(DiskFullError, match="needs about"):
        _train(_cfg(builds[0], run2, 2, save_every=1))
    assert not list((run2 / "checkpoints").glob("*"))


# ------------------------------------------------------------------------------------------ 8: exports


def test_export_hf_of_a_checkpoint_only_run_uses_the_builds_tokenizer(builds, ckpt_run, tmp_path):
    from trainer.hf import resolve_export_tokenizer

    run = tmp_path / "ckpt-only"
    shutil.copytree(ckpt_run, run)
    for name in ("model.safetensors", "config.json"):
        (run / name).unlink()
    tok = resolve_export_tokenizer(run)
    assert tok.source == f"build {builds[0]}"  # old code: "Instella default (build {...} not found)"


def test_an_interrupted_export_is_never_taken_for_a_finished_run(builds, ckpt_run, tmp_path, monkeypatch):
    import trainer.hf as hf
    from trainer.checkpoint import checkpoint_dir, load_model_weights
    from trainer.cli import finished_run

    run = tmp_path / "killed"
    shutil.copytree(ckpt_run, run)
    stored = json.loads((run / "train_config.json").read_text())
    (run / "train_config.json").write_text(json.dumps(dict(stored, out=str(run))))  # as if trained here
    cfg = _cfg(builds[0], run, 2, save_every=1)
    assert finished_run(cfg)
    (run / "config.json").unlink()  # a kill between the weights and their config.json
    assert not finished_run(cfg)  # old code: "finished", so a soup would merge a half-exported seed
    weights = load_model_weights(run)  # falls back to the latest checkpoint instead of failing
    reference = load_model_weights(checkpoint_dir(ckpt_run, 2))
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    # export-hf publishes the whole directory at once: a failure half-way leaves the previous export as it was
    out = tmp_path / "hf"
    hf.export_hf(ckpt_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(hf, "write_tokenizer", boom)
    with pytest.raises(KeyboardInterrupt):
        hf.export_hf(ckpt_run, out, dtype="bfloat16")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")] == []


# --------------------------------------------------------------------- 9: teardown crash after a finished run


def test_a_teardown_crash_after_a_finished_seed_does_not_stop_the_soup(builds, tmp_path, monkeypatch):
    import trainer.cli as cli

    real = cli.run_one

    def finished_then_abort(cfg, nproc):
        real(cfg, nproc)
        return 134  # SIGABRT of a rank after the run had finished and exported

    monkeypatch.setattr(cli, "run_one", finished_then_abort)
    torch.set_num_threads(1)
    cfg = _cfg(builds[0], tmp_path / "soup", 1)
    assert cli.train_soup(cfg, [1, 2], 1) == 0  # old code: 134, the soup stopped after seed 1
    assert (tmp_path / "soup" / "model.safetensors").exists()

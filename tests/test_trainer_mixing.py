"""Load-time mixing (trainer/mixing.py): share rounding and caps, sources of drawn rows, resume mid-mix, no-mix
batches unchanged, `train --mix` end to end and its CLI errors."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT

from trainer.data_synthetic import (
    EOS_ID,
    PAD_ID,
    source_of_token,
    write_synthetic_build,
    write_synthetic_mixture,
)
from trainer.mixing import (
    MixedLoader,
    MixRequest,
    largest_remainder,
    load_pools,
    make_loader,
    parse_mix,
    plan_mix,
)

SEQ = 64
SOURCES = ("code", "math", "web")  # name order = the order write_synthetic_mixture gets them below


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mix") / "by-source"
    rng = np.random.default_rng(0)
    write_synthetic_mixture(out, {"code": rng.integers(50, 300, 500), "math": rng.integers(5, 100, 300),
                                  "web": rng.integers(5, 200, 2000)}, SEQ, rows_per_shard=32)
    return out


def _loader(build, weights, total_units, caps=None, rank=0, world=1, micro=2, accum=4, seed=0, seq_len=SEQ):
    datasets, pools = load_pools([str(build)] if not isinstance(build, list) else [str(b) for b in build], seq_len)
    plan = plan_mix(pools, MixRequest(weights, caps or {}), total_units, seq_len)
    return MixedLoader(datasets, pools, plan, seed, rank, world, micro, accum)


def _sources_of(batch) -> list[set[int]]:
    """The sources whose tokens each unit of a microbatch holds (EOS and padding say nothing)."""
    ids = batch.input_ids.numpy().reshape(-1, SEQ)
    return [{source_of_token(t) for t in row.tolist() if t not in (EOS_ID, PAD_ID)} for row in ids]


# --------------------------------------------------------------------------------------------- rounding and caps
def test_largest_remainder_hand_computed():
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]  # ties: the earlier source gets the extra row
    assert largest_remainder(7, [0.5, 0.3, 0.2]) == [4, 2, 1]  # quotas 3.5, 2.1, 1.4: floors 3, 2, 1 + 1 to .5
    assert largest_remainder(100, [2, 1, 1]) == [50, 25, 25]
    rng = np.random.default_rng(1)
    for _ in range(50):
        w = rng.random(5)
        total = int(rng.integers(1, 10_000))
        counts = largest_remainder(total, list(w))
        assert sum(counts) == total
        assert all(abs(c - total * x / w.sum()) < 1 for c, x in zip(counts, w))


def test_too_small_source_is_an_error_naming_it_and_the_repeat(mixture):
    _, pools = load_pools([str(mixture)], SEQ)
    math_rows = pools["math"].n_rows_usable
    total = 1000  # math's share 0.5 = 500 rows, about 2 repeats of its ~250 rows
    need = 500 / math_rows
    cap = math.ceil(need * 100) / 100
    with pytest.raises(ValueError, match=rf"math needs 500 rows of 64 tokens but has {math_rows} \(repeat "
                                         rf"{need:.3g}x > max_repeat 1\).*--max-repeat {cap:g}"):
        plan_mix(pools, MixRequest({"math": 0.5, "web": 0.5}), total, SEQ)
    with pytest.raises(ValueError, match="max_repeat 2"):
        plan_mix(pools, MixRequest({"math": 0.5, "web": 0.5}, {"math": 2}), total, SEQ)
    plan = plan_mix(pools, MixRequest({"math": 0.5, "web": 0.5}, {"math": need}), total, SEQ)
    assert plan.counts == (500, 500) and plan.repeats[0] == pytest.approx(500 / math_rows)
    plan = plan_mix(pools, MixRequest({"math": 0.5, "web": 0.5}, {}, default_max_repeat=3), total, SEQ)
    assert plan.max_repeat == (3, 3)
    with pytest.raises(ValueError, match=r"not in the --data builds: pdf \(available: code, math, web\)"):
        plan_mix(pools, MixRequest({"pdf": 1.0}), total, SEQ)


def test_realized_shares_match_requested_and_rows_never_mix_sources(mixture):
    weights = {"web": 0.5, "math": 0.3, "code": 0.2}
    steps = 150
    loader = _loader(mixture, weights, steps * 8, caps={"math": 3})
    seen = {s: 0 for s in SOURCES}
    for _ in range(steps):
        for batch in loader.next_step():
            for sources in _sources_of(batch):
                assert len(sources) == 1  # a unit comes from one pool
                seen[SOURCES[sources.pop()]] += 1
    report = loader.report(steps)
    assert seen == {s: report["sources"][s]["planned_units"] for s in SOURCES}  # exactly the plan, in rows
    for s, w in weights.items():
        row = report["sources"][s]
        assert abs(row["realized_share"] - w) < 0.01 * w  # within 1% (only the last row of a pool is short)
        assert row["realized_units"] == row["planned_units"]
        assert row["realized_tokens"] <= row["realized_units"] * SEQ
    assert report["sources"]["math"]["epochs"] > 1  # repeated, within its cap of 3


def test_mixing_builds_given_separately(tmp_path):
    rng = np.random.default_rng(2)
    a = write_synthetic_mixture(tmp_path / "a", {"web": rng.integers(5, 200, 400)}, SEQ, 16)["web"].path
    b = write_synthetic_mixture(tmp_path / "b", {"code": rng.integers(5, 200, 400)}, SEQ, 16)["code"].path
    loader = _loader([a, b], {"web": 3, "code": 1}, 80)
    for _ in range(10):
        loader.next_step()
    rep = loader.report(10)
    assert (rep["sources"]["web"]["realized_units"], rep["sources"]["code"]["realized_units"]) == (60, 20)
    assert rep["sources"]["web"]["build"] == str(a)
    with pytest.raises(ValueError, match="source web is in two builds"):
        load_pools([str(a), str(a)], SEQ)


# --------------------------------------------------------------------------------------------------------- resume
def _stream(loader, steps):
    return [[torch.cat([b.input_ids, b.labels, b.positions]) for b in loader.next_step()] for _ in range(steps)]


def test_resume_mid_mix_gives_identical_batches(mixture):
    weights = {"web": 0.6, "math": 0.2, "code": 0.2}
    total = 40 * 8
    full = _loader(mixture, weights, total, caps={"math": 3}, seed=5)
    expected = _stream(full, 20)
    first = _loader(mixture, weights, total, caps={"math": 3}, seed=5)
    _stream(first, 7)
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    resumed = _loader(mixture, weights, total, caps={"math": 3}, seed=5)
    resumed.load_state_dict(state)
    got = _stream(resumed, 13)
    assert all(torch.equal(x, y) for s, t in zip(expected[7:], got) for x, y in zip(s, t))
    assert resumed.report(20)["sources"] == full.report(20)["sources"]
    # ranks split the same global stream
    r0 = _loader(mixture, weights, total, caps={"math": 3}, seed=5, world=2, accum=2)
    r1 = _loader(mixture, weights, total, caps={"math": 3}, seed=5, rank=1, world=2, accum=2)
    a, b = _stream(r0, 3), _stream(r1, 3)
    one = _loader(mixture, weights, total, caps={"math": 3}, seed=5)
    ids = lambda steps: sorted(tuple(x[:SEQ].tolist()) for s in steps for x in s)  # noqa: E731
    assert sorted(ids(a) + ids(b)) == sorted(ids(_stream(one, 3)))


def test_other_seed_other_order_same_counts(mixture):
    a = _loader(mixture, {"web": 1, "code": 1}, 160, seed=0)
    b = _loader(mixture, {"web": 1, "code": 1}, 160, seed=1)
    sa, sb = _stream(a, 20), _stream(b, 20)
    assert not all(torch.equal(x, y) for s, t in zip(sa, sb) for x, y in zip(s, t))
    assert a.units == b.units == [80, 80]


# ------------------------------------------------------------------------------------- without --mix: unchanged
# sha256 of the batches StepLoader gave before load-time mixing existed (commit 4036ce6), for the build below
NO_MIX_BATCHES_SHA256 = "afb8d8fab957e56e4495f631525bb7d7e9ff5cdb7eb72c3b2db25f2e9b409684"


def test_without_mix_the_run_loader_gives_the_same_batches_as_before(tmp_path):
    write_synthetic_build(tmp_path, np.random.default_rng(7).integers(5, 150, size=300), seq_len=64,
                          rows_per_shard=16)
    h = hashlib.sha256()
    for seq_len, positions, attention in ((64, "document", "document"), (32, "absolute", "causal")):
        cfg = SimpleNamespace(data=str(tmp_path), mix=None, seed=3)
        settings = SimpleNamespace(micro_batch=2, grad_accum=2, positions=positions, attention=attention)
        loader = make_loader(cfg, settings, seq_len, rank=0, world=1)
        for _ in range(100):  # past the end of the first epoch at seq_len 64
            for b in loader.next_step():
                for t in (b.input_ids, b.positions, b.labels, b.cu_seqlens):
                    h.update(t.numpy().tobytes())
    assert h.hexdigest() == NO_MIX_BATCHES_SHA256


# ------------------------------------------------------------------------------------------------------ parsing
def test_parse_mix_text_and_files(tmp_path):
    r = parse_mix("web=0.5, math=0.3:4,code=0.2", 2)
    assert r.weights == {"web": 0.5, "math": 0.3, "code": 0.2} and r.max_repeat == {"math": 4}
    assert (r.cap("math"), r.cap("web")) == (4, 2)
    f = tmp_path / "mix.yaml"
    f.write_text("sources: {web: 0.5, math: {weight: 0.3, max_repeat: 4}}\nmax_repeat: 2\n")
    r = parse_mix(str(f))
    assert r.weights == {"web": 0.5, "math": 0.3} and (r.cap("math"), r.cap("web")) == (4, 2)
    f.write_text("web: 1\ncode: 3\n")
    assert parse_mix(str(f)).weights == {"web": 1, "code": 3}
    f.write_text("name: x\nsources:\n  - {name: web, uri: a, share: 0.7}\n  - {name: code, uri: b, share: 0.3, "
                 "max_repeat: 5}\n  - {name: other, uri: c}\n")
    r = parse_mix(str(f))
    assert r.weights == {"web": 0.7, "code": 0.3} and r.max_repeat == {"code": 5}


@pytest.mark.parametrize("text,message", [
    ("web", "--mix items must look like source=weight"),
    ("web=x", "--mix weight of web must be a number, got 'x'"),
    ("web=-1,code=1", "weight of web must be >= 0"),
    ("web=0", "the weights add up to 0"),
    ("web=1,web=2", "--mix names web twice"),
    ("web=1:0.5", "max_repeat of web must be >= 1"),
    ("missing.yaml", "--mix missing.yaml: no such file"),
])
def test_bad_mix_text(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_mix(text)


# ------------------------------------------------------------------------------------------------- end to end
def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.parametrize("extra,message", [
    (["--mix", "web=abc"], "error: --mix weight of web must be a number, got 'abc'"),
    (["--mix", "pdf=1"], "error: --mix names source(s) not in the --data builds: pdf (available: code, math, web)"),
    (["--mix", "math=1", "--steps", "1000"], "error: source too small for its weight: math needs"),
    (["--mix", "web=1", "--max-repeat", "0.5"], "error: --max-repeat must be >= 1"),
    (["--max-repeat", "2"], "error: --max-repeat applies to --mix only"),
    (["--data", "{build}"], "error: 2 --data builds need --mix"),
])
def test_bad_mix_flags_exit_2_with_one_line(mixture, tmp_path, extra, message):
    extra = [x.replace("{build}", str(mixture)) for x in extra]
    steps = [] if "--steps" in extra else ["--steps", "2"]
    r = cli("train", "--data", str(mixture), "--out", str(tmp_path / "run"), *steps, "--no-progress", *extra)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stdout + r.stderr


def test_train_with_mix_writes_mixture_json_and_resumes_exactly(mixture, tmp_path):
    from trainer.config import TrainConfig
    from trainer.metrics import read_metrics
    from trainer.train import train

    torch.set_num_threads(1)
    mix = {"builds": [str(mixture)], "request": parse_mix("web=0.5,math=0.3,code=0.2", 2).to_dict()}
    base = dict(data=str(mixture), preset="tiny", seq_len=SEQ, steps=6, micro_batch=2, progress=False, plot=False,
                mix=mix)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(TrainConfig(out=str(full), save_every=3, **base))
    report = json.loads((full / "mixture.json").read_text())
    assert report["step"] == 6 and report["total_units"] == 12
    assert {s: r["realized_units"] for s, r in report["sources"].items()} == {"code": 2, "math": 4, "web": 6}
    stored = json.loads((full / "train_config.json").read_text())
    assert stored["mix"]["request"]["weights"] == {"web": 0.5, "math": 0.3, "code": 0.2}
    assert stored["resolved"]["mix"]["sources"]["math"]["planned_units"] == 4
    train(TrainConfig(out=str(resumed), resume=str(full), resume_step=3, **base))
    a = {r["step"]: r for r in read_metrics(full)}
    b = read_metrics(resumed)
    assert [r["step"] for r in b] == [4, 5, 6]
    assert all((r["loss"], r["grad_norm"]) == (a[r["step"]]["loss"], a[r["step"]]["grad_norm"]) for r in b)
    assert json.loads((resumed / "mixture.json").read_text())["sources"] == report["sources"]
    # a mixed run's checkpoint is refused without --mix (and the other way round), by name
    from trainer.checkpoint import CheckpointError

    plain = dict(base, mix=None)
    with pytest.raises(CheckpointError, match="from a run with --mix"):
        train(TrainConfig(out=str(tmp_path / "plain"), resume=str(full), resume_step=3, **plain))


def test_resume_of_a_mixed_run_checks_every_build_not_only_the_first(tmp_path):
    """A mixed run's checkpoint records the fingerprint of each of its builds: resuming after the second build was
    rebuilt with other content is refused naming that build (before, only --data's first build was compared), and
    --allow-data-change turns the refusal into a warning. A soup keeps a finished mixed seed only on the same builds."""
    from trainer.config import TrainConfig
    from trainer.integrity import BuildChangedError
    from trainer.train import train

    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    a = write_synthetic_mixture(tmp_path / "a", {"web": rng.integers(5, 200, 400)}, SEQ, 16)["web"].path
    b = write_synthetic_mixture(tmp_path / "b", {"code": rng.integers(5, 200, 400)}, SEQ, 16)["code"].path
    mix = {"builds": [str(a), str(b)], "request": parse_mix("web=0.5,code=0.5", 2).to_dict()}
    base = dict(data=str(a), preset="tiny", seq_len=SEQ, steps=4, micro_batch=2, progress=False, plot=False, mix=mix)
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), save_every=2, **base))
    from trainer.cli import finished_run

    assert finished_run(TrainConfig(out=str(run), save_every=2, **base))  # a soup keeps this seed (old code: never)
    other = write_synthetic_mixture(tmp_path / "b2", {"code": rng.integers(5, 200, 400)}, SEQ, 16)["code"].path
    os.rename(b, tmp_path / "b-old")
    os.rename(other, b)  # the same path, other content
    assert not finished_run(TrainConfig(out=str(run), save_every=2, **base))  # ... but not on other data
    with pytest.raises(BuildChangedError, match=str(b)):
        train(TrainConfig(out=str(tmp_path / "resumed"), resume=str(run), resume_step=2, **base))
    with pytest.warns(UserWarning, match="continuing on the new build"):
        train(TrainConfig(out=str(tmp_path / "allowed"), resume=str(run), resume_step=2, allow_data_change=True,
                          **base))

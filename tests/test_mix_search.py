"""mix-search (issue 19 item 5): the regression finds a known optimum, the swarm writes every file, skips finished
anneals on a re-run, retries and reports a crashed one; proposed.yaml is a buildable spec.

The end-to-end tests inject the anneal runner (a synthetic mixture -> metric function) so they exercise the
datatrove stages, the files and the failure handling in seconds; tests/test_mix_search_train.py runs real anneals
through `cli.py train --mix`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from holdout_fixture import build_with_holdout, mirror_heldout_texts

from trainer.mix_fit import Target, dirichlet_mixtures, fit_metric, propose, spearman
from trainer.mix_search import (
    MixSearchConfig,
    base_mixture,
    mix_arg,
    read_mixes,
    run_mix_search,
    sample_candidates,
    train_command,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- the regression


def test_spearman_matches_hand_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties averaged: ranks a = [1, 2.5, 2.5, 4], b = [1, 2, 3, 4] -> Pearson of ranks
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef(ra, rb)[0, 1])


def test_fit_finds_the_known_optimum_of_a_synthetic_mixture_law():
    """metric = exp(c · w) (a data-mixing law): the log-linear model is chosen, recovers c up to the constant
    that the simplex cannot identify, and the proposal is the true best of the search set (the RegMix average of
    its 100 truly best points), better than every candidate."""
    c = np.array([0.9, -0.6, 0.2, 0.4])
    base = np.array([0.4, 0.2, 0.3, 0.1])
    rng = np.random.default_rng(0)
    W = dirichlet_mixtures(base, 30, 10.0, rng)
    truth = lambda w: np.exp(np.asarray(w) @ c)  # noqa: E731
    fit = fit_metric("bpb:x", W, truth(W))
    assert fit.model.kind == "loglinear" and fit.cv_spearman["loglinear"] > 0.99
    coef = np.array(fit.model.coef)
    assert np.allclose(coef - coef.mean(), c - c.mean(), atol=1e-3)
    prop = propose({"bpb:x": fit}, Target.parse("bpb:*"), base, 10.0, seed=0)
    search = dirichlet_mixtures(base, 20_000, 10.0, np.random.default_rng(0 + 7919))
    best = search[np.argsort(truth(search))[:100]].mean(0)
    assert np.allclose(prop.weights, best / best.sum(), atol=1e-9)
    assert truth(prop.weights) < truth(W).min()
    assert prop.weights[1] > base[1] and prop.weights[0] < base[0]  # toward the helpful source, away from the bad


def test_target_terms_weights_and_globs():
    t = Target.parse("0.5*bpb:math-*,-1*arc_easy:acc")
    assert t.terms == ((0.5, "bpb:math-*"), (-1.0, "arc_easy:acc"))
    m = {"bpb:math-a": 1.0, "bpb:math-b": 3.0, "bpb:web": 9.0, "arc_easy:acc": 0.25}
    assert t.value(m) == pytest.approx(0.5 * 2.0 - 0.25)
    with pytest.raises(ValueError, match="matches no metric"):
        Target.parse("bpb:code-*").value(m)


def test_candidate_zero_is_the_builds_mix_and_mix_args_sum_to_one():
    base = {"a": 0.5, "b": 0.3, "c": 0.2}
    mixes = sample_candidates(base, 5, 20.0, seed=3)
    assert mixes[0] == base and len(mixes) == 5
    assert mixes == sample_candidates(base, 5, 20.0, seed=3)  # seeded
    for m in mixes:
        text = mix_arg(m)
        assert math.isclose(sum(float(kv.split("=")[1]) for kv in text.split(",")), 1.0, abs_tol=1e-9)


# ----------------------------------------------------------------------------------------- the swarm, injected


@pytest.fixture(scope="module")
def holdout_build(stage2_build, tmp_path_factory, shared, tokenizer_path) -> Path:
    return build_with_holdout(stage2_build, tmp_path_factory.mktemp("msb") / "build", tokenizer_path,
                              mirror_heldout_texts(shared, 4))


class SyntheticRunner:
    """Metrics from a known function of the weights; crashes on the mixes in `crash` (every attempt) and on the
    first attempt of the mixes in `flaky`. Records every call in a file (datatrove runs a deep copy of each
    step)."""

    def __init__(self, record: Path, crash=(), flaky=()):
        self.record, self.crash, self.flaky = record, set(crash), set(flaky)
        record.write_text("")

    @property
    def calls(self) -> list[int]:
        return [int(x) for x in self.record.read_text().split()]

    def __call__(self, cfg, weights, run, log):
        mix_id = int(run.parent.name.split("-")[1])
        with self.record.open("a") as fh:
            fh.write(f"{mix_id}\n")
        run.mkdir(parents=True)
        log.write_text(f"anneal {mix_id}\n")
        if mix_id in self.crash or (mix_id in self.flaky and self.calls.count(mix_id) == 1):
            log.write_text(f"anneal {mix_id}\nRuntimeError: out of memory\n")
            raise RuntimeError("out of memory")
        math_w = weights.get("dolmino-math-gsm8k", 0.0)
        web_w = weights.get("dolmino-wiki", 0.0)
        return {"bpb:dolmino-math-gsm8k": 2.0 - 1.5 * math_w, "loss:dolmino-math-gsm8k": 3.0 - math_w,
                "bpb:dolmino-wiki": 1.5 - 0.5 * web_w, "loss:dolmino-wiki": 2.0 - web_w}, cfg.steps


def _cfg(build: Path, out: Path, **kw) -> MixSearchConfig:
    return MixSearchConfig(data=(str(build),), init_from="unused", out=str(out), candidates=kw.pop("k", 6),
                           steps=3, target=kw.pop("target", "bpb:dolmino-math-*"), retries=1, **kw)


def test_swarm_writes_every_file_reports_a_crash_and_reruns_only_what_is_missing(holdout_build, tmp_path):
    out = tmp_path / "search"
    runner = SyntheticRunner(tmp_path / "calls1", crash={2}, flaky={4})
    result = run_mix_search(_cfg(holdout_build, out), runner=runner)
    # mix 2 crashed twice (1 retry) and is reported; mix 4 failed once and succeeded on its retry
    assert [f["mix_id"] for f in result["failed"]] == [2]
    assert runner.calls.count(2) == 2 and runner.calls.count(4) == 2
    assert json.loads((out / "anneals/mix-004/result.json").read_text())["attempts"] == 2
    failed = json.loads((out / "anneals/mix-002/failed.json").read_text())
    assert "out of memory" in failed["error"] and "out of memory" in failed["log_tail"]
    for name in ("mixes.parquet", "results.parquet", "fit.json", "proposed.yaml", "report.md", "report.png"):
        assert (out / name).stat().st_size > 0, name

    mixes, kinds = read_mixes(out)
    assert sorted(kinds.values()) == ["candidate"] * 6 + ["proposed"]
    assert mixes[0] == pytest.approx(base_mixture((str(holdout_build),)))
    assert all(math.isclose(sum(m.values()), 1.0, abs_tol=1e-9) for m in mixes.values())
    res = pq.read_table(out / "results.parquet").to_pylist()
    assert {r["mix_id"] for r in res} == {0, 1, 3, 4, 5, 6}  # the crashed candidate has no result, 6 = proposed
    assert {r["step"] for r in res} == {3}
    fit = json.loads((out / "fit.json").read_text())
    assert set(fit["metrics"]) == {"bpb:dolmino-math-gsm8k", "loss:dolmino-math-gsm8k", "bpb:dolmino-wiki",
                                   "loss:dolmino-wiki"}
    assert all("cv_spearman" in m for m in fit["metrics"].values())
    # the target favours math: the proposal gives it more than the build's mix, and realizes a better target
    pid = 6
    assert mixes[pid]["dolmino-math-gsm8k"] > mixes[0]["dolmino-math-gsm8k"]
    realized = {r["mix_id"]: r["value"] for r in res if r["metric"] == "bpb:dolmino-math-gsm8k"}
    assert realized[pid] < realized[0]
    assert math.isfinite(fit["proposal"]["predicted_target"])
    report = (out / "report.md").read_text()
    assert "Failed anneals" in report and "mix 2" in report and "Candidates ranked" in report

    # re-run: finished anneals are skipped, the crashed one is retried, the proposal re-fitted (one more point)
    runner2 = SyntheticRunner(tmp_path / "calls2")
    result2 = run_mix_search(_cfg(holdout_build, out), runner=runner2)
    assert result2["failed"] == []
    assert sorted(runner2.calls) in ([2], [2, 6])  # the proposal moves with the new point, so it may re-run
    assert not (out / "anneals/mix-002/failed.json").exists()
    runner3 = SyntheticRunner(tmp_path / "calls3")
    run_mix_search(_cfg(holdout_build, out), runner=runner3)
    assert runner3.calls == []  # everything finished: nothing re-runs


def test_proposed_yaml_is_a_buildable_spec(holdout_build, tmp_path):
    out = tmp_path / "search"
    run_mix_search(_cfg(holdout_build, out, k=4), runner=SyntheticRunner(tmp_path / "calls"))
    import yaml

    spec = yaml.safe_load((out / "proposed.yaml").read_text())
    mixes, kinds = read_mixes(out)
    proposal = mixes[next(i for i, k in kinds.items() if k == "proposed")]
    shares = {s["name"]: s["share"] for s in spec["sources"] if "share" in s}
    assert shares == pytest.approx(proposal, abs=2e-6) and sum(shares.values()) <= 1 + 1e-6
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "build-mixture", str(out / "proposed.yaml"),
                        "--out", str(tmp_path / "b2"), "--source-root", str(Path(os.environ["MIDTRAIN_SHARED"]) /
                                                                           "hub"), "--dry-run"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]


def test_train_command_is_a_linear_anneal_to_zero_with_the_mix(holdout_build, tmp_path):
    cfg = _cfg(holdout_build, tmp_path / "s", eval_tasks="arc_easy")
    cmd = train_command(cfg, {"a": 0.25, "b": 0.75}, tmp_path / "run")
    flags = dict(zip(cmd[3::1], cmd[4::1]))
    assert (flags["--schedule"], flags["--warmup"], flags["--final-lr-ratio"]) == ("linear", "0", "0")
    assert flags["--mix"] == "a=0.250000,b=0.750000" and flags["--eval-every"] == "3"
    assert flags["--eval-tasks"] == "arc_easy" and flags["--seed"] == "0"


def test_cli_refuses_a_target_that_matches_nothing(holdout_build, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "mix-search", "--data", str(holdout_build),
                        "--init-from", "x", "--out", str(tmp_path / "s"), "--target", "bpb:code-*"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "matches no metric" in p.stderr and "Traceback" not in p.stderr


def test_slurm_executor_chains_the_stages_one_task_per_anneal(holdout_build, tmp_path):
    """--executor slurm: datatrove's SlurmPipelineExecutor per stage, each depending on the previous, one array
    task per anneal, --slurm-opt passed through (nothing is submitted here)."""
    from trainer.mix_search import MixSearchError, make_executors

    cfg = _cfg(holdout_build, tmp_path / "s", k=5, executor="slurm",
               slurm={"partition": "gpu", "gpus_per_task": 8, "cpus_per_task": 32})
    cands, fit, proposed, report = make_executors(cfg)
    assert type(cands).__name__ == "SlurmPipelineExecutor" and cands.tasks == 5 and cands.gpus_per_task == 8
    assert (fit.depends, proposed.depends, report.depends) == (cands, fit, proposed)
    assert fit.tasks == proposed.tasks == report.tasks == 1
    with pytest.raises(MixSearchError, match="partition"):
        make_executors(_cfg(holdout_build, tmp_path / "t", executor="slurm"))

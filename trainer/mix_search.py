"""`mix-search`: choose a mid-training mixture from a swarm of micro-anneals (OLMo 2 microanneals, RegMix).

From the same weights (--init-from), K short anneals — same seed, same steps and tokens, LR linearly to zero from
the peak without warmup — each train on one mixture of the build's per-source pools (`cli.py train --mix`).
Candidate 0 is the build's own mix (its realized token shares); the others are drawn from a Dirichlet centred on it.
Every anneal ends with the in-loop evaluation (trainer/evaluate.py: held-out bpb per source, --eval-tasks). A
regression per metric (trainer/mix_fit.py) proposes the mixture minimising --target, which is run as one more anneal
so the report shows predicted against realized.

Execution is datatrove's (never a scheduler of our own): four stages, each an executor depending on the previous —
  candidates (K tasks, one anneal each) -> propose (fit) -> proposed (one anneal) -> report
— on LocalPipelineExecutor or SlurmPipelineExecutor. All state is on disk in OUT:
  mixes.parquet     mix_id, source, weight, kind (candidate | proposed)
  anneals/mix-NNN/  run/ (the training run), train.log, result.json (metrics) or failed.json (error, log tail)
  results.parquet   mix_id, metric, value, step (every finished anneal)
  fit.json          per metric: chosen model, coefficients per source, leave-one-out Spearman per model kind
  proposed.yaml     the build's spec with `share:` set to the proposal (build it with `build-mixture`)
  report.md, report.png
A task never raises for a failed anneal: it retries (--retries), then writes failed.json, which the report lists and
the command's exit code reflects, and the other anneals still run. Re-running the command skips every anneal whose
result.json holds the same mixture, and retries the failed ones.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trainer.mix_fit import (
    Target,
    dirichlet_mixtures,
    fit_metric,
    fit_report,
    propose,
    spearman,
)

ROOT = Path(__file__).resolve().parents[1]
EXECUTORS = ("local", "slurm")


class MixSearchError(ValueError):
    """A mix-search that cannot go on (bad input, too few finished anneals)."""


@dataclass(frozen=True)
class MixSearchConfig:
    data: tuple[str, ...]  # build(s) with per-source pools and held-out data
    init_from: str  # run / checkpoint / export dir, or hf:DIR
    out: str
    candidates: int = 8
    steps: int = 50
    eval_tasks: str | None = None
    eval_limit: int = 200
    eval_max_tokens: int = 0  # held-out tokens scored per source (0: all); bounds each anneal's evaluation
    target: str = "bpb:*"  # default: mean held-out bpb over sources
    seed: int = 0  # candidate draws, and the anneals' seed unless anneal_seed is given
    anneal_seed: int | None = None  # seed of every anneal's data order (bench: same mixtures, another seed)
    concentration: float = 20.0  # Dirichlet concentration around the base mix (higher: closer to it)
    retries: int = 1  # extra attempts per anneal before it is reported failed
    nproc: int = 1  # processes per anneal (cli.py train --nproc)
    lr: float | None = None  # peak LR of the anneals (None: the --init-from run's, else `train` asks for --lr)
    executor: str = "local"
    workers: int = 1  # local: anneals at once
    train_args: tuple[str, ...] = ()  # extra `cli.py train` flags for every anneal (e.g. --lr 3e-4 --batch-tokens 512)
    slurm: dict = field(default_factory=dict)  # partition, time, cpus_per_task, gpus_per_task, sbatch_args, ...

    @property
    def path(self) -> Path:
        return Path(self.out)


# --------------------------------------------------------------------------------------------- the builds


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}


def base_mixture(data: tuple[str, ...]) -> dict[str, float]:
    """The builds' own mix: the token share of every source in the pools `--mix` draws from (manifest
    `shard_sources` of a by-source build; else the build's `composition`)."""
    from pipelines.shards.reader import connect

    tokens: dict[str, int] = {}
    for build in data:
        con = connect(build)
        try:
            table = "shard_sources" if "shard_sources" in _tables(con) else "composition"
            for source, n in con.execute(f"select source, sum(n_tokens) from {table} group by source "
                                         "having sum(n_tokens) > 0").fetchall():
                tokens[source] = tokens.get(source, 0) + int(n)
        finally:
            con.close()
    if len(tokens) < 2:
        raise MixSearchError(f"{', '.join(data)}: a mixture search needs at least two sources with tokens, found "
                             f"{sorted(tokens)}")
    total = sum(tokens.values())
    return {s: n / total for s, n in sorted(tokens.items())}


def build_spec_yaml(build: str) -> str | None:
    """The spec the build was made from (manifest `build.spec_yaml`), None when it recorded none."""
    from pipelines.shards.reader import connect

    con = connect(build)
    try:
        cols = {r[0] for r in con.execute("select column_name from information_schema.columns "
                                          "where table_name = 'build'").fetchall()}
        return con.execute("select spec_yaml from build").fetchone()[0] if "spec_yaml" in cols else None
    finally:
        con.close()


def expected_metrics(cfg: MixSearchConfig) -> list[str]:
    """Metric names an anneal will report (to check --target before anything runs)."""
    from trainer.evaluate import list_heldout
    from trainer.tasks import parse_tasks

    names = []
    for build in cfg.data:
        for s in list_heldout(build):
            names += [f"bpb:{s}", f"loss:{s}"]
    for task in parse_tasks(cfg.eval_tasks):
        name = Path(task).name.removesuffix(".gz").removesuffix(".jsonl")
        names.append(f"{name}:bpb")
        if name != "gsm8k":
            names += [f"{name}:acc", f"{name}:acc_norm"]
    return sorted(set(names))


# ------------------------------------------------------------------------------------------------- mixes


def sample_candidates(base: dict[str, float], k: int, concentration: float, seed: int) -> list[dict[str, float]]:
    """Candidate 0 = `base`; candidates 1..k-1 from Dirichlet(concentration · base), seeded."""
    sources = list(base)
    rng = np.random.default_rng(seed)
    draws = dirichlet_mixtures(np.array([base[s] for s in sources]), k - 1, concentration, rng)
    return [dict(base)] + [dict(zip(sources, map(float, w))) for w in draws]


def mix_arg(weights: dict[str, float]) -> str:
    """`--mix` text: "a=0.512300,b=0.487700" (6 decimals; the last weight absorbs the rounding, so the sum is 1)."""
    items = [(s, round(w, 6)) for s, w in weights.items()]
    items[-1] = (items[-1][0], round(1.0 - sum(w for _, w in items[:-1]), 6))
    return ",".join(f"{s}={w:.6f}" for s, w in items)


def write_mixes(out: Path, mixes: dict[int, dict[str, float]], kinds: dict[int, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(i, s, w, kinds[i]) for i, m in sorted(mixes.items()) for s, w in m.items()]
    table = pa.table({"mix_id": pa.array([r[0] for r in rows], pa.int64()), "source": [r[1] for r in rows],
                      "weight": pa.array([r[2] for r in rows], pa.float64()), "kind": [r[3] for r in rows]})
    tmp = out / "mixes.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out / "mixes.parquet")


def read_mixes(out: Path) -> tuple[dict[int, dict[str, float]], dict[int, str]]:
    import pyarrow.parquet as pq

    t = pq.read_table(out / "mixes.parquet").to_pylist()
    mixes: dict[int, dict[str, float]] = {}
    kinds: dict[int, str] = {}
    for r in t:
        mixes.setdefault(r["mix_id"], {})[r["source"]] = r["weight"]
        kinds[r["mix_id"]] = r["kind"]
    return mixes, kinds


def prepare(cfg: MixSearchConfig) -> dict[int, dict[str, float]]:
    """Write OUT/config.json and the candidates into OUT/mixes.parquet (kept when they are the same on a re-run)."""
    out = cfg.path
    out.mkdir(parents=True, exist_ok=True)
    base = base_mixture(cfg.data)
    mixes = dict(enumerate(sample_candidates(base, cfg.candidates, cfg.concentration, cfg.seed)))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if (out / "mixes.parquet").exists():
        old, kinds = read_mixes(out)
        same = {i: m for i, m in old.items() if kinds[i] == "candidate"} == mixes
        if same:
            return mixes
    write_mixes(out, mixes, {i: "candidate" for i in mixes})
    for stale in ("proposed.json", "proposed.yaml", "fit.json"):
        (out / stale).unlink(missing_ok=True)
    return mixes


# ------------------------------------------------------------------------------------------------ anneals


def anneal_dir(out: Path, mix_id: int) -> Path:
    return out / "anneals" / f"mix-{mix_id:03d}"


def train_command(cfg: MixSearchConfig, weights: dict[str, float], run: Path) -> list[str]:
    """The `cli.py train` of one anneal: LR linearly from the peak to zero, no warmup, same seed and steps."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "train"]
    for build in cfg.data:
        cmd += ["--data", build]
    seed = cfg.seed if cfg.anneal_seed is None else cfg.anneal_seed
    cmd += ["--init-from", cfg.init_from, "--out", str(run), "--steps", str(cfg.steps), "--schedule", "linear",
            "--warmup", "0", "--final-lr-ratio", "0", "--seed", str(seed), "--mix", mix_arg(weights),
            "--eval-every", str(cfg.steps), "--nproc", str(cfg.nproc), "--no-progress"]
    lr = cfg.lr or default_lr(cfg.init_from)
    if lr:
        cmd += ["--lr", f"{lr:g}"]
    if cfg.eval_tasks:
        cmd += ["--eval-tasks", cfg.eval_tasks, "--eval-limit", str(cfg.eval_limit)]
    if cfg.eval_max_tokens:
        cmd += ["--eval-max-tokens", str(cfg.eval_max_tokens)]
    return cmd + list(cfg.train_args)


class AnnealFailed(RuntimeError):
    pass


class TrainRunner:
    """Runs one anneal as `cli.py train` in a subprocess; returns the final eval row's metrics."""

    def __call__(self, cfg: MixSearchConfig, weights: dict[str, float], run: Path, log: Path) -> tuple[dict, int]:
        from trainer.evaluate import flat_metrics
        from trainer.metrics import read_metrics

        cmd = train_command(cfg, weights, run)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with log.open("w") as fh:
            fh.write(" ".join(cmd) + "\n")
            fh.flush()
            code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        if code != 0:
            raise AnnealFailed(f"cli.py train exited {code}")
        rows = [r for r in read_metrics(run) if "eval" in r or "tasks" in r]
        if not rows:
            raise AnnealFailed(f"{run}/metrics.jsonl holds no eval row")
        return flat_metrics(rows[-1]), int(rows[-1]["step"])


def _tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def read_result(out: Path, mix_id: int, weights: dict[str, float]) -> dict | None:
    """The finished anneal of this mixture, or None (none yet, or one of another mixture)."""
    path = anneal_dir(out, mix_id) / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    same = set(result["weights"]) == set(weights) and all(
        math.isclose(result["weights"][s], w, abs_tol=1e-12) for s, w in weights.items())
    return result if same else None


def run_anneal(cfg: MixSearchConfig, mix_id: int, weights: dict[str, float], runner) -> dict | None:
    """One anneal with retries: result.json on success (returned), failed.json after the last attempt (None)."""
    out = cfg.path
    done = read_result(out, mix_id, weights)
    if done is not None:
        return done  # finished by an earlier run of the command
    folder = anneal_dir(out, mix_id)
    folder.mkdir(parents=True, exist_ok=True)
    error = ""
    for attempt in range(1, cfg.retries + 2):
        shutil.rmtree(folder / "run", ignore_errors=True)  # a crashed attempt leaves no partial state behind
        (folder / "failed.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            metrics, step = runner(cfg, weights, folder / "run", folder / "train.log")
        except Exception as e:  # noqa: BLE001 - any failure of the anneal is recorded, never lost
            error = f"{type(e).__name__}: {e}"
            continue
        result = {"mix_id": mix_id, "weights": weights, "metrics": metrics, "step": step,
                  "seconds": time.perf_counter() - t0, "attempts": attempt}
        tmp = folder / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, folder / "result.json")
        return result
    failure = {"mix_id": mix_id, "weights": weights, "error": error, "attempts": cfg.retries + 1,
               "log_tail": _tail(folder / "train.log")}
    (folder / "failed.json").write_text(json.dumps(failure, indent=2))
    return None


def failures(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("anneals/mix-*/failed.json"))]


# --------------------------------------------------------------------------------------------- propose


def collect(out: Path, kind: str) -> tuple[list[int], list[dict]]:
    mixes, kinds = read_mixes(out)
    ids, results = [], []
    for i, w in sorted(mixes.items()):
        if kinds[i] == kind and (r := read_result(out, i, w)) is not None:
            ids.append(i)
            results.append(r)
    return ids, results


def fit_and_propose(cfg: MixSearchConfig) -> dict:
    """Fit every metric on the finished candidates, propose the mixture minimising the target, write fit.json,
    proposed.yaml/json and the proposed row of mixes.parquet."""
    out = cfg.path
    ids, results = collect(out, "candidate")
    if len(results) < 3:
        raise MixSearchError(f"only {len(results)} of {cfg.candidates} candidate anneals finished (need 3 to fit); "
                             f"failed: {[f['mix_id'] for f in failures(out)]} — see {out}/anneals/*/failed.json")
    mixes, kinds = read_mixes(out)
    sources = list(mixes[0])
    W = np.array([[r["weights"][s] for s in sources] for r in results])
    metrics = sorted(set.intersection(*(set(r["metrics"]) for r in results)))
    target = Target.parse(cfg.target)
    fits = {m: fit_metric(m, W, np.array([r["metrics"][m] for r in results])) for m in metrics}
    base = np.array([mixes[0][s] for s in sources])
    prop = propose(fits, target, base, cfg.concentration, cfg.seed)
    report = {"sources": sources, "candidates": ids, "target": cfg.target,
              "target_metrics": target.matches(metrics), "metrics": fit_report(fits, sources),
              "proposal": {"weights": dict(zip(sources, prop.weights.tolist())), "predicted": prop.predicted,
                           "predicted_target": prop.predicted_target}}
    (out / "fit.json").write_text(json.dumps(report, indent=2))
    weights = dict(zip(sources, map(float, prop.weights)))
    pid = max(mixes) + 1 if "proposed" not in kinds.values() else next(i for i, k in kinds.items() if k == "proposed")
    mixes[pid], kinds[pid] = weights, "proposed"
    write_mixes(out, mixes, kinds)
    (out / "proposed.yaml").write_text(proposed_spec(build_spec_yaml(cfg.data[0]), weights, cfg))
    return report


def proposed_spec(spec_yaml: str, weights: dict[str, float], cfg: MixSearchConfig) -> str:
    """The build's spec with `share:` = the proposal on the searched sources (others lose any share they had)."""
    import yaml

    if spec_yaml is None:  # a build that recorded no spec (synthetic): a `--mix` file of the proposal
        return ("# Written by `cli.py mix-search`: the build recorded no spec, so this is the proposal as a mixture\n"
                "# file for `cli.py train --mix`.\n"
                + yaml.safe_dump({"sources": {s: round(float(w), 6) for s, w in weights.items()}}, sort_keys=False))
    spec = yaml.safe_load(spec_yaml)
    for source in spec.get("sources", []):
        source.pop("share", None)
        w = weights.get(source.get("name"))
        if w is not None and w > 0:
            source["share"] = round(float(w), 6)
    total = sum(s.get("share", 0) for s in spec.get("sources", []))
    if total > 1:  # rounding up
        biggest = max(spec["sources"], key=lambda s: s.get("share", 0))
        biggest["share"] = round(biggest["share"] - (total - 1) - 1e-6, 6)
    spec["name"] = f"{spec.get('name', 'mixture')}-proposed"
    spec["description"] = (f"mix-search proposal (target {cfg.target}, {cfg.candidates} candidates x "
                           f"{cfg.steps} steps from {cfg.init_from}); shares = proposed token shares")
    header = (f"# Written by `cli.py mix-search` into {cfg.out}: the searched build's spec with `share:` set to the\n"
              "# proposed mixture. `share:` plans each source's fraction of `tokens:` (build-mixture --dry-run shows\n"
              "# the sampling rate it needs); train on it with `cli.py train --mix` or rebuild with build-mixture.\n")
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------- report


def write_results(out: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    mixes, _ = read_mixes(out)
    rows = []
    for i, w in sorted(mixes.items()):
        r = read_result(out, i, w)
        if r is not None:
            rows += [{"mix_id": i, "metric": m, "value": float(v), "step": r["step"]} for m, v in
                     sorted(r["metrics"].items())]
    table = pa.table({"mix_id": pa.array([r["mix_id"] for r in rows], pa.int64()),
                      "metric": [r["metric"] for r in rows],
                      "value": pa.array([r["value"] for r in rows], pa.float64()),
                      "step": pa.array([r["step"] for r in rows], pa.int64())})
    tmp = out / "results.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out / "results.parquet")
    return rows


def write_report(cfg: MixSearchConfig) -> Path:
    out = cfg.path
    write_results(out)
    mixes, kinds = read_mixes(out)
    fit = json.loads((out / "fit.json").read_text())
    sources, target = fit["sources"], Target.parse(cfg.target)
    cand_ids, cands = collect(out, "candidate")
    realized = {i: float(target.value(r["metrics"])) for i, r in zip(cand_ids, cands)}
    pid = next(i for i, k in kinds.items() if k == "proposed")
    proposed = read_result(out, pid, mixes[pid])
    loo = {}  # leave-one-out predicted target per candidate, from the per-metric LOO predictions
    for n, i in enumerate(fit["candidates"]):
        loo[i] = float(target.value({m: fit["metrics"][m]["loo_predictions"][n] for m in fit["metrics"]}))
    failed = failures(out)
    lines = [f"# Mixture search: {cfg.out}", "",
             f"{len(cand_ids)} of {cfg.candidates} candidate anneals finished ({cfg.steps} steps each from "
             f"`{cfg.init_from}`, seed {cfg.seed}, LR linear to 0); target **{cfg.target}** (lower is better): "
             + ", ".join(f"{p} = mean of {len(ms)} metric(s)" for p, ms in fit["target_metrics"].items()) + ".", ""]
    if failed:
        lines += ["**Failed anneals** (retried, then recorded; re-run the command to retry them):", ""]
        lines += [f"- mix {f['mix_id']}: {f['error']} (log: anneals/mix-{f['mix_id']:03d}/train.log)" for f in failed]
        lines.append("")
    lines += ["## Candidates ranked", "", "| rank | mix | target | LOO predicted | top sources |",
              "| ---: | ---: | ---: | ---: | --- |"]
    for rank, i in enumerate(sorted(realized, key=realized.get), 1):
        top = sorted(mixes[i].items(), key=lambda kv: -kv[1])[:3]
        label = f"{i} (build's mix)" if i == 0 else str(i)
        lines.append(f"| {rank} | {label} | {realized[i]:.4f} | {loo.get(i, float('nan')):.4f} | "
                     + ", ".join(f"{s} {w:.2f}" for s, w in top) + " |")
    rho = spearman([loo[i] for i in cand_ids], [realized[i] for i in cand_ids])
    lines += ["", f"Leave-one-out Spearman of the predicted target over the candidates: {rho:.3f}", "",
              "## Fit per metric", "", "| metric | model | " + " | ".join(f"CV Spearman {k}" for k in
                                                                          ("linear", "loglinear", "lightgbm")) + " |",
              "| --- | --- | ---: | ---: | ---: |"]
    for m, f in sorted(fit["metrics"].items()):
        cv = f["cv_spearman"]
        lines.append(f"| {m} | {f['model']['kind']} | " + " | ".join(
            f"{cv[k]:.3f}" if k in cv and not math.isnan(cv[k]) else "–" for k in ("linear", "loglinear",
                                                                                     "lightgbm")) + " |")
    pred = fit["proposal"]["predicted_target"]
    real = float(target.value(proposed["metrics"])) if proposed else None
    best = min(realized.values()) if realized else float("nan")
    lines += ["", "## Proposal", "", "| source | build's mix | proposed |", "| --- | ---: | ---: |"]
    lines += [f"| {s} | {mixes[0][s]:.4f} | {mixes[pid][s]:.4f} |" for s in sources]
    lines += ["", f"Predicted target {pred:.4f}; realized "
              + (f"{real:.4f}" if real is not None else "— (the proposed anneal did not finish)")
              + f"; build's mix {realized.get(0, float('nan')):.4f}; best candidate {best:.4f}.", "",
              "`proposed.yaml` holds the proposal as a buildable spec (`python cli.py build-mixture "
              f"{out}/proposed.yaml --out BUILD`).", "", "![report](report.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    _plot(out, sources, mixes, realized, loo, pid, pred, real)
    return out / "report.md"


def _plot(out, sources, mixes, realized, loo, pid, pred, real) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ids = sorted(realized, key=realized.get)
    ax = axes[0]
    ax.bar(range(len(ids)), [realized[i] for i in ids], color=["tab:orange" if i == 0 else "tab:blue" for i in ids])
    ax.set_xticks(range(len(ids)), [str(i) for i in ids])
    ax.set_xlabel("candidate (ranked; orange: build's mix)")
    ax.set_ylabel("target (realized)")
    values = list(realized.values()) + ([real] if real is not None else [])
    if real is not None:
        ax.axhline(real, color="tab:red", lw=1.2, label="proposed (realized)")
        ax.legend(fontsize=8)
    span = (max(values) - min(values)) or abs(min(values)) * 0.01 or 1.0
    ax.set_ylim(min(values) - 0.15 * span, max(values) + 0.15 * span)
    ax = axes[1]
    xs = [loo[i] for i in realized]
    ys = [realized[i] for i in realized]
    ax.scatter(xs, ys, label="candidates (leave-one-out)")
    if real is not None:
        ax.scatter([pred], [real], marker="*", s=200, color="tab:red", label="proposed")
    allv = xs + ys + ([pred, real] if real is not None else [])
    ax.plot([min(allv), max(allv)], [min(allv), max(allv)], "k--", lw=0.8)
    ax.set_xlabel("predicted target")
    ax.set_ylabel("realized target")
    ax.legend(fontsize=8)
    ax = axes[2]
    for s in sources:
        ax.scatter([mixes[i][s] for i in realized], [realized[i] for i in realized], label=s, s=18)
    ax.set_xlabel("source weight")
    ax.set_ylabel("target (realized)")
    ax.legend(fontsize=6, ncol=2)
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------- datatrove stages


def _steps():
    """The four pipeline steps (datatrove imported only when a search runs)."""
    from datatrove.pipeline.base import PipelineStep

    class AnnealStep(PipelineStep):
        """Task `rank` runs the rank-th anneal of its kind (candidate or proposed)."""

        name, type = "micro-anneal", "🔥 mix-search"

        def __init__(self, cfg: MixSearchConfig, kind: str, runner) -> None:
            super().__init__()
            self.cfg, self.kind, self.runner = cfg, kind, runner

        def run(self, data=None, rank: int = 0, world_size: int = 1):
            mixes, kinds = read_mixes(self.cfg.path)
            ids = [i for i in sorted(mixes) if kinds[i] == self.kind]
            if rank < len(ids):
                ok = run_anneal(self.cfg, ids[rank], mixes[ids[rank]], self.runner) is not None
                self.stat_update("finished" if ok else "failed")
            return data

    class ProposeStep(PipelineStep):
        name, type = "fit + propose", "🔥 mix-search"

        def __init__(self, cfg: MixSearchConfig) -> None:
            super().__init__()
            self.cfg = cfg

        def run(self, data=None, rank: int = 0, world_size: int = 1):
            fit_and_propose(self.cfg)
            return data

    class ReportStep(PipelineStep):
        name, type = "report", "🔥 mix-search"

        def __init__(self, cfg: MixSearchConfig) -> None:
            super().__init__()
            self.cfg = cfg

        def run(self, data=None, rank: int = 0, world_size: int = 1):
            write_report(self.cfg)
            return data

    return AnnealStep, ProposeStep, ReportStep


def make_executors(cfg: MixSearchConfig, runner=None) -> list:
    """The four stages' executors; on Slurm each depends on the previous one (submitting the last submits all)."""
    AnnealStep, ProposeStep, ReportStep = _steps()
    runner = runner or TrainRunner()
    stages = [("candidates", AnnealStep(cfg, "candidate", runner), cfg.candidates),
              ("propose", ProposeStep(cfg), 1), ("proposed", AnnealStep(cfg, "proposed", runner), 1),
              ("report", ReportStep(cfg), 1)]
    logs = cfg.path / "logs"
    prev, executors = None, []
    for name, step, tasks in stages:
        # skip_completed=False: finished anneals are skipped through their result.json (so a failed one, which
        # datatrove would have marked complete, is retried on the next run)
        if cfg.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            prev = LocalPipelineExecutor([step], tasks=tasks, workers=min(cfg.workers, tasks),
                                         logging_dir=str(logs / name), skip_completed=False)
        else:
            from datatrove.executor import SlurmPipelineExecutor

            opts = dict(cfg.slurm)
            opts.setdefault("time", "04:00:00")
            if "partition" not in opts:
                raise MixSearchError("--executor slurm needs --slurm-opt partition=NAME")
            prev = SlurmPipelineExecutor([step], tasks=tasks, logging_dir=str(logs / name),
                                         job_name=f"mix-search-{name}", skip_completed=False, depends=prev,
                                         **opts)
        executors.append(prev)
    return executors


def run_mix_search(cfg: MixSearchConfig, runner=None) -> dict:
    """Prepare OUT, run the four stages; returns {"failed": [...], "report": path} (local) once finished."""
    if cfg.candidates < 3:
        raise MixSearchError(f"--candidates must be >= 3 (a fit needs 3 points), got {cfg.candidates}")
    if cfg.executor not in EXECUTORS:
        raise MixSearchError(f"--executor must be one of {EXECUTORS}, got {cfg.executor!r}")
    Target.parse(cfg.target).matches(expected_metrics(cfg))  # a target naming no metric fails before any anneal
    prepare(cfg)
    executors = make_executors(cfg, runner)
    if cfg.executor != "local":
        executors[-1].run()  # submits its dependencies first
        return {"submitted": True, "report": str(cfg.path / "report.md")}
    candidates, *rest = executors
    candidates.run()
    finished = len(collect(cfg.path, "candidate")[1])
    if finished < 3:  # stop here, with the reason, rather than inside a datatrove task
        reasons = [f"mix {f['mix_id']}: {f['error']} ({(f['log_tail'].splitlines() or [''])[-1]})"
                   for f in failures(cfg.path)]
        raise MixSearchError(f"only {finished} of {cfg.candidates} candidate anneals finished (a fit needs 3); "
                             f"failed: {'; '.join(reasons)}")
    for executor in rest:
        executor.run()
    return {"failed": failures(cfg.path), "report": str(cfg.path / "report.md")}


def default_lr(init_from: str) -> float | None:
    """The peak LR the --init-from run trained with (its train_config.json), None when it records none."""
    for path in (Path(init_from) / "train_config.json", Path(init_from).parent.parent / "train_config.json"):
        if path.is_file():
            lr = (json.loads(path.read_text()).get("resolved") or {}).get("lr")
            if lr:
                return float(lr)
    return None

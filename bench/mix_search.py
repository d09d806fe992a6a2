"""Ranking stability of `mix-search` on the mirror: do small proxies rank mixtures as larger ones do?

Builds stage 2 from ../shared/data/hub with per-source rows and held-out documents (unless --build is given), trains
a base model per proxy size, then runs the same K candidate mixtures (same Dirichlet draws) as micro-anneal swarms:

  tiny, seed 0    small, seed 0    tiny, seed 1 (the same mixtures, another anneal seed: the noise floor)

and reports, for the target (default: mean held-out bpb):
  - Spearman between the candidates' realized rankings at the two sizes (RegMix reports ~0.9 for 1M -> 1B);
  - Spearman between the two seeds at the same size (seed-to-seed noise: a cross-size Spearman is only meaningful
    against it);
  - predicted vs realized on held-out candidates: leave-one-out Spearman of each swarm's fit, and the proposed
    mixture's predicted vs realized target;
  - wall time per anneal.
Every number comes from this run; nothing is tuned to it.

    python bench/mix_search.py --candidates 6 --steps 20 --out /tmp/mixbench
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.mix_fit import Target, spearman  # noqa: E402
from trainer.mix_search import MixSearchConfig, collect, run_mix_search  # noqa: E402

SHARED = Path(os.environ.get("MIDTRAIN_SHARED", ROOT.parent / "shared" / "data"))


def cli(*args: str) -> None:
    env = dict(os.environ, MIDTRAIN_SHARED=str(SHARED))
    subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def make_build(out: Path) -> Path:
    """stage 2 with `packing: {by_source: true}` and 2% of each source held out (at most 40 documents)."""
    import yaml

    spec = yaml.safe_load((ROOT / "mixtures" / "stage2.yaml").read_text())
    spec["name"] = "stage2-mixbench"
    spec["packing"] = {"mode": "concat", "by_source": True}
    spec["holdout"] = {"fraction": 0.02, "max_docs": 40}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "stage2-mixbench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cli("build-mixture", str(path), "--out", str(out / "build"), "--source-root", str(SHARED / "hub"))
    return out / "build"


def train_base(build: Path, preset: str, steps: int, out: Path, seq_len: int, micro_batch: int) -> Path:
    if not (out / "model.safetensors").exists():
        cli("train", "--data", str(build), "--out", str(out), "--preset", preset, "--seq-len", str(seq_len),
            "--steps", str(steps), "--micro-batch", str(micro_batch), "--no-progress")
    return out


def swarm(build: Path, base: Path, out: Path, args, anneal_seed: int) -> dict:
    cfg = MixSearchConfig(data=(str(build),), init_from=str(base), out=str(out), candidates=args.candidates,
                          steps=args.steps, target=args.target, seed=0, anneal_seed=anneal_seed,
                          eval_tasks=args.eval_tasks, eval_limit=args.eval_limit,
                          eval_max_tokens=args.eval_max_tokens, workers=args.workers,
                          train_args=("--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len),
                                      "--max-repeat",
                                      str(args.max_repeat)))
    t0 = time.perf_counter()
    result = run_mix_search(cfg)
    wall = time.perf_counter() - t0
    target = Target.parse(args.target)
    ids, results = collect(out, "candidate")
    realized = {i: float(target.value(r["metrics"])) for i, r in zip(ids, results)}
    fit = json.loads((out / "fit.json").read_text())
    loo = [float(target.value({m: fit["metrics"][m]["loo_predictions"][n] for m in fit["metrics"]}))
           for n in range(len(fit["candidates"]))]
    pid_ids, prop = collect(out, "proposed")
    return {"realized": realized, "loo_spearman": spearman(loo, [realized[i] for i in fit["candidates"]]),
            "proposed_predicted": fit["proposal"]["predicted_target"],
            "proposed_realized": float(target.value(prop[0]["metrics"])) if prop else None,
            "build_mix": realized.get(0), "best_candidate": min(realized.values()),
            "seconds_per_anneal": [r["seconds"] for r in results + prop], "wall_s": wall,
            "failed": [f["mix_id"] for f in result["failed"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/mix_search_bench"))
    ap.add_argument("--build", type=Path, help="a by-source build with held-out data (default: build stage 2)")
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--base-steps", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=2, help="rows per step (tokens per step = this x seq-len)")
    ap.add_argument("--max-repeat", type=float, default=4)
    ap.add_argument("--target", default="bpb:*")
    ap.add_argument("--eval-tasks", default=None)
    ap.add_argument("--eval-limit", type=int, default=50)
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--eval-max-tokens", type=int, default=1024, help="held-out tokens scored per source")
    ap.add_argument("--workers", type=int, default=1, help="anneals of a swarm running at once")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    build = args.build or (args.out / "build" if (args.out / "build" / "manifest.duckdb").exists()
                           else make_build(args.out))
    small, large = args.sizes.split(",")
    runs = {}
    for preset, seed in ((small, 0), (small, 1), (large, 0)):  # the noise floor first, the larger proxy last
        base = train_base(build, preset, args.base_steps, args.out / f"base-{preset}", args.seq_len, args.micro_batch)
        print(f"[bench] swarm {preset} seed {seed}", flush=True)
        runs[f"{preset}/seed{seed}"] = swarm(build, base, args.out / f"swarm-{preset}-seed{seed}", args, seed)
        (args.out / "mix_search_bench.partial.json").write_text(json.dumps(runs, indent=2))
        print(json.dumps({k: {x: v for x, v in r.items() if x != "realized"} for k, r in runs.items()}), flush=True)
    a, b, c = (runs[f"{small}/seed0"], runs[f"{large}/seed0"], runs[f"{small}/seed1"])
    common = sorted(set(a["realized"]) & set(b["realized"]) & set(c["realized"]))
    summary = {
        "candidates": args.candidates, "steps": args.steps, "target": args.target,
        f"spearman_{small}_vs_{large}": spearman([a["realized"][i] for i in common],
                                                 [b["realized"][i] for i in common]),
        f"spearman_seed0_vs_seed1_{small}": spearman([a["realized"][i] for i in common],
                                                     [c["realized"][i] for i in common]),
        "runs": runs,
    }
    (args.out / "mix_search_bench.json").write_text(json.dumps(summary, indent=2))
    print(f"{'swarm':<16} {'LOO Spearman':>12} {'build mix':>10} {'best cand':>10} {'pred prop':>10} "
          f"{'real prop':>10} {'s/anneal':>9}")
    for name, r in runs.items():
        per = sum(r["seconds_per_anneal"]) / max(len(r["seconds_per_anneal"]), 1)
        real = f"{r['proposed_realized']:.4f}" if r["proposed_realized"] is not None else "failed"
        print(f"{name:<16} {r['loo_spearman']:>12.3f} {r['build_mix']:>10.4f} {r['best_candidate']:>10.4f} "
              f"{r['proposed_predicted']:>10.4f} {real:>10} {per:>9.1f}")
    print(f"ranking Spearman {small} vs {large} (seed 0): {summary[f'spearman_{small}_vs_{large}']:.3f}; "
          f"seed 0 vs seed 1 at {small}: {summary[f'spearman_seed0_vs_seed1_{small}']:.3f} "
          f"({len(common)} candidates)")


if __name__ == "__main__":
    main()

"""`cli.py mix-search`: micro-anneal swarm -> regression -> proposed mixture (trainer/mix_search.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _parse_opts(pairs: list[str]) -> dict:
    out = {}
    for kv in pairs:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            _fail(f"--slurm-opt expects KEY=VALUE, got {kv!r}")
        out[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
    return out


def mix_search_cmd(
    data: Annotated[list[Path], typer.Option(help="Build with per-source pools and held-out data (repeat for "
                                             "several builds; the anneals train on them with --mix).")],
    init_from: Annotated[str, typer.Option(help="Weights every anneal starts from: a run, checkpoint or "
                                           "export dir, or hf:DIR.")],
    out: Annotated[Path, typer.Option(help="Output dir: mixes.parquet, results.parquet, fit.json, "
                                      "proposed.yaml, report.md, report.png, anneals/.")],
    candidates: Annotated[int, typer.Option(help="K candidate mixtures (candidate 0: the build's own mix; "
                                            "the others drawn from a Dirichlet around it).")] = 8,
    steps: Annotated[int, typer.Option(help="Optimizer steps per anneal (same for all: same token "
                                       "budget).")] = 50,
    eval_tasks: Annotated[Optional[str], typer.Option(help="Downstream tasks evaluated at the end of every "
                                                      "anneal (as `train --eval-tasks`).")] = None,
    eval_limit: Annotated[int, typer.Option(help="Items per task.")] = 200,
    eval_max_tokens: Annotated[int, typer.Option(help="Held-out tokens scored per source at the end of each "
                                                 "anneal (its first documents; 0: all).")] = 0,
    target: Annotated[str, typer.Option(help="What to minimise: a metric glob, e.g. 'bpb:dolmino-math-*' "
                                        "(mean held-out bpb of those sources), or a weighted sum "
                                        "'0.5*bpb:*,-1*arc_easy:acc_norm'. Metrics: bpb:/loss:<source>, "
                                        "<task>:acc|acc_norm|bpb.")] = "bpb:*",
    lr: Annotated[Optional[float], typer.Option(help="Peak LR of every anneal (linear to 0 from it; default: the "
                                                  "LR the --init-from run trained with).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the candidate draws and of every anneal.")] = 0,
    anneal_seed: Annotated[Optional[int], typer.Option(help="Another seed for the anneals only (the same "
                                                       "candidates under another data order: the noise "
                                                       "floor).")] = None,
    concentration: Annotated[float, typer.Option(help="Dirichlet concentration around the build's mix "
                                                 "(higher: candidates closer to it).")] = 20.0,
    retries: Annotated[int, typer.Option(help="Extra attempts for a crashed anneal before it is reported "
                                         "as failed.")] = 1,
    nproc: Annotated[int, typer.Option(help="Processes per anneal (train --nproc: FSDP on GPUs).")] = 1,
    executor: Annotated[str, typer.Option(help="local | slurm: datatrove's Local/SlurmPipelineExecutor, one "
                                          "task per anneal.")] = "local",
    workers: Annotated[int, typer.Option(help="local: anneals running at once.")] = 1,
    slurm_opt: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE for datatrove's "
                                                           "SlurmPipelineExecutor (repeat): partition=, "
                                                           "time=, gpus_per_task=, cpus_per_task=, "
                                                           "venv_path=, ...")] = None,
    train_arg: Annotated[Optional[list[str]], typer.Option(help="Extra flag for every `cli.py train` of the "
                                                           "swarm (repeat; e.g. --train-arg=--lr "
                                                           "--train-arg=3e-4).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the candidate mixtures and the first anneal's train "
                                          "command, run nothing.")] = False,
) -> None:
    """Choose a mixture by measurement: K short anneals on Dirichlet-sampled mixtures, a regression from
    weights to each metric, the mixture that minimises --target, run once more to compare predicted and
    realized."""
    from trainer.mix_search import (
        MixSearchConfig,
        MixSearchError,
        anneal_dir,
        base_mixture,
        run_mix_search,
        sample_candidates,
        train_command,
    )

    for d in data:
        if not (d / "manifest.duckdb").exists():
            _fail(f"no manifest.duckdb in {d} (missing or unfinished build)")
    if steps < 1 or candidates < 3 or retries < 0 or nproc < 1 or workers < 1:
        _fail("--steps, --nproc and --workers must be >= 1, --candidates >= 3, --retries >= 0")
    cfg = MixSearchConfig(
        data=tuple(str(d) for d in data), init_from=init_from, out=str(out), candidates=candidates, steps=steps,
        eval_tasks=eval_tasks, eval_limit=eval_limit, eval_max_tokens=eval_max_tokens, target=target, seed=seed,
        anneal_seed=anneal_seed,
        concentration=concentration,
        retries=retries, nproc=nproc, lr=lr, executor=executor, workers=workers,
        train_args=tuple(train_arg or ()), slurm=_parse_opts(slurm_opt or []))
    try:
        if dry_run:
            mixes = sample_candidates(base_mixture(cfg.data), candidates, concentration, seed)
            sources = list(mixes[0])
            typer.echo("mix  " + "  ".join(f"{s[:14]:>14}" for s in sources))
            for i, m in enumerate(mixes):
                typer.echo(f"{i:>3}  " + "  ".join(f"{m[s]:>14.4f}" for s in sources))
            typer.echo("anneal 0: " + " ".join(train_command(cfg, mixes[0], anneal_dir(out, 0) / "run")))
            return
        result = run_mix_search(cfg)
    except (MixSearchError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if result.get("submitted"):
        typer.echo(f"submitted to Slurm; the report will be {result['report']}")
        return
    typer.echo(f"report: {result['report']}  proposal: {out}/proposed.yaml")
    if result["failed"]:
        ids = ", ".join(str(f["mix_id"]) for f in result["failed"])
        typer.echo(f"error: {len(result['failed'])} anneal(s) failed after retries (mix {ids}); see "
                   f"{out}/anneals/*/failed.json; re-run the command to retry them", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    app.command("mix-search")(mix_search_cmd)

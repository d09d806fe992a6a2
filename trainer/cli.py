"""`cli.py train` and `cli.py merge`."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.config import (
    ATTENTION,
    DTYPES,
    INITS,
    POSITIONS,
    PRESETS,
    SCHEDULES,
    ModelConfig,
    TrainConfig,
)
from trainer.recipes import RECIPES, get_recipe

HF_PREFIX = "hf:"  # same as trainer.train.HF_PREFIX (not imported: the CLI keeps torch out of --help)

ROOT = Path(__file__).resolve().parents[1]


def launch(cfg: TrainConfig, nproc: int) -> int:
    """Run `cfg` on `nproc` local processes through torchrun (the config travels as RUN/train_config.json)."""
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "train_config.json"
    cfg.to_json(cfg_path)
    # The ranks run in the user's directory, so relative --data/--out/--resume mean what they mean here; our
    # packages come from PYTHONPATH only (PYTHONSAFEPATH: that directory is not put on sys.path, so a folder there
    # named like one of them cannot shadow it).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONSAFEPATH="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call([sys.executable, "-m", "trainer.torchrun", str(nproc), str(cfg_path)], env=env)


def parse_seeds(text: str) -> list[int]:
    """"5796,6198,8915" -> [5796, 6198, 8915]; ValueError on anything else (empty items, non-integers, repeats)."""
    items = [x.strip() for x in text.split(",")]
    if not all(x.lstrip("-").isdigit() for x in items):
        raise ValueError(f"--seeds must be comma-separated integers such as 5796,6198,8915, got {text!r}")
    seeds = [int(x) for x in items]
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def choose_seeds(cfg: TrainConfig, seed: int | None, seeds: str | None) -> list[int]:
    """--seeds, else --seed, else the recipe's seeds (Instella stage 2: three), else 0."""
    if seeds is not None and seed is not None:
        raise ValueError("give --seed or --seeds, not both")
    if seeds is not None:
        return parse_seeds(seeds)
    if seed is not None:
        return [seed]
    recipe_seeds = list(get_recipe(cfg.recipe).seeds) if cfg.recipe else []
    return recipe_seeds or [0]


def check_init_from(spec: str, preset: str | None) -> None:
    """Fail early (ValueError / FileNotFoundError) on an --init-from that cannot be read or does not fit --preset."""
    if spec.startswith(HF_PREFIX):
        try:
            from trainer import hf
        except ImportError as e:
            raise ValueError(f"--init-from hf:DIR needs trainer/hf.py (Hugging Face import): {e}") from e
        if not Path(spec[len(HF_PREFIX):]).is_dir():
            raise FileNotFoundError(f"--init-from {spec}: no such directory")
        found = hf.hf_config_to_model_config(spec[len(HF_PREFIX):])
    else:
        from trainer.checkpoint import read_model_config

        known = {f.name for f in dataclasses.fields(ModelConfig)}
        found = ModelConfig(**{k: v for k, v in read_model_config(spec).items() if k in known})
    if preset is not None:
        shape = ("n_layers", "d_model", "n_heads", "ffn_dim", "vocab_size")
        want = PRESETS[preset].model
        diff = [f"{k} {getattr(found, k)} vs {getattr(want, k)}" for k in shape
                if getattr(found, k) != getattr(want, k)]
        if diff:
            raise ValueError(f"--init-from {spec} does not fit --preset {preset} ({', '.join(diff)}); leave out "
                             "--preset to train the checkpoint's own model")


def run_one(cfg: TrainConfig, nproc: int) -> int:
    """Train `cfg` here (one process, or one rank under an outer torchrun) or on `nproc` local processes."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch(cfg, nproc)
    from trainer.checkpoint import CheckpointError, DiskFullError
    from trainer.integrity import DataError
    from trainer.train import train

    try:
        train(cfg)
    except (CheckpointError, DataError, DiskFullError) as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    return 0


def finished_run(cfg: TrainConfig) -> bool:
    """True when cfg.out holds a finished export of a run with exactly this config (so a soup command that was
    interrupted during a later seed can be rerun without retraining the seeds already done)."""
    run = Path(cfg.out)
    # config.json is written last by an export (trainer/checkpoint.py): weights without it are an interrupted export
    if not all((run / name).exists() for name in ("model.safetensors", "config.json", "train_config.json")):
        return False
    export = json.loads((run / "config.json").read_text())
    if export.get("steps") is None:
        return False
    stored = json.loads((run / "train_config.json").read_text())
    stored.pop("resolved", None)
    stored_build = stored.pop("build", None)
    stored_builds = stored.pop("builds", None) or {}  # a --mix run: every build's fingerprint
    ignore = ("progress", "resume", "resume_step", "verify_data", "allow_data_change")
    same_config = {k: v for k, v in stored.items() if k not in ignore} == \
        {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignore}
    return same_config and _same_build(stored_build, cfg.data) and \
        all(_same_build(fp, build) for build, fp in stored_builds.items())


def _same_build(stored: dict | None, data: str) -> bool:
    """Whether a finished run trained on the build now at `data` (runs from before fingerprints: assumed so)."""
    if not stored:
        return True
    from trainer.integrity import build_fingerprint

    try:
        return build_fingerprint(data).fingerprint == stored.get("fingerprint")
    except (FileNotFoundError, ValueError):
        return False


def train_soup(cfg: TrainConfig, seeds: list[int], nproc: int) -> int:
    """Instella's soup: train OUT/seed-S once per seed (same data and settings, seed of init and data order), then
    average their final weights into OUT/model.safetensors."""
    out = Path(cfg.out)
    runs = [out / f"seed-{s}" for s in seeds]
    for s, run in zip(seeds, runs):
        resume = str(Path(cfg.resume) / f"seed-{s}") if cfg.resume else None
        seed_cfg = dataclasses.replace(cfg, seed=s, out=str(run), resume=resume)
        if finished_run(seed_cfg):
            typer.echo(f"[train] seed {s}: {run} already finished with this exact config, kept")
            continue
        typer.echo(f"[train] seed {s} -> {run}")
        rc = run_one(seed_cfg, nproc)
        if rc and finished_run(seed_cfg):  # its export was published (config.json last): a teardown crash only
            typer.echo(f"[train] seed {s}: the run finished and exported, but a process exited with {rc} at "
                       "teardown; kept", err=True)
        elif rc:
            return rc
    if os.environ.get("RANK", "0") != "0":  # under an outer torchrun only rank 0 merges
        return 0
    from trainer.merge import merge_checkpoints

    merge_checkpoints(runs, out)
    typer.echo(f"[train] merged {len(runs)} seeds ({', '.join(map(str, seeds))}) -> {out}/model.safetensors")
    return 0


class TrainOptionError(ValueError):
    """A bad `train` flag or input; cli.py's one handler prints it as one line with exit code 2."""

    exit_code = 2


def fail(message: str) -> None:
    raise TrainOptionError(message)


def print_memory_plan(preset: str | None, seq_len: int | None, sp: int | None, nproc: int, act_ckpt: bool,
                      micro_batch: int | None) -> None:
    """`train --plan`: the per-GPU memory plan of a preset, without data or a run."""
    from trainer.plan import PlanConfig, plan_memory

    name = preset or "tiny"
    if name not in PRESETS:
        fail(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    model_cfg = PRESETS[name].model
    try:
        pcfg = PlanConfig(seq_len=seq_len or model_cfg.seq_len, sp=sp or 1, world=nproc, act_ckpt=act_ckpt,
                          micro_batch=micro_batch or 1)
    except ValueError as e:
        fail(str(e))
    typer.echo(plan_memory(model_cfg, pcfg).format())


def check_launch(data: Path | None, out: Path | None, nproc: int, sp: int | None) -> None:
    """The flags every run needs, checked before anything is read."""
    if data is None or out is None:
        fail("--data and --out are required (unless --plan)")
    if nproc < 1:
        fail(f"--nproc must be >= 1, got {nproc}")
    if sp is not None and (sp < 1 or nproc % sp):
        fail(f"--sp {sp} must be >= 1 and divide --nproc {nproc}")
    if not (data / "manifest.duckdb").exists():
        fail(f"no manifest.duckdb in {data} (missing or unfinished build)")


def resolve_config(cfg: TrainConfig, nproc: int, seed: int | None, seeds: str | None) -> tuple[TrainConfig, list[int]]:
    """Seeds chosen and every setting checked (ValueError / FileNotFoundError) before any process starts."""
    run_seeds = choose_seeds(cfg, seed, seeds)
    cfg = dataclasses.replace(cfg, seed=run_seeds[0])
    if cfg.init_from:
        check_init_from(cfg.init_from, cfg.preset)
    from trainer.train import resolve_run

    world = nproc if "LOCAL_RANK" not in os.environ else int(os.environ.get("WORLD_SIZE", 1))
    resolve_run(cfg, world)
    return cfg, run_seeds


def check_data(cfg: TrainConfig) -> None:
    """Before any process starts: the cheap checks of every file the run will read and, with --verify-data, a
    re-hash of all of them (DataError naming the first damaged file). Ranks then skip the re-hash."""
    from trainer.mixing import mix_builds
    from trainer.train import pin_build

    for build in mix_builds(cfg):
        pin_build(build, cfg.verify_data)
    if cfg.verify_data:
        os.environ["MIDTRAIN_DATA_VERIFIED"] = "1"  # inherited by torchrun's ranks and read by this process's run


def check_eval_request(cfg: TrainConfig) -> None:
    """ValueError when evaluation is asked for but cannot run: an unknown task, or nothing to evaluate."""
    from trainer.evaluate import list_heldout, run_builds
    from trainer.tasks import parse_tasks

    tasks = parse_tasks(cfg.eval_tasks)
    if cfg.eval_every and not tasks and not any(list_heldout(b) for b in run_builds(cfg)):
        raise ValueError(f"--eval-every {cfg.eval_every}: build {cfg.data} has no held-out data (holdout/) and no "
                         "--eval-tasks were given, so there is nothing to evaluate")


def resolve_mix(builds: list[Path], mix: str | None, max_repeat: float | None) -> dict | None:
    """TrainConfig.mix from --data/--mix/--max-repeat (ValueError on a bad combination or --mix)."""
    if mix is None:
        if len(builds) > 1:
            raise ValueError(f"{len(builds)} --data builds need --mix to say in which shares to train on their sources")
        if max_repeat is not None:
            raise ValueError("--max-repeat applies to --mix only")
        return None
    from trainer.mixing import parse_mix

    if max_repeat is not None and not max_repeat >= 1:
        raise ValueError(f"--max-repeat must be >= 1 (1 = each row at most once), got {max_repeat:g}")
    if len({b.resolve() for b in builds}) != len(builds):
        raise ValueError("a build is given twice with --data")
    request = parse_mix(mix, max_repeat)
    return {"builds": [str(b) for b in builds], "request": request.to_dict(), "text": mix}


def train_seeds(cfg: TrainConfig, seeds: list[int], nproc: int) -> int:
    """One run, or a soup of one run per seed; the exit code."""
    return train_soup(cfg, seeds, nproc) if len(seeds) > 1 else run_one(cfg, nproc)


def train_cmd(
    data: Annotated[Optional[list[Path]], typer.Option(help="Build directory (manifest.duckdb + shards/) to "
                                                       "train on (required unless --plan). Repeat it to mix "
                                                       "the sources of several builds (with --mix).")] = None,
    mix: Annotated[Optional[str], typer.Option(help="Train on the --data builds' per-source rows in these token "
                                               "shares: \"src=0.5,src2=0.3\" (weights are normalised; "
                                               "\"src=0.3:4\" also caps its repeats at 4) or a YAML file "
                                               "({sources: {src: 0.5, src2: {weight: 0.3, max_repeat: 4}}}, or "
                                               "a build spec whose `share:` values are the weights). Needs "
                                               "builds whose shards hold one source each (build-mixture "
                                               "--by-source). Writes RUN/mixture.json.")] = None,
    max_repeat: Annotated[Optional[float], typer.Option(help="With --mix: how many times a source's rows may "
                                                        "be repeated to reach its share (default 1: never; "
                                                        "a source that would need more is an error naming "
                                                        "the repeat it needs).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory: metrics.jsonl, checkpoints/, "
                                                "model.safetensors (required unless --plan). With several "
                                                "seeds: OUT/seed-S per seed and the merged OUT/model.safetensors"
                                                ".")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Training stage with all of Instella's numbers: "
                                                  f"{', '.join(RECIPES)} (see trainer/README.md). Explicit "
                                                  "flags override its values.")] = None,
    preset: Annotated[Optional[str], typer.Option(help=f"Model preset: {', '.join(PRESETS)} (default: the "
                                                  "--init-from model, else the recipe's, else tiny).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Duration in optimizer steps (total, including resumed "
                                                 "ones; default: the recipe's duration, else 100).")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="Duration in tokens (rounded up to whole steps).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Duration in passes over the build (rounded up to "
                                                    "whole steps).")] = None,
    nproc: Annotated[int, typer.Option(help="Local processes; >1 launches torchrun (FSDP over them).")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the weights and of the data order (default 0, "
                                                "or the recipe's seeds).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds, e.g. 5796,6198,8915: train once "
                                                 "per seed into OUT/seed-S, then merge them into OUT (model "
                                                 "soup; the default of --recipe instella-stage2).")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Tokens per packed row (default: the build's). Shorter "
                                                   "must divide the build's and cuts its rows on purpose.")] = None,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per optimizer step (default: the "
                                                        "recipe's); converted exactly to micro-batch x grad-accum "
                                                        "x data-parallel ranks, else an error.")] = None,
    micro_batch: Annotated[Optional[int], typer.Option(help="Packed rows concatenated into one microbatch "
                                                       "(default 1).")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Microbatches per optimizer step and rank (default: "
                                                      "from --batch-tokens / the recipe, else 1).")] = None,
    attention: Annotated[Optional[str], typer.Option(help=f"{' | '.join(ATTENTION)}: stop attention at "
                                                     "document boundaries (our default), or plain causal over "
                                                     "the row (Instella stage 1/2, SFT).")] = None,
    positions: Annotated[Optional[str], typer.Option(help=f"RoPE positions: {' | '.join(POSITIONS)} (restart "
                                                     "per document (our default), or absolute in the row as "
                                                     "Instella).")] = None,
    init: Annotated[Optional[str], typer.Option(help=f"Weight init: {' | '.join(INITS)} (N(0,0.02) GPT-2 "
                                                "scaled (ours), or OLMo/Instella's truncated mitchell).")] = None,
    norm_eps: Annotated[Optional[float], typer.Option(help="RMSNorm eps (ours 1e-6; Instella 1e-5).")] = None,
    decay_norm: Annotated[Optional[bool], typer.Option("--decay-norm/--no-decay-norm", help="Weight decay on "
                                                       "norm gains too (Instella) or not (ours).")] = None,
    rope_theta: Annotated[Optional[float], typer.Option(help="RoPE θ (default: the build's, else "
                                                        "the preset's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the recipe's, else the "
                                                "preset's).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help=f"LR schedule: {' | '.join(SCHEDULES)} (default "
                                                    "cosine).")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Warmup steps (default: the recipe's, else the "
                                                  "preset's capped at steps/10).")] = None,
    final_lr_ratio: Annotated[Optional[float], typer.Option(help="LR at the last step as a fraction of the peak "
                                                            "(default 0.1).")] = None,
    wsd_decay: Annotated[float, typer.Option(help="WSD: fraction of the steps spent decaying.")] = 0.2,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay (default 0.1).")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the global gradient norm to this (default "
                                                       "1.0).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help=f"Compute dtype: {' | '.join(DTYPES)} (bf16 keeps fp32 "
                                                 "master weights and reduces gradients in fp32; default: the "
                                                 "recipe's, else fp32).")] = None,
    compile: Annotated[bool, typer.Option(help="torch.compile each block.")] = False,
    act_ckpt: Annotated[bool, typer.Option(help="Recompute each block's activations in backward.")] = False,
    replicate: Annotated[Optional[int], typer.Option(help="HSDP replica groups (default: number of "
                                                     "nodes; shard inside a node).")] = None,
    attn_backend: Annotated[str, typer.Option(help="Attention backend: auto | flash | varlen | flex | "
                                              "sdpa_loop | dense.")] = "auto",
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: only at the end).")] = 0,
    resume: Annotated[Optional[Path], typer.Option(help="Resume from this run dir (latest checkpoint) or "
                                                   "checkpoint dir (with several seeds: the soup dir). "
                                                   "Checkpoints are trusted input.")] = None,
    resume_step: Annotated[Optional[int], typer.Option(help="Resume from the checkpoint of this step.")] = None,
    init_from: Annotated[Optional[str], typer.Option(help="Start from these weights (fresh optimizer unless "
                                                     "--keep-optimizer): a run, checkpoint or merged dir, or "
                                                     "hf:DIR (a Hugging Face checkpoint). The checkpoint's "
                                                     "architecture is kept (--preset must fit it).")] = None,
    keep_optimizer: Annotated[Optional[bool], typer.Option(
        "--keep-optimizer/--no-keep-optimizer", help="With --init-from RUN: also restore that checkpoint's "
        "AdamW moments, with the step counter and schedule reset (Instella's stage 2, long phase 2 and long SFT; "
        "the default of those recipes). Needs a run or step-N checkpoint of ours.")] = None,
    warmup_start: Annotated[Optional[float], typer.Option(help="Warmup starts at this fraction of the peak LR "
                                                          "(default: the recipe's, Instella 0.1; else 0).")] = None,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Peak TFLOP/s per device for MFU (default: "
                                                         "from the GPU name; none on CPU).")] = None,
    log_every: Annotated[int, typer.Option(help="Write metrics.jsonl every N steps.")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    sp: Annotated[Optional[int], typer.Option(help="Ulysses sequence parallelism: processes sharing one row "
                                              "(must divide --nproc, the heads and the row length; default: "
                                              "the recipe's, else 1).")] = None,
    verify_data: Annotated[bool, typer.Option(help="Re-hash every shard, index and mask file against the "
                                              "manifest before training (cheap checks of sizes, headers and "
                                              "indexes run always).")] = False,
    allow_data_change: Annotated[bool, typer.Option(help="Let --resume continue on a build whose "
                                                    "fingerprint differs from the checkpoint's (refused "
                                                    "otherwise).")] = False,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps and at the end: loss and bits per "
                                            "byte on each source's held-out documents (BUILD/holdout/) and the "
                                            "--eval-tasks; rows {\"step\", \"eval\", \"tasks\"} in "
                                            "metrics.jsonl, drawn in eval.png. 0: off (or only at the end "
                                            "when --eval-tasks is given).")] = 0,
    eval_tasks: Annotated[Optional[str], typer.Option(help="Comma-separated downstream tasks scored by "
                                                      "log-likelihood as lm-eval does: arc_easy, "
                                                      "arc_challenge, hellaswag, mmlu, boolq (acc, acc_norm, "
                                                      "bpb), gsm8k (bpb of the gold solution), or paths to "
                                                      "JSONL files in the benchmarks' shape.")] = None,
    eval_limit: Annotated[int, typer.Option(help="Items per task (the first N of the file; 0: all).")] = 200,
    eval_max_tokens: Annotated[int, typer.Option(help="Held-out tokens scored per source: its first documents "
                                                 "up to this many (0: all; bounds the cost of an "
                                                 "evaluation).")] = 0,
    plan: Annotated[bool, typer.Option(help="Print the per-GPU memory plan (params, grads, optimizer, "
                                       "activations, logits chunks) for --preset/--seq-len/--sp/--nproc/"
                                       "--act-ckpt and exit; e.g. --preset instella-3b --seq-len 262144 "
                                       "--sp 4 --nproc 8 --act-ckpt.")] = False,
) -> None:
    """Train a decoder on a build with FSDP2, document masking and exact resume; --recipe selects a stage."""
    if plan:
        print_memory_plan(preset, seq_len, sp, nproc, act_ckpt, micro_batch)
        return
    builds = list(data or [])
    check_launch(builds[0] if builds else None, out, nproc, sp)
    for extra in builds[1:]:
        check_launch(extra, out, nproc, sp)
    try:
        mix_cfg = resolve_mix(builds, mix, max_repeat)
        if recipe is not None:
            get_recipe(recipe)
        cfg = TrainConfig(
            data=str(builds[0]), out=str(out), mix=mix_cfg, preset=preset, recipe=recipe, steps=steps,
            tokens=tokens,
            epochs=epochs, seq_len=seq_len, batch_tokens=batch_tokens, micro_batch=micro_batch,
            grad_accum=grad_accum, positions=positions, attention=attention, init=init, norm_eps=norm_eps,
            decay_norm=decay_norm, rope_theta=rope_theta, lr=lr, schedule=schedule, warmup=warmup,
            final_lr_ratio=final_lr_ratio, wsd_decay=wsd_decay, weight_decay=weight_decay, grad_clip=grad_clip,
            dtype=dtype, compile=compile, act_ckpt=act_ckpt, replicate=replicate, attn_backend=attn_backend,
            save_every=save_every, resume=str(resume) if resume else None, resume_step=resume_step,
            init_from=init_from, keep_optimizer=keep_optimizer, warmup_start=warmup_start,
            peak_tflops=peak_tflops, log_every=log_every, progress=progress,
            verify_data=verify_data, allow_data_change=allow_data_change,
            eval_every=eval_every, eval_tasks=eval_tasks, eval_limit=eval_limit, eval_max_tokens=eval_max_tokens,
            extra={"sp": sp} if sp else {})
        check_eval_request(cfg)
        cfg, run_seeds = resolve_config(cfg, nproc, seed, seeds)
        check_data(cfg)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    raise typer.Exit(train_seeds(cfg, run_seeds, nproc))

def recipes_cmd() -> None:
    """List the training recipes: tokens per optimizer step and total tokens of each (Instella's numbers)."""
    for r in RECIPES.values():
        warmup = f"int({r.warmup_ratio:g} x steps)" if r.warmup_ratio is not None else str(r.warmup)
        typer.echo(f"{r.describe()}\n    {r.about}; lr {r.lr:g} {r.schedule}, warmup {warmup} from "
                   f"{r.warmup_start:g} x peak" + ("; keeps the --init-from optimizer" if r.keep_optimizer else ""))

def merge_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoint dirs (step-N), run dirs or exports.")],
    out: Annotated[Path, typer.Option(help="Output dir for model.safetensors + config.json.")],
    weight: Annotated[Optional[list[float]], typer.Option(help="Per-checkpoint weight (repeat; default: "
                                                          "equal).")] = None,
) -> None:
    """Average several runs' weights (model soup) and export them as safetensors."""
    from trainer.checkpoint import DiskFullError, find_checkpoint, is_export
    from trainer.merge import merge_checkpoints

    try:
        paths = [p if is_export(p) or (p / ".metadata").exists() else find_checkpoint(p) for p in checkpoints]
        merge_checkpoints(paths, out, weight or None)
    except (ValueError, FileNotFoundError, DiskFullError) as e:  # CheckpointError (a damaged file) included
        fail(str(e))
    typer.echo(f"merged {len(paths)} checkpoint(s) -> {out}/model.safetensors")


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("recipes")(recipes_cmd)
    app.command("merge")(merge_cmd)

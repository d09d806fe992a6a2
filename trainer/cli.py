"""`cli.py train` and `cli.py merge`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from trainer.config import DTYPES, POSITIONS, PRESETS, SCHEDULES, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def launch(cfg: TrainConfig, nproc: int) -> int:
    """Run `cfg` on `nproc` local processes through torchrun (the config travels as RUN/train_config.json)."""
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "train_config.json"
    cfg.to_json(cfg_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "trainer.train", str(cfg_path)]
    return subprocess.call(cmd, env=env, cwd=ROOT)


def register(app: typer.Typer, synth_app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        data: Annotated[Optional[Path], typer.Option(help="Build directory (manifest.duckdb + shards/) to train "
                                                     "on (required unless --plan).")] = None,
        out: Annotated[Optional[Path], typer.Option(help="Run directory: metrics.jsonl, checkpoints/, "
                                                    "model.safetensors (required unless --plan).")] = None,
        preset: Annotated[str, typer.Option(help=f"Model preset: {', '.join(PRESETS)}.")] = "tiny",
        steps: Annotated[int, typer.Option(help="Optimizer steps to train (total, including resumed ones).")] = 100,
        nproc: Annotated[int, typer.Option(help="Local processes; >1 launches torchrun (FSDP over them).")] = 1,
        seed: Annotated[int, typer.Option(help="Seed of the weights and of the data order.")] = 0,
        seq_len: Annotated[Optional[int], typer.Option(help="Tokens per packed row; must divide the build's "
                                                       "seq_len (default: min(preset, build)).")] = None,
        micro_batch: Annotated[int, typer.Option(help="Packed rows concatenated into one microbatch.")] = 1,
        grad_accum: Annotated[int, typer.Option(help="Microbatches per optimizer step and rank.")] = 1,
        positions: Annotated[str, typer.Option(help=f"RoPE positions: {' | '.join(POSITIONS)} (restart per "
                                               "document, or absolute in the row as Instella-Long).")] = "document",
        rope_theta: Annotated[Optional[float], typer.Option(help="RoPE θ (default: the build's, else "
                                                            "the preset's).")] = None,
        lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the preset's).")] = None,
        schedule: Annotated[str, typer.Option(help=f"LR schedule: {' | '.join(SCHEDULES)}.")] = "cosine",
        warmup: Annotated[Optional[int], typer.Option(help="Warmup steps (default: preset's, capped at "
                                                      "steps/10).")] = None,
        final_lr_ratio: Annotated[float, typer.Option(help="LR at the last step as a fraction of the peak.")] = 0.1,
        wsd_decay: Annotated[float, typer.Option(help="WSD: fraction of the steps spent decaying.")] = 0.2,
        weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (matrices only).")] = 0.1,
        grad_clip: Annotated[float, typer.Option(help="Clip the global gradient norm to this.")] = 1.0,
        dtype: Annotated[str, typer.Option(help=f"Compute dtype: {' | '.join(DTYPES)} (bf16 keeps fp32 master "
                                           "weights and reduces gradients in fp32).")] = "fp32",
        compile: Annotated[bool, typer.Option(help="torch.compile each block.")] = False,
        act_ckpt: Annotated[bool, typer.Option(help="Recompute each block's activations in backward.")] = False,
        replicate: Annotated[Optional[int], typer.Option(help="HSDP replica groups (default: number of "
                                                         "nodes; shard inside a node).")] = None,
        attn_backend: Annotated[str, typer.Option(help="Attention backend: auto | flash | varlen | flex | "
                                                  "sdpa_loop | dense.")] = "auto",
        save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: only at the end).")] = 0,
        resume: Annotated[Optional[Path], typer.Option(help="Resume from this run dir (latest checkpoint) or "
                                                       "checkpoint dir.")] = None,
        resume_step: Annotated[Optional[int], typer.Option(help="Resume from the checkpoint of this step.")] = None,
        init_from: Annotated[Optional[Path], typer.Option(help="Start from these weights (checkpoint, run or "
                                                          "merged dir) with a fresh optimizer.")] = None,
        peak_tflops: Annotated[Optional[float], typer.Option(help="Peak TFLOP/s per device for MFU (default: "
                                                             "from the GPU name; none on CPU).")] = None,
        log_every: Annotated[int, typer.Option(help="Write metrics.jsonl every N steps.")] = 1,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
        sp: Annotated[int, typer.Option(help="Ulysses sequence parallelism: processes sharing one row (must "
                                        "divide --nproc, the heads and the row length).")] = 1,
        plan: Annotated[bool, typer.Option(help="Print the per-GPU memory plan (params, grads, optimizer, "
                                           "activations, logits chunks) for --preset/--seq-len/--sp/--nproc/"
                                           "--act-ckpt and exit; e.g. --preset instella-3b --seq-len 262144 "
                                           "--sp 4 --nproc 8 --act-ckpt.")] = False,
    ) -> None:
        """Train a decoder on a build with FSDP2, document masking and exact resume."""
        if plan:
            from trainer.plan import PlanConfig, plan_memory

            model_cfg = PRESETS[preset].model if preset in PRESETS else None
            if model_cfg is None:
                typer.echo(f"error: unknown preset {preset!r}; choose one of {sorted(PRESETS)}", err=True)
                raise typer.Exit(2)
            try:
                pcfg = PlanConfig(seq_len=seq_len or model_cfg.seq_len, sp=sp, world=nproc, act_ckpt=act_ckpt,
                                  micro_batch=micro_batch)
            except ValueError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2)
            typer.echo(plan_memory(model_cfg, pcfg).format())
            return
        if data is None or out is None:
            typer.echo("error: --data and --out are required (unless --plan)", err=True)
            raise typer.Exit(2)
        if sp < 1 or nproc % sp:
            typer.echo(f"error: --sp {sp} must be >= 1 and divide --nproc {nproc}", err=True)
            raise typer.Exit(2)
        try:
            cfg = TrainConfig(
                data=str(data), out=str(out), preset=preset, steps=steps, seed=seed, seq_len=seq_len,
                micro_batch=micro_batch, grad_accum=grad_accum, positions=positions, rope_theta=rope_theta, lr=lr,
                schedule=schedule, warmup=warmup, final_lr_ratio=final_lr_ratio, wsd_decay=wsd_decay,
                weight_decay=weight_decay, grad_clip=grad_clip, dtype=dtype, compile=compile, act_ckpt=act_ckpt,
                replicate=replicate, attn_backend=attn_backend, save_every=save_every,
                resume=str(resume) if resume else None, resume_step=resume_step,
                init_from=str(init_from) if init_from else None, peak_tflops=peak_tflops, log_every=log_every,
                progress=progress, extra={"sp": sp} if sp > 1 else {})
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        if not (data / "manifest.duckdb").exists():
            typer.echo(f"error: no manifest.duckdb in {data} (missing or unfinished build)", err=True)
            raise typer.Exit(2)
        if nproc > 1 and "LOCAL_RANK" not in os.environ:
            raise typer.Exit(launch(cfg, nproc))
        from trainer.train import train

        train(cfg)

    @app.command("merge")
    def merge_cmd(
        checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoint dirs (step-N), run dirs or exports.")],
        out: Annotated[Path, typer.Option(help="Output dir for model.safetensors + config.json.")],
        weight: Annotated[Optional[list[float]], typer.Option(help="Per-checkpoint weight (repeat; default: "
                                                              "equal).")] = None,
    ) -> None:
        """Average several runs' weights (model soup) and export them as safetensors."""
        from trainer.checkpoint import find_checkpoint
        from trainer.merge import merge_checkpoints

        paths = [p if (p / "model.safetensors").exists() or (p / ".metadata").exists() else find_checkpoint(p)
                 for p in checkpoints]
        merge_checkpoints(paths, out, weight or None)
        typer.echo(f"merged {len(paths)} checkpoint(s) -> {out}/model.safetensors")

"""The training loop: `train(cfg)` runs on every rank (launched by torchrun, or alone as a one-process group).

    python -m torch.distributed.run --nproc-per-node K -m trainer.train RUN/train_config.json

is what `cli.py train --nproc K` runs; multi-node is the same under plain torchrun (`--nnodes`, rendezvous).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from trainer import carry, integrity, parallel
from trainer import checkpoint as ckpt
from trainer import sp as seqpar
from trainer.build import HF_PREFIX, build_model, hf_module, progress_bar
from trainer.config import ModelConfig, TrainConfig, get_preset
from trainer.data import PackedDataset, read_build
from trainer.evaluate import make_evaluator, plot_eval
from trainer.metrics import MetricsLog, peak_flops, plot_loss, step_flops
from trainer.mixing import (
    load_data_position,
    make_loader,
    mix_builds,
    plan_for_run,
    total_rows,
)
from trainer.optim import LRSchedule, build_optimizer, set_lr
from trainer.recipes import RunSettings, effective_preset, resolve_settings
from trainer.torchrun import report_refusal


def base_model_config(cfg: TrainConfig) -> tuple[ModelConfig, str]:
    """The model before this run's settings: the --init-from checkpoint's own config (its architecture wins over
    --preset, which must merely fit it), else the preset; and where it came from."""
    if not cfg.init_from:
        name = effective_preset(cfg)
        return get_preset(name).model, f"preset {name}"
    if cfg.init_from.startswith(HF_PREFIX):
        hf = hf_module()
        return hf.hf_config_to_model_config(cfg.init_from[len(HF_PREFIX):]), "--init-from hf config"
    raw = ckpt.read_model_config(cfg.init_from)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in raw.items() if k in known}), "--init-from config"


def resolve_model_config(base: ModelConfig, settings: RunSettings) -> ModelConfig:
    """The model of this run: `base` with the run's row length, RoPE θ, norm eps and init scheme."""
    return dataclasses.replace(base, seq_len=settings.seq_len, rope_theta=settings.rope_theta,
                               norm_eps=settings.norm_eps, init=settings.init)


def resolve_run(cfg: TrainConfig, world: int) -> tuple[RunSettings, ModelConfig]:
    """Settings and model of `cfg` on `world` processes (reads only the build's manifest); ValueError if they
    cannot run as asked. `cli.py train` calls this before launching anything, `train` again on every rank."""
    info = read_build(cfg.data)
    base, source = base_model_config(cfg)
    rows = total_rows(mix_builds(cfg)) if cfg.mix else sum(n for _, n in info.shards)
    settings = resolve_settings(cfg, base, info.seq_len, info.rope_theta, rows, world, source)
    if cfg.mix:
        plan_for_run(cfg, settings)  # a source too small for its weight fails here, before any process starts
    if settings.keep_optimizer:  # fail before any process starts, not after the model is built
        carry.check_compatible(carry.optimizer_checkpoint(cfg.init_from), settings.decay_norm)
    if settings.objective == "dpo":
        from trainer.dpo import check_dpo_run

        check_dpo_run(cfg, settings)
    return settings, resolve_model_config(base, settings)


def train(cfg: TrainConfig) -> dict:
    """Train `cfg.steps` optimizer steps; returns a summary (rank 0's view)."""
    env = parallel.init_distributed()
    try:
        summary = _train(cfg, env)
    except BaseException:
        parallel.cleanup(finished=False)
        raise
    parallel.cleanup(finished=True)  # every rank reaches the end together before the process group goes
    return summary


def pin_build(build: str, verify_data: bool) -> integrity.BuildFingerprint:
    """The fingerprint of a build this run trains on, after the cheap checks of every file it will read (and a
    re-hash of all of them with `verify_data`); DataError naming the first damaged file."""
    if verify_data:
        integrity.raise_problems(build, integrity.verify_build_data(build), "--verify-data:")
    integrity.raise_problems(build, integrity.check_build_files(build, read_build(build).seq_len), "damaged build")
    return integrity.build_fingerprint(build)


def check_pinned(dataset: PackedDataset, fingerprint: integrity.BuildFingerprint) -> None:
    """The shard directories the dataset holds are still those of `fingerprint` (no swap between reading the
    manifest and pinning the directories)."""
    moved = dataset.shards.files.still_in_place()
    if moved or integrity.build_fingerprint(dataset.info.path) != fingerprint:
        raise integrity.BuildChangedError(f"{dataset.info.path}: the build was replaced while this run started; "
                                          "start it again")


def resume_build_notes(state: dict, fingerprints: dict[str, integrity.BuildFingerprint], primary: str,
                       checkpoint: Path, allow_change: bool) -> list[str]:
    """Every build of the run (several with --mix) checked against the one the checkpoint trained on at its place:
    BuildChangedError naming the first that differs, or (`allow_change`, checkpoints from before fingerprints)
    warning lines. `builds` lists them in --data order; checkpoints before it recorded the first build only."""
    saved_builds = state.get("builds")
    notes = []
    for i, (build, current) in enumerate(fingerprints.items()):
        if build == primary:
            saved = state.get("build")
        elif saved_builds is None:  # a checkpoint from before `builds`: nothing to compare the others with
            notes.append(f"{checkpoint} records the fingerprint of its first build only; cannot tell whether "
                         f"{build} is the build it trained on")
            continue
        elif i < len(saved_builds):
            saved = saved_builds[i]
        else:
            msg = f"{checkpoint} trained on {len(saved_builds)} builds; {build} was not one of them"
            if not allow_change:
                raise integrity.BuildChangedError(msg + "; pass --allow-data-change to add it on purpose")
            notes.append(msg + "; continuing with it (--allow-data-change)")
            continue
        note = integrity.check_resume_build(saved, current, checkpoint, build, allow_change)
        if note:
            notes.append(note)
    return notes


def _train(cfg: TrainConfig, env: parallel.DistEnv) -> dict:
    run = Path(cfg.out)
    settings, mcfg = resolve_run(cfg, env.world)
    if settings.objective == "dpo":  # preference pairs and a frozen reference: trainer/dpo.py
        from trainer.dpo import train_dpo

        return train_dpo(cfg, env, settings, mcfg)
    # every build of the run (several with --mix) is checked and pinned; --verify-data hashes once per node (the
    # CLI launcher has hashed already when it started this run)
    verify = cfg.verify_data and env.local_rank == 0 and not os.environ.get("MIDTRAIN_DATA_VERIFIED")
    fingerprints = {b: pin_build(b, verify) for b in mix_builds(cfg)}
    fingerprint = fingerprints[cfg.data]
    if cfg.resume:  # before any weight is read: a checkpoint resumes only on the builds it trained on
        resume_path = ckpt.find_checkpoint(cfg.resume, cfg.resume_step)
        for note in resume_build_notes(ckpt.read_trainer_state(resume_path), fingerprints, cfg.data, resume_path,
                                       cfg.allow_data_change):
            if env.is_main:
                warnings.warn(note, stacklevel=1)
    if env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        resolved = settings.to_dict()
        if cfg.mix:  # the mix as planned for this run (weights normalised, rows per source)
            resolved["mix"] = plan_for_run(cfg, settings)[2].to_dict()
        cfg.to_json(run / "train_config.json", resolved=resolved, build=fingerprint.to_dict(),
                    **({"builds": {b: f.to_dict() for b, f in fingerprints.items()}} if cfg.mix else {}))
    model = build_model(mcfg, cfg, env, settings.dtype, init_weights=not settings.keep_optimizer)
    spc = seqpar.init_sequence_parallel(settings.sp, env.rank, env.world)
    seqpar.enable_ulysses(model, spc)
    schedule = LRSchedule(settings.schedule, settings.lr, settings.steps, settings.warmup, settings.final_lr_ratio,
                          cfg.wsd_decay, settings.warmup_start)
    optimizer = build_optimizer(model, settings.lr, (settings.beta1, settings.beta2), settings.eps,
                                settings.weight_decay, settings.decay_norm)
    if settings.keep_optimizer and not cfg.resume:  # on resume the run's own checkpoint holds both
        path = carry.optimizer_checkpoint(cfg.init_from)
        carry.check_compatible(path, settings.decay_norm)
        from_step = carry.load_weights_and_optimizer(path, model, optimizer, (settings.beta1, settings.beta2),
                                                     settings.eps, settings.weight_decay)
        if env.is_main:
            print(f"[train] weights and AdamW moments of {path} (step {from_step:,}); step counter reset", flush=True)
    # ranks of one sequence-parallel group read the same rows; with --mix the loader interleaves per-source pools
    loader = make_loader(cfg, settings, mcfg.seq_len, spc.data_rank(env.rank), spc.data_world(env.world))
    datasets = loader.datasets if cfg.mix else [loader.ds]  # in the order of mix_builds(cfg)
    for dataset, build in zip(datasets, fingerprints):  # the shard directories the loader holds are those pinned
        check_pinned(dataset, fingerprints[build])

    start = 0
    if cfg.resume:
        path = ckpt.find_checkpoint(cfg.resume, cfg.resume_step)
        state = ckpt.load_checkpoint(path, model, optimizer, env.rank)
        load_data_position(loader, state["data"], str(path))
        start = state["step"]
    if cfg.mix and env.is_main:  # the plan (and what a resumed run already trained on) before the first step
        loader.write_report(run / "mixture.json", start)
    log = MetricsLog(run, env.is_main, resume_step=start)
    evaluator = make_evaluator(cfg, mcfg.seq_len, env)  # None unless --eval-every / --eval-tasks
    peak = peak_flops(env.device, cfg.peak_tflops)
    progress = progress_bar(env.is_main and cfg.progress)
    task = progress.add_task("train", total=settings.steps, completed=start, loss=float("nan")) if progress else None
    if env.is_main:
        name = cfg.preset or effective_preset(cfg) or "model of --init-from"
        n_units = loader.n_units if cfg.mix else len(loader.ds)
        print(f"[train] {name}: {mcfg.n_params() / 1e6:.1f}M params, seed {cfg.seed}, {n_units:,} units, "
              f"world {env.world} (sp {spc.size}), {loader.units_per_step} units/step; resolved settings:\n"
              f"{settings.table()}", flush=True)

    last = {}
    try:
        if progress:
            progress.start()
        for step in range(start + 1, settings.steps + 1):
            last = _train_step(step, model, optimizer, schedule, loader, mcfg, settings, env, peak, spc)
            if step % cfg.log_every == 0 or step == settings.steps:
                log.log(last)
            if progress:
                progress.update(task, completed=step, loss=last["loss"])
            if evaluator and evaluator.cfg.due(step, settings.steps):
                log.log(evaluator(model, step))  # collective: every rank evaluates, rank 0 writes
            if (cfg.save_every and step % cfg.save_every == 0) or step == settings.steps:
                state = {"step": step, "data": loader.state_dict(), "schedule": schedule.state_dict(),
                         "config": dataclasses.asdict(cfg), "settings": settings.to_dict(),
                         "model": dataclasses.asdict(mcfg), "build": fingerprint.to_dict(),
                         "builds": [{"path": b, **f.to_dict()} for b, f in fingerprints.items()]}
                ckpt.save_checkpoint(ckpt.checkpoint_dir(run, step), model, optimizer, state, env.rank)
                if cfg.mix and env.is_main:
                    loader.write_report(run / "mixture.json", step)
    finally:
        if progress:
            progress.stop()

    if cfg.export:
        weights = ckpt.full_model_state(model)  # collective: every rank takes part
        if env.is_main:
            ckpt.export_safetensors(run, weights, {"model": dataclasses.asdict(mcfg), "preset": cfg.preset,
                                                   "recipe": settings.recipe, "steps": settings.steps,
                                                   "data": cfg.data, "seed": cfg.seed,
                                                   "build": fingerprint.to_dict()})
    if env.is_main and cfg.plot:
        plot_loss(run)
        plot_eval(run)
    return last


def _train_step(step, model, optimizer, schedule, loader, mcfg, settings: RunSettings, env, peak,
                spc: seqpar.SPContext) -> dict:
    t0 = time.perf_counter()
    lr = schedule(step)
    set_lr(optimizer, lr)
    micro = [seqpar.shard_batch(b, spc) for b in loader.next_step()]  # SP: this rank's slice of each row
    # normalise by the valid targets of the whole step on all ranks, so accumulation and sharding do not change
    # the loss; FSDP averages gradients over ranks, hence the factor `world`
    n_valid = parallel.all_reduce_sum(sum(b.n_valid for b in micro), env.device).item()
    scale = env.world / max(n_valid, 1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    for i, batch in enumerate(micro):
        batch = batch.to(env.device)
        model.set_requires_gradient_sync(i == len(micro) - 1)  # reduce-scatter once, after the last microbatch
        loss = model(batch.input_ids, batch.positions, batch.cu_seqlens, batch.max_seqlen, batch.labels)
        (loss * scale).backward()
        loss_sum += loss.detach().double()
    grad_norm = parallel.clip_grad_norm(model.parameters(), settings.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_total = parallel.all_reduce_sum(loss_sum, env.device).item()
    n_tokens = env.world * sum(b.input_ids.numel() for b in micro)
    attn = parallel.all_reduce_sum(sum(b.attn_cost for b in micro) / spc.size, env.device).item()
    dt = time.perf_counter() - t0
    flops = step_flops(mcfg, n_tokens, int(attn))
    return {"step": step, "loss": loss_total / max(n_valid, 1.0), "lr": lr, "grad_norm": float(grad_norm),
            "tokens_per_s": n_tokens / dt, "mfu": flops / dt / (peak * env.world) if peak else None,
            "n_tokens": n_tokens, "n_valid": int(n_valid), "step_s": dt}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m trainer.train RUN/train_config.json")
    try:
        train(TrainConfig.from_json(argv[0]))
    except (ckpt.CheckpointError, integrity.DataError, ckpt.DiskFullError) as e:
        report_refusal(str(e))  # one line, also when every rank refuses (trainer.torchrun prints it once)
        raise SystemExit(2) from None
    # The run finished and the process group is gone: leave without the interpreter's shutdown, where C++ static
    # destructors of library threads (gloo, OpenMP, DuckDB pools) can abort a finished rank ("terminate called
    # without an active exception", issue 20) and make torchrun report a finished run as failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

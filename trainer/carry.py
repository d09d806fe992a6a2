"""`--init-from RUN --keep-optimizer`: start a stage from the previous stage's weights *and* AdamW moments.

Instella starts stage 2, Instella-Long phase 2 and the long SFT this way: `reset_trainer_state: true` without
`reset_optimizer_state` (configs/instella-3b-pretrain-stage2-seed-*.yaml on main; configs/instella-3b-long-pretrain-
phase2.yaml and configs/instella-3b-long-sft.yaml on the instella-long branch) loads the checkpoint's optimizer
state and starts the step counter, the schedule and the data anew. The AdamW moments (exp_avg, exp_avg_sq) and
AdamW's own per-parameter step (its bias correction) come from the checkpoint, as OLMo's `load_state_dict` does;
the run's own hyperparameters (lr from its schedule, betas, eps, weight decay) replace the stored ones.

Only our DCP checkpoints hold optimizer state: an export, a merge or `hf:DIR` has weights only, and asking to keep
an optimizer they do not have is an error (pass --no-keep-optimizer to start fresh on purpose).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from trainer.checkpoint import find_checkpoint, read_trainer_state

HF_PREFIX = "hf:"


def optimizer_checkpoint(spec: str) -> Path:
    """The DCP checkpoint whose optimizer state `--keep-optimizer` restores: a step-N dir, or a run dir's latest.
    ValueError (one line) when `spec` has no optimizer state."""
    hint = "pass a run dir or a checkpoints/step-N dir of ours, or --no-keep-optimizer to start a fresh optimizer"
    if spec.startswith(HF_PREFIX):
        raise ValueError(f"--keep-optimizer: {spec} is a Hugging Face checkpoint (weights only, no AdamW moments); "
                         + hint)
    path = Path(spec)
    if (path / ".metadata").exists():
        return path
    if (path / "checkpoints").is_dir():
        try:
            return find_checkpoint(path)
        except FileNotFoundError:
            pass
    raise ValueError(f"--keep-optimizer: {spec} holds no optimizer state (an export or merge has weights only); "
                     + hint)


def check_compatible(path: Path, decay_norm: bool) -> None:
    """The checkpoint's optimizer must have the same parameter groups (norm gains decayed or not)."""
    prev = read_trainer_state(path).get("settings") or {}
    if "decay_norm" in prev and bool(prev["decay_norm"]) != decay_norm:
        raise ValueError(f"--keep-optimizer: {path} was trained with decay_norm={prev['decay_norm']}, this run has "
                         f"decay_norm={decay_norm}: the AdamW parameter groups differ; pass --decay-norm/"
                         "--no-decay-norm to match, or --no-keep-optimizer")


def load_weights_and_optimizer(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, betas: tuple,
                               eps: float, weight_decay: float) -> int:
    """Restore the model and the AdamW state of checkpoint `path` in place (sharded: each rank reads its part);
    the run's hyperparameters overwrite the stored ones. Returns the step the checkpoint was written at."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    decay_group, no_decay_group = optimizer.param_groups  # trainer.optim.build_optimizer's two groups
    for group in optimizer.param_groups:
        group["betas"], group["eps"] = betas, eps
    decay_group["weight_decay"], no_decay_group["weight_decay"] = weight_decay, 0.0
    return int(read_trainer_state(path)["step"])

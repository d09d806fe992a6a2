"""A model ready to train: built on the right device, activation checkpointing, compile and FSDP applied, the
--init-from weights loaded; and the run's progress bar. Shared by the LM trainer (train.py) and DPO (dpo.py)."""
from __future__ import annotations

import torch

from trainer import checkpoint as ckpt
from trainer import parallel
from trainer.config import ModelConfig, TrainConfig
from trainer.model import Transformer

HF_PREFIX = "hf:"  # --init-from hf:DIR reads a Hugging Face checkpoint through trainer.hf


def load_init_weights(spec: str, mcfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Full weights for --init-from: "hf:DIR" (a Hugging Face checkpoint) or one of our run/checkpoint/merge dirs."""
    if spec.startswith(HF_PREFIX):
        return hf_module().load_hf_checkpoint(spec[len(HF_PREFIX):], mcfg)
    return ckpt.load_model_weights(spec)


def hf_module():
    try:
        from trainer import hf
    except ImportError as e:
        raise ValueError(f"--init-from hf:DIR needs trainer.hf, which is not available here ({e})") from e
    return hf


def build_model(mcfg: ModelConfig, cfg: TrainConfig, env: parallel.DistEnv, dtype: str | None = None,
                init_weights: bool = True) -> Transformer:
    """Full init on CPU (same weights for any world size), meta-device init + sharded materialisation on GPU;
    then the --init-from weights unless `init_weights` is False (--keep-optimizer loads them with the moments)."""
    torch.manual_seed(cfg.seed)
    if env.device.type == "cuda":
        with torch.device("meta"):
            model = Transformer(mcfg, cfg.attn_backend)
    else:
        model = Transformer(mcfg, cfg.attn_backend)
    if cfg.act_ckpt:
        parallel.apply_activation_checkpointing(model)
    if cfg.compile:
        parallel.apply_compile(model)
    mesh = parallel.build_mesh(env, cfg.replicate)
    parallel.apply_fsdp(model, mesh, parallel.mixed_precision(dtype or cfg.dtype or "fp32"))
    if env.device.type == "cuda":
        model.to_empty(device=env.device)
        torch.manual_seed(cfg.seed)
        model.init_weights()
    if cfg.init_from and init_weights:
        ckpt.load_full_weights(model, load_init_weights(cfg.init_from, mcfg))
    return model


def progress_bar(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())

"""AdamW as Instella trained (β 0.9/0.95, eps 1e-8, wd 0.1, clip 1.0) and the learning-rate schedules."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float, decay_norm: bool = False) -> torch.optim.AdamW:
    """Weight decay on matrices (projections, embedding, LM head); on the 1-D norm gains only with `decay_norm`
    (Instella's `decay_norm_and_bias: true`; ours exempts them, as most recipes do, so gains are not pulled to 0)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 or decay_norm]
    no_decay = [p for p in params if p.dim() < 2 and not decay_norm]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


@dataclass(frozen=True)
class LRSchedule:
    """lr(step) for optimizer steps 1..total.

    Linear warmup from `warmup_start` x peak (0 by default; OLMo/Instella start at 0.1 x peak, `instella/optim.py`
    `Scheduler._linear_warmup`) to `peak` over `warmup` steps, then
    - cosine: half-cosine down to final_ratio * peak at `total` (Instella stage 1: peak 4e-4, warmup 2000, 0.1x);
    - linear: straight line down to final_ratio * peak (Instella stage 2: linear from 4e-5, final 0);
    - wsd: warmup, stable at peak, then linear decay over the last `decay_frac` of the steps (MiniCPM / WSD);
    - constant: peak after warmup.
    """

    kind: str
    peak: float
    total: int
    warmup: int = 0
    final_ratio: float = 0.1
    decay_frac: float = 0.2
    warmup_start: float = 0.0

    def __call__(self, step: int) -> float:
        if self.warmup and step <= self.warmup:
            start = self.warmup_start * self.peak
            return start + (self.peak - start) * step / self.warmup
        final = self.peak * self.final_ratio
        if self.kind == "constant":
            return self.peak
        if self.kind == "wsd":
            decay_start = self.total - max(1, int(round(self.decay_frac * self.total)))
            if step <= max(decay_start, self.warmup):
                return self.peak
            frac = (step - max(decay_start, self.warmup)) / max(1, self.total - max(decay_start, self.warmup))
            return self.peak + (final - self.peak) * min(frac, 1.0)
        frac = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "linear":
            return self.peak + (final - self.peak) * frac
        if self.kind == "cosine":
            return final + (self.peak - final) * 0.5 * (1 + math.cos(math.pi * frac))
        raise ValueError(f"unknown schedule {self.kind!r}")

    def state_dict(self) -> dict:
        return dict(self.__dict__)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

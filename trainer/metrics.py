"""Telemetry: metrics.jsonl per step, FLOP/MFU accounting, the loss-curve PNG."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.config import ModelConfig

# dense bf16 peak per device (no sparsity), for MFU
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "MI300X": 1307.0, "MI250X": 383.0, "L40S": 362.0}


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None  # CPU: no meaningful peak; pass --peak-tflops to get an MFU


def step_flops(cfg: ModelConfig, n_tokens: int, sum_doc_len_sq: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) of one step: 6·N per token for the matmul weights
    (embedding lookup excluded, LM head included) + causal attention 6·L·d·Σ len² (QKᵀ and AV, half masked)."""
    return 6.0 * cfg.n_params(embedding=False) * n_tokens + 6.0 * cfg.n_layers * cfg.d_model * sum_doc_len_sq


class MetricsLog:
    """Appends one JSON line per step to RUN/metrics.jsonl (rank 0 only)."""

    def __init__(self, run: Path, enabled: bool, resume_step: int = 0) -> None:
        self.path = run / "metrics.jsonl"
        self.enabled = enabled
        if enabled:
            # resuming into the same run dir: forget the steps that are about to be redone
            keep = [ln for ln in read_metrics(self.path) if ln["step"] <= resume_step] if resume_step else []
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def log(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(run: Path) -> Path | None:
    records = [r for r in read_metrics(run) if "loss" in r]  # eval rows have no training loss
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(run.name)
    ax.grid(alpha=0.3)
    out = run / "loss.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

"""Model presets and the run configuration (plain dataclasses, serialisable to JSON for torchrun and checkpoints)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

VOCAB_PADDED = 50_304  # GPT-NeoX-20B + PII specials (50,280) padded to a multiple of 128
SCHEDULES = ("cosine", "linear", "wsd", "constant")
POSITIONS = ("document", "absolute")
DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    """Instella / OLMo-2 style decoder: pre-norm RMSNorm, QK-norm, SwiGLU, RoPE, untied embeddings."""

    n_layers: int
    d_model: int
    n_heads: int
    ffn_dim: int
    seq_len: int
    vocab_size: int = VOCAB_PADDED
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim {self.d_model // self.n_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def n_params(self, embedding: bool = True) -> int:
        d, f, v = self.d_model, self.ffn_dim, self.vocab_size
        per_layer = 4 * d * d + 3 * d * f + 4 * d  # qkv+o, gate/up/down, two norms + q/k norms
        total = self.n_layers * per_layer + d + v * d  # final norm + LM head
        return total + (v * d if embedding else 0)


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    lr: float  # peak learning rate
    warmup: int  # warmup steps


PRESETS: dict[str, Preset] = {
    # Instella-3B: 36 layers, d 2560, 32 heads, FFN 6912, 4K context; stage-1 cosine peak 4e-4, warmup 2000
    "instella-3b": Preset(ModelConfig(n_layers=36, d_model=2560, n_heads=32, ffn_dim=6912, seq_len=4096), 4e-4, 2000),
    # ~1.2B-parameter sibling for single-GPU experiments
    "instella-1b": Preset(ModelConfig(n_layers=16, d_model=2048, n_heads=16, ffn_dim=5504, seq_len=4096), 4e-4, 2000),
    # CPU-sized presets for the benchmark, the demo and the tests
    "small": Preset(ModelConfig(n_layers=4, d_model=256, n_heads=4, ffn_dim=704, seq_len=1024), 1e-3, 20),
    "tiny": Preset(ModelConfig(n_layers=2, d_model=64, n_heads=4, ffn_dim=176, seq_len=256), 3e-3, 5),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass
class TrainConfig:
    """Everything a training run needs; `python cli.py train` fills it from the command line."""

    data: str  # build directory (manifest.duckdb + shards/)
    out: str  # run directory: metrics.jsonl, checkpoints/, model.safetensors, loss.png
    preset: str = "tiny"
    steps: int = 100
    seed: int = 0
    # data
    seq_len: int | None = None  # tokens per packed row fed to the model; default min(preset, build), must divide build
    micro_batch: int = 1  # packed rows concatenated into one microbatch
    grad_accum: int = 1  # microbatches per optimizer step (per rank)
    positions: str = "document"  # "document": RoPE positions restart per document; "absolute": position in the row
    rope_theta: float | None = None  # default: the build's rope_theta, else the preset's
    # optimisation (AdamW as Instella)
    lr: float | None = None  # peak; default from the preset
    schedule: str = "cosine"
    warmup: int | None = None  # default from the preset (capped at steps // 10 for short runs)
    final_lr_ratio: float = 0.1  # lr at the last step = final_lr_ratio * peak
    wsd_decay: float = 0.2  # WSD: fraction of steps spent decaying
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # parallelism and speed
    dtype: str = "fp32"  # "bf16": bf16 params/compute, fp32 master weights and gradient reduction
    compile: bool = False
    act_ckpt: bool = False
    replicate: int | None = None  # HSDP replica groups; default = number of nodes (shard within a node)
    attn_backend: str = "auto"
    # checkpoints
    save_every: int = 0  # 0: only at the end
    resume: str | None = None  # run dir or checkpoint dir
    resume_step: int | None = None  # default: the latest checkpoint in `resume`
    init_from: str | None = None  # weights only (checkpoint dir or exported/merged dir), fresh optimizer
    export: bool = True  # write model.safetensors + config.json at the end
    # telemetry
    log_every: int = 1
    plot: bool = True
    peak_tflops: float | None = None  # per device, for MFU; default from the GPU name, None on CPU
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free slot for extensions (e.g. sequence parallelism)

    def __post_init__(self) -> None:
        get_preset(self.preset)
        for name, value, allowed in (("schedule", self.schedule, SCHEDULES), ("positions", self.positions, POSITIONS),
                                     ("dtype", self.dtype, DTYPES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("steps", "micro_batch", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

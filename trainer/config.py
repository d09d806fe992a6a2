"""Model presets and the run configuration (plain dataclasses, serialisable to JSON for torchrun and checkpoints)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

VOCAB_PADDED = 50_304  # GPT-NeoX-20B + PII specials (50,280) padded to a multiple of 128
SCHEDULES = ("cosine", "linear", "wsd", "constant")
POSITIONS = ("document", "absolute")
DTYPES = ("fp32", "bf16")
ATTENTION = ("document", "causal")  # document: attention stops at document boundaries; causal: over the whole row
INITS = ("normal", "mitchell")  # normal: N(0, init_std), GPT-2 scaled outputs; mitchell: OLMo / Instella


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
    init: str = "normal"  # weight init scheme, one of INITS (trainer.model.Transformer.init_weights)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
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
    # RMSNorm eps 1e-5 as Instella (hf_instella/configuration_instella.py `rms_norm_eps`, OLMo LayerNorm eps)
    "instella-3b": Preset(ModelConfig(n_layers=36, d_model=2560, n_heads=32, ffn_dim=6912, seq_len=4096,
                                      norm_eps=1e-5), 4e-4, 2000),
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
    """Everything a training run needs; `python cli.py train` fills it from the command line.

    Fields left `None` are filled by `trainer.recipes.resolve_settings`: the flag's value, else the recipe's, else the
    build's, else our default. The resolved values are printed at start and stored under "resolved" in
    RUN/train_config.json.
    """

    data: str  # build directory (manifest.duckdb + shards/)
    out: str  # run directory: metrics.jsonl, checkpoints/, model.safetensors, loss.png
    preset: str | None = None  # model preset; default: the --init-from model's, else the recipe's, else "tiny"
    recipe: str | None = None  # a stage of trainer.recipes.RECIPES (Instella's numbers for that stage)
    steps: int | None = None  # duration: steps, else `tokens`, else `epochs`, else the recipe's, else 100
    tokens: int | None = None  # duration in tokens (rounded up to whole steps)
    epochs: float | None = None  # duration in passes over the build (rounded up to whole steps)
    seed: int = 0
    # data
    seq_len: int | None = None  # tokens per packed row; default: the build's (shorter only when given explicitly)
    batch_tokens: int | None = None  # tokens per optimizer step -> micro_batch x grad_accum x data-parallel world
    micro_batch: int | None = None  # packed rows concatenated into one microbatch (default 1)
    grad_accum: int | None = None  # microbatches per optimizer step (per rank); default from batch_tokens, else 1
    positions: str | None = None  # "document": RoPE positions restart per document; "absolute": position in the row
    attention: str | None = None  # "document" (default): no attention across documents; "causal": over the row
    rope_theta: float | None = None  # default: the build's rope_theta, else the preset's
    # load-time mixing (trainer/mixing.py): {"builds": [every --data], "request": MixRequest.to_dict()}; None =
    # train on `data` exactly as without mixing
    mix: dict | None = None
    # model fidelity switches (default: the preset's / ours; recipes choose Instella's)
    init: str | None = None  # "normal" (ours) | "mitchell" (Instella)
    norm_eps: float | None = None  # RMSNorm eps (ours 1e-6, Instella 1e-5)
    decay_norm: bool | None = None  # weight decay on norm gains too (Instella: decay_norm_and_bias)
    # optimisation (AdamW as Instella)
    lr: float | None = None  # peak; default from the recipe, else the preset
    schedule: str | None = None  # default "cosine"
    warmup: int | None = None  # default: the recipe's, else the preset's capped at steps // 10
    warmup_start: float | None = None  # warmup starts at this x peak; default: the recipe's (Instella 0.1), else 0
    final_lr_ratio: float | None = None  # lr at the last step = final_lr_ratio * peak (default 0.1)
    wsd_decay: float = 0.2  # WSD: fraction of steps spent decaying
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    # parallelism and speed
    dtype: str | None = None  # "bf16": bf16 params/compute, fp32 master weights and gradient reduction; default fp32
    compile: bool = False
    act_ckpt: bool = False
    replicate: int | None = None  # HSDP replica groups; default = number of nodes (shard within a node)
    attn_backend: str = "auto"
    # checkpoints
    save_every: int = 0  # 0: only at the end
    resume: str | None = None  # run dir or checkpoint dir
    resume_step: int | None = None  # default: the latest checkpoint in `resume`
    init_from: str | None = None  # weights (fresh optimizer unless keep_optimizer): run/checkpoint/merged dir, "hf:DIR"
    keep_optimizer: bool | None = None  # with init_from: also its AdamW moments, step counter reset (Instella stage 2)
    export: bool = True  # write model.safetensors + config.json at the end
    # data integrity (issue 20)
    verify_data: bool = False  # re-hash every shard file against the manifest before training
    allow_data_change: bool = False  # --resume on a build with another fingerprint than the checkpoint's
    # telemetry
    log_every: int = 1
    plot: bool = True
    peak_tflops: float | None = None  # per device, for MFU; default from the GPU name, None on CPU
    progress: bool = True
    # in-loop evaluation (trainer/evaluate.py): held-out bpb per source + downstream tasks
    eval_every: int = 0  # evaluate every N steps and at the end; 0 with eval_tasks: only at the end
    eval_tasks: str | None = None  # comma-separated task names (../shared/data/benchmarks) or JSONL paths
    eval_limit: int = 200  # items per task
    eval_max_tokens: int = 0  # per held-out source: its first documents up to this many tokens (0: all)
    extra: dict = field(default_factory=dict)  # free slot for extensions ("sp": Ulysses sequence parallelism)

    def __post_init__(self) -> None:
        if self.preset is not None:
            get_preset(self.preset)
        for name, allowed in (("schedule", SCHEDULES), ("positions", POSITIONS), ("dtype", DTYPES),
                              ("attention", ATTENTION), ("init", INITS)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("steps", "tokens", "micro_batch", "grad_accum", "batch_tokens", "seq_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("epochs", "lr", "norm_eps", "eps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("warmup", "weight_decay", "grad_clip", "final_lr_ratio", "eval_every", "eval_limit",
                     "eval_max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def to_json(self, path: str | Path, resolved: dict | None = None, build: dict | None = None,
                builds: dict | None = None) -> None:
        """Write the config; `resolved` (the settings the run actually used) and `build` (the fingerprint of the
        build it trains on, trainer/integrity.py; `builds`: of every --data build of a mixed run) are stored beside
        it for the record."""
        raw = asdict(self)
        if resolved is not None:
            raw["resolved"] = resolved
        if build is not None:
            raw["build"] = build
        if builds is not None:
            raw["builds"] = builds
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(raw, indent=2))
        tmp.replace(path)

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

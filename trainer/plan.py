"""Per-GPU memory plan of a training run: what has to fit beside the model at a given row length.

Assumes the trainer's setup: FSDP2 over all `world` GPUs with fp32 master weights, bf16 compute copies and fp32
gradient reduction (trainer.parallel), AdamW (two fp32 moments), Ulysses sequence parallelism of degree `sp`
(each rank holds seq_len / sp tokens of a row), optional activation checkpointing per block, and the fused linear
cross-entropy (kernels/loss.py) instead of materialised logits. Activation sizes count the tensors each op of a
block saves for backward with the GPU kernels (Triton norms/RoPE/SwiGLU, flash-style attention with O(T) state).
These are estimates for planning (allocator fragmentation and NCCL buffers come on top, see `headroom`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from trainer.config import ModelConfig

GiB = 1024**3
BF16, FP32 = 2, 4


@dataclass(frozen=True)
class PlanConfig:
    seq_len: int = 262_144  # tokens per packed row
    sp: int = 4  # Ulysses degree: GPUs sharing one row
    world: int = 8  # GPUs FSDP shards the model over
    act_ckpt: bool = True  # recompute each block in backward; keep only its input
    loss_chunk: int = 2048  # fused loss: tokens per logits chunk
    micro_batch: int = 1  # rows per microbatch (per SP group)
    headroom: float = 0.10  # fraction added for fragmentation, comm buffers, CUDA context
    gpu_gib: float = 80.0  # memory of one GPU (H100 80GB)

    def __post_init__(self) -> None:
        if self.sp < 1 or self.world < 1 or self.world % self.sp:
            raise ValueError(f"sp ({self.sp}) must be >= 1 and divide world ({self.world})")
        if self.seq_len % self.sp:
            raise ValueError(f"seq_len {self.seq_len} is not divisible by sp {self.sp}")


@dataclass
class MemoryPlan:
    model: ModelConfig
    cfg: PlanConfig
    rows: list[tuple[str, float, str]] = field(default_factory=list)  # (item, bytes per GPU, how it is counted)

    @property
    def subtotal(self) -> float:
        return sum(b for _, b, _ in self.rows)

    @property
    def total(self) -> float:
        return self.subtotal * (1 + self.cfg.headroom)

    @property
    def fits(self) -> bool:
        return self.total <= self.cfg.gpu_gib * GiB

    def format(self) -> str:
        c, m = self.cfg, self.model
        lines = [f"Memory plan per GPU: {m.n_params() / 1e9:.2f}B params ({m.n_layers} layers, d {m.d_model}, "
                 f"{m.n_heads} heads, FFN {m.ffn_dim}, vocab {m.vocab_size}); row {c.seq_len:,} tokens, "
                 f"Ulysses sp={c.sp} ({c.seq_len // c.sp:,} tokens/GPU), FSDP over {c.world} GPUs, "
                 f"activation checkpointing {'on' if c.act_ckpt else 'off'}"]
        width = max(len(r[0]) for r in self.rows)
        for name, b, how in self.rows:
            lines.append(f"  {name:<{width}}  {b / GiB:8.2f} GiB  {how}")
        lines.append(f"  {'subtotal':<{width}}  {self.subtotal / GiB:8.2f} GiB")
        lines.append(f"  {'total (+' + format(c.headroom, '.0%') + ')':<{width}}  {self.total / GiB:8.2f} GiB  "
                     f"{'fits' if self.fits else 'DOES NOT FIT'} in {c.gpu_gib:g} GiB")
        naive = self.tokens * m.vocab_size * (BF16 + 3 * FP32)
        lines.append(f"  (unfused logits would add {naive / GiB:.1f} GiB: bf16 logits + fp32 upcast, log-softmax, "
                     f"gradient)")
        return "\n".join(lines)

    @property
    def tokens(self) -> int:
        return self.cfg.seq_len // self.cfg.sp * self.cfg.micro_batch


def block_activation_elems(m: ModelConfig) -> int:
    """Elements per token one block saves for backward (bf16): norm inputs x2, normed x, q/k before QK-norm,
    q/k/v/out of attention, attention output into wo, gate and up for SwiGLU, SwiGLU output into w_down, plus
    the residual stream and MLP-norm output."""
    d, f = m.d_model, m.ffn_dim
    return 11 * d + 3 * f


def plan_memory(m: ModelConfig, c: PlanConfig | None = None) -> MemoryPlan:
    c = c or PlanConfig()
    plan = MemoryPlan(m, c)
    p, w = m.n_params(), c.world
    t = plan.tokens
    d, L = m.d_model, m.n_layers
    per_layer = m.n_params(embedding=False) / L  # approximate: LM head spread over layers is small at L=36
    block = block_activation_elems(m) * t * BF16
    rows = plan.rows
    rows.append(("params (fp32 shard)", FP32 * p / w, f"4 B x {p / 1e9:.2f}B / {w}"))
    rows.append(("grads (fp32 shard)", FP32 * p / w, f"4 B x params / {w}"))
    rows.append(("AdamW moments (fp32 shard)", 2 * FP32 * p / w, f"8 B x params / {w}"))
    rows.append(("bf16 unsharded blocks in flight", 2 * 2 * BF16 * per_layer,
                 "current + prefetched block, params and their gradients"))
    rows.append(("embedding + LM head (bf16, unsharded)", 2 * BF16 * m.vocab_size * d,
                 "root module gathered for the step"))
    if c.act_ckpt:
        rows.append(("checkpointed block inputs", L * t * d * BF16, f"{L} layers x {t:,} tokens x d, bf16"))
        rows.append(("one block recomputed + its grads", 2 * block,
                     f"{block_activation_elems(m)} elems/token saved, x2 for backward transients"))
    else:
        rows.append(("block activations", L * block, f"{L} layers x {block_activation_elems(m)} elems/token, bf16"))
    rows.append(("RoPE tables", 2 * t * (m.head_dim // 2) * FP32, "cos + sin, fp32"))
    chunk = min(c.loss_chunk, t)
    rows.append(("loss: logits chunk", chunk * m.vocab_size * (BF16 + 2 * FP32),
                 f"{chunk} tokens x vocab: bf16 matmul out, fp32 copy + logsumexp temp"))
    rows.append(("loss: grad buffers", t * d * BF16 + m.vocab_size * d * (FP32 + BF16),
                 "d(hidden) bf16 + d(LM head) fp32 accumulator and bf16 copy"))
    rows.append(("final hidden + norm", 2 * t * d * BF16, "input to the fused loss"))
    return plan

"""The Instella decoder in one file (nanoGPT style), over packed rows with document masking.

A microbatch is one flattened row of `T` tokens holding several documents; `cu_seqlens` marks their boundaries and
attention never crosses them (kernels/attention.py). Every op has a plain-torch reference in kernels/, with a Triton
or flash-attn path picked automatically on GPU.

Architecture (Instella-3B = OLMo-2 style): token embedding -> N x [x + Attn(RMSNorm(x)), x + SwiGLU(RMSNorm(x))]
-> RMSNorm -> untied LM head. Attention applies RMSNorm to the whole q and k projections (QK-norm) before RoPE.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from midtrain.kernels.attention import varlen_attention
from midtrain.kernels.loss import linear_cross_entropy
from midtrain.kernels.norm import rms_norm
from midtrain.kernels.rope import apply_rope, rope_cos_sin
from midtrain.kernels.swiglu import swiglu
from midtrain.kernels.ulysses import ulysses_attention
from trainer.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.attn_backend = cfg.n_heads, cfg.head_dim, attn_backend
        self.sp_group = None  # Ulysses sequence-parallel group (trainer.sp.enable_ulysses); None: whole row here
        self.wqkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen: int) -> torch.Tensor:
        T, d = x.shape
        q, k, v = self.wqkv(x).split(d, dim=-1)
        q = apply_rope(self.q_norm(q).view(T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_norm(k).view(T, self.n_heads, self.head_dim), cos, sin)
        v = v.view(T, self.n_heads, self.head_dim)
        if self.sp_group is not None:  # x is this rank's slice of the row; cu_seqlens are the full row's
            o = ulysses_attention(q, k, v, cu_seqlens, max_seqlen, group=self.sp_group, backend=self.attn_backend)
        else:
            o = varlen_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, backend=self.attn_backend)
        return self.wo(o.reshape(T, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w_gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=False)
        self.w_down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(swiglu(gate, up))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, attn_backend)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.act_ckpt = False  # recompute this block in backward (trainer.parallel.apply_activation_checkpointing)

    def _forward(self, x, cos, sin, cu_seqlens, max_seqlen: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cu_seqlens, max_seqlen)
        return x + self.mlp(self.mlp_norm(x))

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen: int) -> torch.Tensor:
        if self.act_ckpt and torch.is_grad_enabled():
            return checkpoint(self._forward, x, cos, sin, cu_seqlens, max_seqlen, use_reentrant=False)
        return self._forward(x, cos, sin, cu_seqlens, max_seqlen)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, attn_backend) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Norm gains 1; matrices by `cfg.init`:

        - "normal" (ours): N(0, init_std); residual output projections scaled by 1/sqrt(2 n_layers) (GPT-2);
        - "mitchell" (OLMo / Instella `init_fn: mitchell`): normal truncated at ±3σ with σ = 1/sqrt(fan_in) for the
          embedding, the q/k/v and gate/up projections and the LM head; 1/sqrt(2 · d_model · (l+1)) for the
          attention output and 1/sqrt(2 · ffn_dim · (l+1)) for the MLP output of layer l (0-based).
        """
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif self.cfg.init == "mitchell":
                std = self.mitchell_std(name)
                nn.init.trunc_normal_(p, mean=0.0, std=std, a=-3 * std, b=3 * std)
            elif name.endswith(("wo.weight", "w_down.weight")):
                p.normal_(0.0, self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers))
            else:
                p.normal_(0.0, self.cfg.init_std)

    def mitchell_std(self, name: str) -> float:
        """σ of the mitchell init for parameter `name` (before truncation at ±3σ)."""
        d, f = self.cfg.d_model, self.cfg.ffn_dim
        if name.startswith("blocks."):
            layer = int(name.split(".")[1])
            if name.endswith("wo.weight"):
                return 1.0 / math.sqrt(2 * d * (layer + 1))
            if name.endswith("w_down.weight"):
                return 1.0 / math.sqrt(2 * f * (layer + 1))
        return 1.0 / math.sqrt(d)  # embedding, wqkv, w_gate_up, lm_head: all read d_model-wide inputs

    def hidden_states(self, input_ids, positions, cu_seqlens, max_seqlen: int) -> torch.Tensor:
        x = self.embed(input_ids)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        for block in self.blocks:
            x = block(x, cos, sin, cu_seqlens, max_seqlen)
        return self.norm(x)

    def forward(self, input_ids, positions, cu_seqlens, max_seqlen: int, labels=None) -> torch.Tensor:
        """Logits [T, V] without labels; with labels [T] (-100 = ignored) the *sum* of token losses, so that the
        trainer can divide by the number of valid tokens of the whole (accumulated, all-rank) step."""
        h = self.hidden_states(input_ids, positions, cu_seqlens, max_seqlen)
        if labels is None:
            return self.lm_head(h)
        return linear_cross_entropy(h, self.lm_head.weight, labels, reduction="sum")

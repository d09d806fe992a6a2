"""Rotary position embedding for packed rows.

Interface: `apply_rope(x, cos, sin)` with x [tokens, heads, head_dim] and cos/sin [tokens, head_dim // 2] built once
per batch by `rope_cos_sin(positions, head_dim, theta)`. Positions are per token because they restart at every
document boundary in a packed row (`positions_from_cu_seqlens`). The rotation is the GPT-NeoX / Llama / OLMo
"rotate-half" layout: dims [0, D/2) pair with [D/2, D).
"""
from __future__ import annotations

import torch

from ._backend import compute_dtype, use_triton


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Position of each token within its document: [0..len0), [0..len1), ... as int64 [total]."""
    cu = cu_seqlens.long()
    total = int(cu[-1]) if total is None else total
    idx = torch.arange(total, device=cu.device)
    doc = torch.searchsorted(cu[1:], idx, right=True)  # document index of each token
    return idx - cu[doc]


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [tokens, head_dim // 2] for the given per-token positions.

    Angles are computed in fp64: at position 262,143 an fp32 angle is off by up to ~0.016 rad (half an ulp of 2^18),
    which would blur the long-context positions the 256K stage trains on. The tables are small, so this is cheap.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE head_dim must be even, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    angles = positions.double()[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D]; cos/sin [T, D/2]. out1 = x1*cos - x2*sin, out2 = x2*cos + x1*sin (in fp32, cast back)."""
    half = x.shape[-1] // 2
    acc = compute_dtype(x.dtype)
    xf = x.to(acc)
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos.to(acc)[:, None, :], sin.to(acc)[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Rotate q or k ([tokens, heads, head_dim]) by per-token angles; Triton on CUDA, the reference elsewhere."""
    if x.dim() != 3:
        raise ValueError(f"apply_rope expects x [tokens, heads, head_dim], got shape {tuple(x.shape)}")
    expected = (x.shape[0], x.shape[2] // 2)
    if tuple(cos.shape) != expected or tuple(sin.shape) != expected:
        raise ValueError(f"cos/sin must be {expected} for x {tuple(x.shape)}, "
                         f"got {tuple(cos.shape)}/{tuple(sin.shape)}")
    if use_triton(x, backend):
        from .triton_rope import triton_apply_rope

        return triton_apply_rope(x, cos, sin)
    return apply_rope_reference(x, cos, sin)

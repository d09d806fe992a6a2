"""RMSNorm (also used for QK-norm): y = x / sqrt(mean(x^2) + eps) * weight over the last dimension.

Statistics are computed in fp32 whatever the input dtype, and the result is cast back to x.dtype, matching what the
Triton kernel does so the two agree to the output dtype's rounding.
"""
from __future__ import annotations

import torch

from ._backend import compute_dtype, use_triton


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """Plain-torch RMSNorm over the last dim. weight: [x.shape[-1]] or None (no scale)."""
    acc = compute_dtype(x.dtype)
    xf = x.to(acc)
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    return y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """RMSNorm over the last dim; Triton on CUDA, the reference elsewhere.

    For QK-norm pass q/k as [tokens, heads, head_dim] with weight [head_dim] (per-head norm), or flatten to
    [tokens, heads*head_dim] with weight [heads*head_dim] (OLMo-style whole-projection norm).
    """
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm weight shape {tuple(weight.shape)} != last dim of x {tuple(x.shape[-1:])}")
    if use_triton(x, backend):
        from .triton_norm import triton_rms_norm

        return triton_rms_norm(x, weight, eps)
    return rms_norm_reference(x, weight, eps)

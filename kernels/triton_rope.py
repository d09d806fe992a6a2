"""Triton RoPE (rotate-half layout) for x [tokens, heads, head_dim] with per-token cos/sin [tokens, head_dim/2].

One program per token rotates all heads. The backward is the inverse rotation (same kernel with sin negated);
cos/sin get no gradient (they are functions of integer positions). Reference: kernels.rope.apply_rope_reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope(
    X, COS, SIN, Y, stride_xt, stride_xh, stride_yt, stride_yh, stride_ct, n_heads, half,
    SIGN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    dmask = d < half
    mask = (h < n_heads) & dmask
    c = tl.load(COS + t * stride_ct + d, mask=dmask, other=0.0).to(tl.float32)
    s = tl.load(SIN + t * stride_ct + d, mask=dmask, other=0.0).to(tl.float32) * SIGN
    xp = X + t * stride_xt + h * stride_xh + d
    x1 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(xp + half, mask=mask, other=0.0).to(tl.float32)
    yp = Y + t * stride_yt + h * stride_yh + d
    tl.store(yp, (x1 * c - x2 * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(yp + half, (x2 * c + x1 * s).to(Y.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: int) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    n_tokens, n_heads, head_dim = x.shape
    y = torch.empty((n_tokens, n_heads, head_dim), dtype=x.dtype, device=x.device)
    half = head_dim // 2
    _rope[(n_tokens,)](x, cos, sin, y, x.stride(0), x.stride(1), y.stride(0), y.stride(1), cos.stride(0),
                       n_heads, half, SIGN=sign, BLOCK_H=triton.next_power_of_2(n_heads),
                       BLOCK_D=triton.next_power_of_2(half))
    return y


class _TritonRoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, 1)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _launch(dy, cos, sin, -1), None, None


def triton_apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _TritonRoPE.apply(x, cos, sin)

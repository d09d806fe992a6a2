"""Triton per-chunk cross-entropy step for kernels.loss: per-token loss from fp32 logits [C, V] and, in place,
d(loss)/d(logits) = (softmax - onehot(label)) * scale (0 for ignored tokens). One program per token row; the
vocabulary is streamed in blocks with an online max/sum, so a row is never held whole in registers.
Reference: kernels.loss.ce_chunk_torch."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_V = 4096


@triton.jit
def _ce_rows(
    LOGITS, LABELS, LOSS, SCALE, stride_l, n_vocab, ignore_index,
    NEED_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64 offsets: a chunk may exceed 2^31 logits
    base = LOGITS + row * stride_l
    label = tl.load(LABELS + row)
    valid = label != ignore_index
    # pass 1: online logsumexp over vocab blocks
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, n_vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < n_vocab, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # lanes that have only seen -inf (the masked vocab tail) keep sum 0; shifting them by 0 avoids inf - inf
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
    m_row = tl.max(m, axis=0)
    s_row = tl.sum(s * tl.exp(m - m_row), axis=0)
    lse = m_row + tl.log(s_row)
    safe = tl.where(valid, label, 0)
    target = tl.load(base + safe).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - target, 0.0))
    if NEED_GRAD:
        scale = tl.where(valid, tl.load(SCALE).to(tl.float32), 0.0)
        for start in range(0, n_vocab, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            cmask = cols < n_vocab
            x = tl.load(base + cols, mask=cmask, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(cols == safe, 1.0, 0.0)
            tl.store(base + cols, g * scale, mask=cmask)


def ce_chunk_triton(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, scale: torch.Tensor, need_grad: bool
) -> torch.Tensor:
    """Same contract as kernels.loss.ce_chunk_torch (logits fp32 contiguous [C, V], overwritten if need_grad)."""
    if not logits.is_contiguous():
        raise ValueError("ce_chunk_triton needs contiguous logits")
    n_rows, n_vocab = logits.shape
    loss = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    scale_t = scale.to(device=logits.device, dtype=torch.float32).reshape(1)
    _ce_rows[(n_rows,)](logits, labels.contiguous(), loss, scale_t, logits.stride(0), n_vocab, ignore_index,
                        NEED_GRAD=need_grad, BLOCK_V=min(BLOCK_V, triton.next_power_of_2(n_vocab)))
    return loss.sum().to(logits.dtype)

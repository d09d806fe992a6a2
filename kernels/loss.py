"""Linear + cross-entropy without materialising the [tokens, vocab] logits.

A 256K-token row against a 50,304-word vocabulary is 13.2G logits (53 GB in fp32), so the LM head and the loss are
fused: tokens are processed in chunks of `chunk_size`; for each chunk the logits are formed, reduced to a per-token
loss, turned in place into d(loss)/d(logits) = (softmax - onehot) * scale, and immediately contracted into the
gradients of `hidden` and `weight`. The gradients are therefore computed during the forward pass (3 matmuls in
all, as in the unfused path) and the backward only scales them by the incoming gradient. Peak extra memory is
one chunk of logits plus the two gradient buffers, independent of the number of tokens.

The per-chunk softmax/loss step is a Triton kernel on CUDA (kernels/triton_loss.py) and plain torch elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import compute_dtype, use_triton

REDUCTIONS = ("mean", "sum")
DEFAULT_CHUNK_SIZE = 2048  # 2048 x 50,304 fp32 logits = 412 MB per chunk


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Naive path: full [N, V] logits, upcast to fp32, then F.cross_entropy."""
    logits = (hidden @ weight.T).to(compute_dtype(hidden.dtype))
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)


def ce_chunk_torch(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, scale: torch.Tensor, need_grad: bool
) -> torch.Tensor:
    """Sum of token losses of one chunk of fp32 logits [C, V]; if need_grad, logits is overwritten in place with
    (softmax - onehot) * scale for valid tokens and 0 for ignored ones."""
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(1, safe[:, None]).squeeze(1)
    loss_sum = torch.where(valid, lse - target, torch.zeros_like(lse)).sum()
    if need_grad:
        logits.sub_(lse[:, None]).exp_()
        logits.scatter_add_(1, safe[:, None], -valid.to(logits.dtype)[:, None])
        logits.mul_((valid.to(logits.dtype) * scale)[:, None])
    return loss_sum


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, reduction, chunk_size, triton):
        n_tokens = hidden.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_grad = need_h or need_w
        n_valid = (labels != ignore_index).sum()
        # mean follows F.cross_entropy: divide by the number of non-ignored tokens (NaN when there are none)
        acc = compute_dtype(hidden.dtype)
        scale = (1.0 / n_valid.to(acc)) if reduction == "mean" else torch.ones((), dtype=acc, device=hidden.device)
        if triton:
            from .triton_loss import ce_chunk_triton as ce_chunk
        else:
            ce_chunk = ce_chunk_torch

        grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, n_tokens, chunk_size):
            h = hidden[start : start + chunk_size]
            logits = (h @ weight.T).to(acc)  # same rounding as the reference's matmul-then-upcast
            total += ce_chunk(logits, labels[start : start + chunk_size], ignore_index, scale, need_grad)
            if not need_grad:
                continue
            g = logits.to(hidden.dtype)
            if need_h:
                grad_h[start : start + chunk_size] = g @ weight
            if need_w:
                if g.dtype == acc:
                    grad_w.addmm_(g.T, h)
                else:  # low-precision matmul, fp32 accumulation across chunks
                    grad_w += (g.T @ h).to(acc)
            del logits, g
        loss = total * scale if reduction == "mean" else total
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if need_w else None)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable  # gradients were formed in forward
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = grad_w * grad_out.to(grad_w.dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    backend: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `labels` without materialising the logits.

    hidden [N, d], weight [V, d] (the LM head / tied embedding), labels [N] int64 with `ignore_index` for masked
    tokens. reduction "mean" divides by the number of non-ignored tokens (as F.cross_entropy); use "sum" and divide
    by a global token count when shards may contain no valid labels (sequence parallelism, SFT masking).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, d] and weight [V, d], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != number of tokens {hidden.shape[0]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    triton = use_triton(hidden, backend)
    return _LinearCrossEntropy.apply(hidden, weight, labels.long(), ignore_index, reduction, chunk_size, triton)

"""DeepSpeed-Ulysses sequence parallelism for packed rows.

Each of the P ranks of a sequence-parallel group holds a contiguous 1/P slice of the row's tokens. Around attention
an all-to-all turns the sequence-sharded q/k/v [T/P, H, D] into head-sharded [T, H/P, D] tensors (every rank now
sees the whole row for H/P heads), attention runs with the document boundaries (cu_seqlens) of the FULL row, and a
second all-to-all turns the output back into [T/P, H, D]. Everything outside attention (norms, MLP, LM head + loss)
is token-local and runs on the slice as is; RoPE needs the slice of the full row's positions (`local_positions`).

Both re-shardings are autograd Functions whose backward is the inverse all-to-all. Requirements: T and H divisible
by P. Works with any backend torch.distributed supports all_to_all_single on (NCCL on GPU, gloo on CPU).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .attention import varlen_attention
from .rope import positions_from_cu_seqlens


def _world(group) -> int:
    return dist.get_world_size(group)


def _seq_to_head(x: torch.Tensor, group) -> torch.Tensor:
    p = _world(group)
    t_local, n_heads, head_dim = x.shape
    if n_heads % p:
        raise ValueError(f"Ulysses needs the number of heads ({n_heads}) divisible by the SP degree ({p})")
    # [T/P, H, D] -> [P, T/P, H/P, D]: block j (heads of rank j) is sent to rank j
    send = x.reshape(t_local, p, n_heads // p, head_dim).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # block i came from rank i, i.e. holds tokens [i*T/P, (i+1)*T/P): concatenating restores row order
    return recv.reshape(p * t_local, n_heads // p, head_dim)


def _head_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    p = _world(group)
    total, heads_local, head_dim = x.shape
    if total % p:
        raise ValueError(f"Ulysses needs the row length ({total}) divisible by the SP degree ({p})")
    # [T, H/P, D] -> [P, T/P, H/P, D]: token block j is sent back to its owner rank j
    send = x.reshape(p, total // p, heads_local, head_dim).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # block i holds head group i for our tokens -> [T/P, P * H/P, D]
    return recv.transpose(0, 1).reshape(total // p, p * heads_local, head_dim)


class _SeqToHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _seq_to_head(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _head_to_seq(grad, ctx.group), None


class _HeadToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _head_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_head(grad, ctx.group), None


def seq_to_head(x: torch.Tensor, group=None) -> torch.Tensor:
    """[T/P, H, D] sequence-sharded -> [T, H/P, D] head-sharded (autograd-aware all-to-all)."""
    return _SeqToHead.apply(x, group)


def head_to_seq(x: torch.Tensor, group=None) -> torch.Tensor:
    """[T, H/P, D] head-sharded -> [T/P, H, D] sequence-sharded (autograd-aware all-to-all)."""
    return _HeadToSeq.apply(x, group)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = True,
    group=None,
    backend: str = "auto",
) -> torch.Tensor:
    """Document-masked attention over a sequence-sharded row.

    q/k/v: this rank's [T/P, H, D] slice; cu_seqlens/max_seqlen: those of the FULL row (documents may straddle
    rank boundaries). Returns this rank's [T/P, H, D] slice of the attention output. `group=None` means the
    default (world) group; without an initialised process group this is plain `varlen_attention`.
    """
    if not dist.is_initialized() or _world(group) == 1:  # no SP group: plain attention
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, causal=causal, backend=backend)
    qh, kh, vh = (seq_to_head(t, group) for t in (q, k, v))
    if int(cu_seqlens[-1]) != qh.shape[0]:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but the gathered row has {qh.shape[0]} tokens; "
                         "pass the full row's boundaries")
    out = varlen_attention(qh, kh, vh, cu_seqlens, max_seqlen, causal=causal, backend=backend)
    return head_to_seq(out, group)


def shard_tokens(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of a row along dim 0 (the row length must divide evenly)."""
    if x.shape[0] % world:
        raise ValueError(f"row length {x.shape[0]} is not divisible by the SP degree {world}")
    n = x.shape[0] // world
    return x[rank * n : (rank + 1) * n]


def local_positions(cu_seqlens: torch.Tensor, total: int, rank: int, world: int) -> torch.Tensor:
    """RoPE positions of this rank's tokens: the full row's per-document positions, sliced."""
    return shard_tokens(positions_from_cu_seqlens(cu_seqlens, total), rank, world)

"""Ulysses sequence parallelism in the trainer (`cli.py train --sp K`).

Ranks are grouped in consecutive blocks of K (one node holds whole groups when K divides the GPUs per node). All
ranks of a group read the same packed rows (the data loader sees world/K data-parallel ranks); each keeps a
contiguous 1/K of every row's tokens, labels and positions, while cu_seqlens stay those of the full row so that
attention (kernels/ulysses.py) masks documents that cross rank boundaries correctly. FSDP still shards over all
ranks; the loss normalisation (valid targets summed over all ranks) counts every token exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class SPContext:
    size: int  # K: ranks sharing one row
    rank: int  # this rank's index inside its group
    group: object | None  # torch.distributed process group of the K ranks (None when K == 1)

    def data_rank(self, rank: int) -> int:
        return rank // self.size

    def data_world(self, world: int) -> int:
        return world // self.size


def init_sequence_parallel(sp: int, rank: int, world: int) -> SPContext:
    """Create the SP groups (a collective: every rank calls it with the same `sp`)."""
    if sp < 1 or world % sp:
        raise ValueError(f"--sp {sp} must be >= 1 and divide the number of processes ({world})")
    if sp == 1:
        return SPContext(1, 0, None)
    mine = None
    for start in range(0, world, sp):  # new_group must be called by all ranks for every group
        group = dist.new_group(list(range(start, start + sp)))
        if start <= rank < start + sp:
            mine = group
    return SPContext(sp, rank % sp, mine)


def enable_ulysses(model: nn.Module, ctx: SPContext) -> None:
    """Make every attention layer of the model run Ulysses attention over `ctx.group`."""
    if ctx.size == 1:
        return
    n_heads = getattr(getattr(model, "cfg", None), "n_heads", None)
    if n_heads is not None and n_heads % ctx.size:
        raise ValueError(f"--sp {ctx.size} must divide the number of attention heads ({n_heads})")
    for module in model.modules():
        if hasattr(module, "sp_group"):
            module.sp_group = ctx.group


def shard_batch(batch, ctx: SPContext):
    """This rank's slice of a Batch (trainer.data.Batch): tokens, labels and positions; cu_seqlens stay full."""
    if ctx.size == 1:
        return batch
    total = batch.input_ids.shape[0]
    if total % ctx.size:
        raise ValueError(f"row of {total} tokens is not divisible by --sp {ctx.size}; use a seq_len multiple of it")
    n = total // ctx.size
    sl = slice(ctx.rank * n, (ctx.rank + 1) * n)
    return replace(batch, input_ids=batch.input_ids[sl], positions=batch.positions[sl], labels=batch.labels[sl])


def sp_attn_cost_share(ctx: SPContext) -> float:
    """Every rank of a group reports the same row's Σ len²; count it once when summing over all ranks."""
    return 1.0 / ctx.size


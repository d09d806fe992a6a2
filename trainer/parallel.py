"""Distributed plumbing as small independent pieces (torchtitan style): process group, device mesh, FSDP2 / HSDP,
mixed precision, activation checkpointing, torch.compile.

One process without torchrun still gets a (world-size-1, gloo) process group, so the trainer and its checkpoints
follow a single code path: FSDP2 DTensor parameters, torch.distributed.checkpoint, the same collectives.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistEnv:
    """Join the torchrun process group (nccl on GPU, gloo on CPU), or make a private one-process group."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    device_id=device if backend == "nccl" else None)
        else:
            dist.init_process_group(backend, rank=0, world_size=1, store=dist.HashStore())
    return DistEnv(rank, world, local_rank, local_world, device)


def build_mesh(env: DistEnv, replicate: int | None = None) -> DeviceMesh:
    """1-D shard mesh, or for HSDP a 2-D (replicate, shard) mesh: shard inside a node, replicate across nodes."""
    if replicate is None:
        replicate = max(1, env.world // env.local_world)
    if env.world % replicate:
        raise ValueError(f"world size {env.world} is not divisible by replicate={replicate}")
    if replicate == 1:
        return init_device_mesh(env.device.type, (env.world,), mesh_dim_names=("shard",))
    return init_device_mesh(env.device.type, (replicate, env.world // replicate), mesh_dim_names=("replicate", "shard"))


def mixed_precision(dtype: str) -> MixedPrecisionPolicy:
    """bf16: compute and all-gather in bf16, keep fp32 master weights, reduce gradients in fp32."""
    if dtype == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_activation_checkpointing(model: nn.Module) -> None:
    for block in model.blocks:
        block.act_ckpt = True


def apply_compile(model: nn.Module) -> None:
    """Compile each block separately (same graph for all of them, so it compiles once)."""
    for block in model.blocks:
        block.compile()


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, mp: MixedPrecisionPolicy) -> nn.Module:
    """fully_shard every block, then the root (embedding, final norm, LM head)."""
    n = len(model.blocks)
    for i, block in enumerate(model.blocks):
        # the last block's parameters are needed again right away by the root's backward: keep them gathered
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < n - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


@torch.no_grad()
def clip_grad_norm(parameters, max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm`; return the norm before clipping.

    torch's fp32 norm kernels on CPU lose ~1e-4 relative on a 50K-vocab LM head, and differently for different
    shardings (FSDP vs HSDP gave different norms for identical gradients), so each local shard is reduced in fp64
    and the squares are summed over the mesh's "shard" dimension only (replicas hold identical shards).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    sq = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in local]).pow(2).sum()
    if isinstance(grads[0], DTensor):
        mesh = grads[0].device_mesh
        dist.all_reduce(sq, group=mesh.get_group("shard") if mesh.ndim > 1 else mesh.get_group())
    total = sq.sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(local, coef.to(local[0].dtype))
    return float(total)


def all_reduce_sum(x: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64, device=device).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

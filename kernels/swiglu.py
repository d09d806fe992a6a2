"""SwiGLU activation: silu(gate) * up, computed in fp32 and cast back to the input dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import compute_dtype, use_triton


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    acc = compute_dtype(gate.dtype)
    return (F.silu(gate.to(acc)) * up.to(acc)).to(gate.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """silu(gate) * up elementwise; Triton on CUDA (one fused pass, no silu intermediate), the reference elsewhere."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu gate {tuple(gate.shape)} and up {tuple(up.shape)} must have the same shape")
    if use_triton(gate, backend):
        from .triton_swiglu import triton_swiglu

        return triton_swiglu(gate, up)
    return swiglu_reference(gate, up)

"""Backend selection shared by the kernel dispatchers.

Every public op has a plain-torch reference; the Triton kernel is used only when the tensor lives on a CUDA device
and triton imports. `backend="auto"` makes that choice per call, "torch" forces the reference, "triton" forces the
kernel (also on CPU under TRITON_INTERPRET=1, which is how the tests exercise it without a GPU).
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install without a driver
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor, backend: str) -> bool:
    """Decide whether this call runs the Triton kernel."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' requested but triton is not importable")
        if x.device.type != "cuda" and not interpreting():
            raise RuntimeError("backend='triton' on a CPU tensor needs TRITON_INTERPRET=1")
        return True
    return x.device.type == "cuda" and triton_available()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """References compute in fp32 (fp64 stays fp64, so gradcheck and exact comparisons work)."""
    return torch.promote_types(dtype, torch.float32)

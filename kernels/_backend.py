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
# what the Triton kernels compute exactly: they accumulate in fp32, so an fp64 tensor would silently lose precision
# (seen on an H200: fp64 gradcheck failed under `auto`) and stays on the reference
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    return triton_for(x.device.type, x.dtype, backend)


def triton_for(device_type: str, dtype: torch.dtype, backend: str) -> bool:
    """`use_triton` on a device type and dtype: `auto` takes Triton for CUDA tensors of TRITON_DTYPES only."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' requested but triton is not importable")
        if device_type != "cuda" and not interpreting():
            raise RuntimeError("backend='triton' on a CPU tensor needs TRITON_INTERPRET=1")
        if dtype not in TRITON_DTYPES:
            raise ValueError(f"backend='triton' computes in fp32: {dtype} is not supported (use 'torch' or 'auto')")
        return True
    return device_type == "cuda" and dtype in TRITON_DTYPES and triton_available()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """References compute in fp32 (fp64 stays fp64, so gradcheck and exact comparisons work)."""
    return torch.promote_types(dtype, torch.float32)

"""pytest plugin: run the CPU-written kernel tests with their tensors on the GPU (bench/gpu_check.sh).

    TRITON_INTERPRET=0 python -m pytest -p bench.gpu_pytest_plugin tests/test_kernels_triton.py ...

The tests build their inputs with factory calls (torch.randn, torch.tensor, a `torch.Generator()`) and no device,
so making CUDA the default device -- and the generators they create CUDA generators -- moves every input to the GPU,
where the dispatchers pick the compiled Triton kernels instead of the interpreter. Assertions that are about the
CPU itself (e.g. "auto picks sdpa_loop on CPU") are expected to fail under this plugin; gpu_check.sh also runs the
same files without it (CPU, interpreter) so the two runs can be told apart. Without a GPU the plugin does nothing.
"""
from __future__ import annotations

import os

import torch

_CPU_GENERATOR = torch.Generator


class _DefaultDeviceGenerator:
    """`torch.Generator()` with no device -> a generator on the default device (CUDA here)."""

    def __new__(cls, device=None):
        return _CPU_GENERATOR(device if device is not None else torch.get_default_device())


def pytest_configure(config) -> None:
    if not torch.cuda.is_available():
        print("gpu_pytest_plugin: no CUDA device; tests run on CPU unchanged")
        return
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("gpu_pytest_plugin: set TRITON_INTERPRET=0 so the GPU runs compiled Triton kernels")
    torch.set_default_device("cuda")
    torch.Generator = _DefaultDeviceGenerator


def pytest_report_header(config) -> str:
    if torch.cuda.is_available():
        return (f"gpu_pytest_plugin: default device cuda ({torch.cuda.get_device_name()}), "
                f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}")
    return "gpu_pytest_plugin: no CUDA device (inactive)"

"""Triton kernels (kernels/triton_*.py) against the plain-torch references, run on CPU by Triton's interpreter.

TRITON_INTERPRET must be set before the kernels are decorated, i.e. before kernels.triton_* is imported; nothing
imports those modules on a CPU-only run before this file does (the dispatchers import them lazily on CUDA only).
Forward and backward are compared by relative error ||got - ref|| / ||ref|| with a bound per dtype. The interpreter
converts fp32 -> bf16 by truncation (measured: 100% of outputs equal the truncated fp32 result), so bf16 errors
sit near one bf16 ulp (~4e-3) here; compiled GPU kernels round to nearest.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton not installed (pip install triton; it runs on CPU via the interpreter)")

from midtrain.kernels.loss import linear_cross_entropy, linear_cross_entropy_reference  # noqa: E402
from midtrain.kernels.norm import rms_norm, rms_norm_reference  # noqa: E402
from midtrain.kernels.rope import apply_rope, apply_rope_reference, rope_cos_sin  # noqa: E402
from midtrain.kernels.swiglu import swiglu, swiglu_reference  # noqa: E402

# fp32: summation order only; fp16/bf16: about one rounding of the output (2^-11 / 2^-8 relative), with headroom
BOUNDS = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = list(BOUNDS)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _compare(fn_triton, fn_ref, inputs, dtype):
    """Forward and backward (with a random upstream gradient) of both implementations; asserts the bound."""
    a = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    b = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out_a, out_b = fn_triton(*a), fn_ref(*b)
    assert out_a.dtype == out_b.dtype == dtype
    errors = {"fwd": rel_err(out_a, out_b)}
    upstream = torch.randn_like(out_b, dtype=torch.float32).to(dtype)
    out_a.backward(upstream), out_b.backward(upstream)
    for i, (ta, tb) in enumerate(zip(a, b)):
        if tb.grad is not None:
            errors[f"grad{i}"] = rel_err(ta.grad, tb.grad)
    print(f"{dtype}: {errors}")  # shown with pytest -s; the figures in the report come from here
    assert all(e <= BOUNDS[dtype] for e in errors.values()), errors


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_kernel(dtype):
    torch.manual_seed(0)
    x, w = torch.randn(19, 96).to(dtype), (1 + 0.1 * torch.randn(96)).to(dtype)  # 96: masked tail of a 128 block
    _compare(lambda x, w: rms_norm(x, w, 1e-6, backend="triton"), lambda x, w: rms_norm_reference(x, w, 1e-6),
             [x, w], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_kernel_per_head_and_unweighted(dtype):
    torch.manual_seed(1)
    q, w = torch.randn(7, 4, 32).to(dtype), torch.randn(32).to(dtype)  # per-head QK-norm over head_dim
    _compare(lambda q, w: rms_norm(q, w, 1e-5, backend="triton"), lambda q, w: rms_norm_reference(q, w, 1e-5),
             [q, w], dtype)
    _compare(lambda q: rms_norm(q, None, backend="triton"), lambda q: rms_norm_reference(q, None), [q], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_kernel(dtype):
    torch.manual_seed(2)
    qkv = torch.randn(11, 3, 5, 24).to(dtype)  # rope is applied to a strided view of a fused qkv projection
    cos, sin = rope_cos_sin(torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2]) * 1000, 24, theta=10000.0)
    _compare(lambda x: apply_rope(x[:, 0], cos, sin, backend="triton"),
             lambda x: apply_rope_reference(x[:, 0], cos, sin), [qkv], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_kernel(dtype):
    torch.manual_seed(3)
    g, u = (torch.randn(3, 1500) * 3).to(dtype), torch.randn(3, 1500).to(dtype)  # 4500: ragged last block
    _compare(lambda g, u: swiglu(g, u, backend="triton"), swiglu_reference, [g, u], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_kernel(dtype):
    torch.manual_seed(4)
    h, w = torch.randn(21, 16).to(dtype), (torch.randn(5000, 16) / 4).to(dtype)  # 5000 > one 4096 vocab block
    y = torch.randint(0, 5000, (21,))
    y[::4] = -100
    y[1] = 4999  # last vocab column, in the ragged block
    for reduction in ("mean", "sum"):
        a, b = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss = linear_cross_entropy(a, b, y, reduction=reduction, chunk_size=8, backend="triton")
        loss.backward()
        c, d = h.clone().requires_grad_(), w.clone().requires_grad_()
        ref = linear_cross_entropy_reference(c, d, y, reduction=reduction)
        ref.backward()
        errors = {"loss": rel_err(loss, ref), "dh": rel_err(a.grad, c.grad), "dw": rel_err(b.grad, d.grad)}
        print(f"{dtype} {reduction}: {errors}")
        assert errors["loss"] <= 1e-6, errors  # loss math is fp32 in both paths
        assert errors["dh"] <= BOUNDS[dtype] and errors["dw"] <= BOUNDS[dtype], errors

"""Triton RMSNorm forward/backward (one program per row, fp32 statistics).

Reference: kernels.norm.rms_norm_reference."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_fwd(X, W, Y, RSTD, stride_x, stride_y, n_cols, eps, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64 offsets for very long rows
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    y = x * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_bwd(
    DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, n_rows, n_cols,
    HAS_W: tl.constexpr, BLOCK: tl.constexpr,
):
    # each program walks rows pid, pid + G, ... and keeps its share of dW in registers
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK], 1.0, tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for row in range(pid, n_rows, n_prog):
        row = row + tl.zeros([], dtype=tl.int64)  # int64 offsets (works for the interpreter's python int too)
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        wdy = w * dy
        c = tl.sum(xhat * wdy, axis=0) / n_cols
        dx = (wdy - xhat * c) * rstd
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    if HAS_W:
        tl.store(DW_PART + pid * n_cols + cols, dw, mask=mask)


class _TritonRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        n_rows, n_cols = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(n_cols)
        has_w = weight is not None
        _rms_fwd[(n_rows,)](x2, weight if has_w else x2, y, rstd, x2.stride(0), y.stride(0), n_cols, eps,
                            HAS_W=has_w, BLOCK=block)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape, ctx.has_w = shape, has_w
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = x2.shape
        dy2 = dy.reshape(-1, n_cols).contiguous()
        dx = torch.empty_like(x2)
        n_prog = min(n_rows, 4 * _sm_count(x2.device))
        dw_part = torch.empty((n_prog, n_cols), dtype=torch.float32, device=x2.device) if ctx.has_w else dx
        _rms_bwd[(n_prog,)](dy2, x2, weight if ctx.has_w else x2, rstd, dx, dw_part, dy2.stride(0), x2.stride(0),
                            dx.stride(0), n_rows, n_cols, HAS_W=ctx.has_w, BLOCK=triton.next_power_of_2(n_cols))
        dw = dw_part.sum(0).to(weight.dtype) if ctx.has_w else None
        return dx.view(ctx.shape), dw, None


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a few programs are enough to exercise the partial-dW reduction


def triton_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return _TritonRMSNorm.apply(x, weight, eps)

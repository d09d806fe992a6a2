"""kernels/attention.py: every CPU-runnable backend against the dense block-diagonal reference."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from midtrain.kernels.attention import (
    block_diagonal_mask,
    resolve_backend,
    varlen_attention,
)


def _qkv(total: int, heads: int = 2, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(total, heads, dim, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_loop_matches_dense_reference_forward_and_backward(causal):
    lens = [5, 1, 9, 3]
    cu = _cu(lens)
    outs, grads = [], []
    for backend in ("sdpa_loop", "dense"):
        q, k, v = _qkv(sum(lens))
        out = varlen_attention(q, k, v, cu, max(lens), causal=causal, backend=backend)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in (q, k, v)])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_single_document_equals_plain_causal_attention():
    q, k, v = _qkv(12)
    out = varlen_attention(q, k, v, _cu([12]), 12)
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
    torch.testing.assert_close(out, ref.transpose(0, 1))


def test_documents_do_not_see_each_other():
    """Changing document 0 must not change the output of document 1, and vice versa."""
    lens = [6, 7]
    q, k, v = (t.detach() for t in _qkv(13))
    base = varlen_attention(q, k, v, _cu(lens), 7)
    k2, v2 = k.clone(), v.clone()
    k2[:6] += 5.0
    v2[:6] -= 3.0
    changed = varlen_attention(q, k2, v2, _cu(lens), 7)
    torch.testing.assert_close(changed[6:], base[6:])
    assert not torch.allclose(changed[:6], base[:6])
    # without document masking the second document would have been affected
    full = varlen_attention(q, k2, v2, _cu([13]), 13)
    assert not torch.allclose(full[6:], base[6:])


def test_block_diagonal_mask_shape():
    m = block_diagonal_mask(_cu([2, 3]), 5)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]],
                            dtype=torch.bool)
    assert torch.equal(m, expected)


def test_auto_backend_on_cpu_and_bad_input():
    q, k, v = _qkv(4)
    assert resolve_backend(q) == "sdpa_loop"
    # on CUDA, fp32 goes to flex attention, except heads smaller than flex accepts (an H200 run refused head_dim 8)
    fake = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32, shape=(4, 2, 8))
    assert resolve_backend(fake) == "sdpa_loop"
    assert resolve_backend(SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32, shape=(4, 2, 64))) == "flex"
    with pytest.raises(ValueError, match="backend"):
        varlen_attention(q, k, v, _cu([4]), 4, backend="nope")
    with pytest.raises(ValueError, match="tokens, heads, head_dim"):
        varlen_attention(q[:, 0], k[:, 0], v[:, 0], _cu([4]), 4)


def test_flex_backend_forward_matches_reference():
    """flex_attention with the document block mask (the GPU fallback); CPU has its forward only in torch 2.13."""
    import warnings

    lens = [10, 15, 15]
    q, k, v = (t.detach().float() for t in _qkv(sum(lens)))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": expected for the CPU reference
        out = varlen_attention(q, k, v, _cu(lens), 15, backend="flex")
    torch.testing.assert_close(out, varlen_attention(q, k, v, _cu(lens), 15, backend="dense"), rtol=1e-5, atol=1e-5)

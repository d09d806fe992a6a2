"""Fused linear + cross-entropy (kernels/loss.py) against the naive full-logits reference."""
from __future__ import annotations

import pytest
import torch
from midtrain.kernels.loss import linear_cross_entropy, linear_cross_entropy_reference


def _case(n=37, d=16, v=101, dtype=torch.float32, ignore_every=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype)
    weight = torch.randn(v, d, generator=g, dtype=dtype) / d**0.5
    labels = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        labels[::ignore_every] = -100
    return hidden, weight, labels


def _loss_and_grads(fn, hidden, weight, labels, upstream=1.0, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, labels, **kw)
    (loss * upstream).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])  # 8 leaves a ragged last chunk
def test_matches_reference_fp32(reduction, chunk_size):
    h, w, y = _case(ignore_every=5)
    got = _loss_and_grads(linear_cross_entropy, h, w, y, upstream=1.7, reduction=reduction, chunk_size=chunk_size)
    ref = _loss_and_grads(linear_cross_entropy_reference, h, w, y, upstream=1.7, reduction=reduction)
    for a, b in zip(got, ref):  # fp32 rounding: only the summation order differs
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradcheck_fp64():
    h, w, y = _case(n=11, d=6, v=13, dtype=torch.float64, ignore_every=4)
    h.requires_grad_(), w.requires_grad_()
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, y, chunk_size=4), (h, w))


def test_ignore_index_tokens_contribute_nothing():
    h, w, y = _case(ignore_every=3)
    loss, dh, _ = _loss_and_grads(linear_cross_entropy, h, w, y, chunk_size=8)
    valid = y != -100
    assert torch.all(dh[~valid] == 0)
    # the mean is over the valid tokens only: equal to the loss of the valid subset alone
    sub = linear_cross_entropy(h[valid], w, y[valid])
    torch.testing.assert_close(loss, sub)
    # a custom ignore_index works the same way
    y2 = torch.where(valid, y, torch.full_like(y, 7))
    y2[valid & (y2 == 7)] = 8
    torch.testing.assert_close(linear_cross_entropy(h, w, y2, ignore_index=7), sub)


def test_bf16_inputs_track_reference():
    h, w, y = _case(n=64, d=32, v=300, dtype=torch.bfloat16, ignore_every=7)
    got = _loss_and_grads(linear_cross_entropy, h, w, y, chunk_size=16)
    ref = _loss_and_grads(linear_cross_entropy_reference, h, w, y)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)  # loss math is fp32 in both
    for a, b in zip(got[1:], ref[1:]):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b.float()).norm() / b.float().norm() < 1e-2


def test_frozen_weight_and_no_grad():
    h, w, y = _case()
    hr = h.clone().requires_grad_()
    linear_cross_entropy(hr, w, y).backward()  # weight frozen: only dhidden is formed
    ref_h = h.clone().requires_grad_()
    linear_cross_entropy_reference(ref_h, w, y).backward()
    torch.testing.assert_close(hr.grad, ref_h.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, y, chunk_size=5), linear_cross_entropy_reference(h, w, y))


def test_bad_inputs_raise_clear_errors():
    h, w, y = _case()
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, y, reduction="none")
    with pytest.raises(ValueError, match="labels shape"):
        linear_cross_entropy(h, w, y[:-1])
    with pytest.raises(ValueError, match="hidden"):
        linear_cross_entropy(h, w[:, :-1], y)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, y, chunk_size=0)


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward run through the dispatcher)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_logits_are_never_materialised_whole():
    n, v, chunk = 256, 1000, 64
    h, w, y = _case(n=n, d=16, v=v)
    for fn, kw in ((linear_cross_entropy, {"chunk_size": chunk}), (linear_cross_entropy_reference, {})):
        hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
        with _LargestTensor() as probe:
            fn(hr, wr, y, **kw).backward()
        if fn is linear_cross_entropy:
            assert probe.largest <= chunk * v  # one chunk of logits at most
        else:
            assert probe.largest >= n * v  # the naive path does build [N, V]

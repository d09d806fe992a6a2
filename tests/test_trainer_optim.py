"""Learning-rate schedules and AdamW parameter groups."""
from __future__ import annotations

import pytest
import torch

from trainer.optim import LRSchedule, build_optimizer


def test_cosine_instella_stage1():
    s = LRSchedule("cosine", peak=4e-4, total=10_000, warmup=2000, final_ratio=0.1)
    assert s(1) == pytest.approx(4e-4 / 2000)
    assert s(1000) == pytest.approx(2e-4)
    assert s(2000) == pytest.approx(4e-4)
    assert s(6000) == pytest.approx((4e-4 + 4e-5) / 2)  # half-way through the cosine
    assert s(10_000) == pytest.approx(4e-5)
    lrs = [s(i) for i in range(2000, 10_001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_linear_stage2_and_wsd():
    lin = LRSchedule("linear", peak=4e-5, total=100, warmup=0, final_ratio=0.0)
    assert lin(0) == pytest.approx(4e-5) and lin(50) == pytest.approx(2e-5) and lin(100) == pytest.approx(0.0)
    wsd = LRSchedule("wsd", peak=1e-3, total=100, warmup=10, final_ratio=0.0, decay_frac=0.2)
    assert wsd(5) == pytest.approx(5e-4)
    assert wsd(10) == wsd(50) == wsd(80) == pytest.approx(1e-3)
    assert wsd(90) == pytest.approx(5e-4) and wsd(100) == pytest.approx(0.0)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, 1e-3, (0.9, 0.95), 1e-8, 0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and [p.dim() for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-8


def test_clip_grad_norm_is_exact_and_clips():
    from trainer.parallel import clip_grad_norm

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(50304, 64)), torch.nn.Parameter(torch.zeros(64))]
    params[0].grad = torch.randn(50304, 64) * torch.rand(50304, 1).pow(8)  # heavy-tailed rows, like an LM head
    params[0].grad[:10] *= 1000
    params[1].grad = torch.randn(64)
    true = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in params)).item()
    before = [p.grad.clone() for p in params]
    norm = clip_grad_norm(params, max_norm=1.0)
    assert norm == pytest.approx(true, rel=1e-9)  # torch's fp32 CPU norm is off by ~1e-4 here
    after = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in params)).item()
    assert after == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(params[1].grad, before[1] / (true + 1e-6))
    small = [torch.nn.Parameter(torch.zeros(3))]
    small[0].grad = torch.tensor([0.1, 0.2, 0.2])
    assert clip_grad_norm(small, 1.0) == pytest.approx(0.3)
    torch.testing.assert_close(small[0].grad, torch.tensor([0.1, 0.2, 0.2]))  # under the limit: untouched

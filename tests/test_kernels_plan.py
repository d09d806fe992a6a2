"""The long-context memory plan (trainer/plan.py): the terms that sequence parallelism, checkpointing and the fused
loss are supposed to shrink must shrink, and the Instella 256K setup (3B, sp=4, 8 GPUs) must fit an 80 GB GPU."""
from __future__ import annotations

import pytest

from trainer.config import PRESETS
from trainer.plan import GiB, PlanConfig, plan_memory

M3B = PRESETS["instella-3b"].model


def _row(plan, prefix):
    return next(b for name, b, _ in plan.rows if name.startswith(prefix))


def test_256k_instella_setup_fits_and_sp1_does_not():
    plan = plan_memory(M3B, PlanConfig(seq_len=262_144, sp=4, world=8, act_ckpt=True))
    assert plan.fits, plan.format()
    assert not plan_memory(M3B, PlanConfig(seq_len=262_144, sp=1, world=8)).fits
    text = plan.format()
    for item in ("params", "grads", "AdamW", "checkpointed block inputs", "logits chunk", "fits in 80 GiB"):
        assert item in text


def test_state_is_sharded_over_the_world():
    a = plan_memory(M3B, PlanConfig(world=8))
    b = plan_memory(M3B, PlanConfig(world=16))
    assert _row(a, "params") == pytest.approx(4 * M3B.n_params() / 8)
    assert _row(b, "AdamW") == pytest.approx(_row(a, "AdamW") / 2)


def test_sp_divides_activations_and_loss_chunk_is_independent_of_row_length():
    p1 = plan_memory(M3B, PlanConfig(sp=1, world=8))
    p4 = plan_memory(M3B, PlanConfig(sp=4, world=8))
    assert _row(p4, "checkpointed") == pytest.approx(_row(p1, "checkpointed") / 4)
    short = plan_memory(M3B, PlanConfig(seq_len=8192, sp=1, world=8))
    assert _row(short, "loss: logits chunk") == _row(p1, "loss: logits chunk")
    # without checkpointing, 36 layers of full activations at 64K tokens/GPU cannot fit
    assert not plan_memory(M3B, PlanConfig(sp=4, world=8, act_ckpt=False)).fits
    assert p4.total < p1.total / 2 and p4.total > 10 * GiB


def test_invalid_layouts_are_rejected():
    with pytest.raises(ValueError, match="divide world"):
        PlanConfig(sp=3, world=8)
    with pytest.raises(ValueError, match="divisible by sp"):
        PlanConfig(seq_len=1000, sp=3, world=3)

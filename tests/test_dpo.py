"""DPO (issue 21): the loss against a hand-written one on a tiny model, the recipe's numbers pinned to Instella's
configs/instella-3b-dpo.yaml, and the whole path on a synthetic preference set in the real layout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.config import ModelConfig, TrainConfig, get_preset
from trainer.recipes import RECIPES, resolve_settings

CFG = ModelConfig(n_layers=2, d_model=32, n_heads=4, ffn_dim=64, seq_len=64, vocab_size=97)


def _hand_dpo(model, ref, pairs, beta, average):
    """DPO written out from the paper / open-instruct with plain logits: log_softmax, gather, mask, (mean), loss."""
    def logp(m, ids, mask):
        logits = m(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
        lp = F.log_softmax(logits.double()[:-1], -1).gather(-1, ids[1:, None])[:, 0]
        keep = mask[1:].double()  # token t+1 is a target when its mask is 1
        s = (lp * keep).sum()
        return s / keep.sum() if average else s

    losses = []
    for (c_ids, c_mask), (r_ids, r_mask) in pairs:
        with torch.no_grad():
            ref_margin = logp(ref, c_ids, c_mask) - logp(ref, r_ids, r_mask)
        margin = logp(model, c_ids, c_mask) - logp(model, r_ids, r_mask)
        losses.append(-F.logsigmoid(beta * (margin - ref_margin)))
    return torch.stack(losses).mean()


def _batch(ids, mask):
    from trainer.data import Sample, collate

    return collate([Sample(ids.numpy(), [len(ids)], [False], mask.numpy().astype(np.uint8))], "absolute", "causal")


@pytest.mark.parametrize("average", [True, False])
def test_gradients_match_a_hand_written_dpo_loss(average):
    from trainer.dpo import dpo_loss, sequence_logp
    from trainer.model import Transformer

    torch.manual_seed(0)
    ref = Transformer(CFG).double()
    model = Transformer(CFG).double()
    with torch.no_grad():  # the policy has moved away from the reference a little
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    pairs = []
    for n_c, n_r, prompt in ((20, 17, 9), (31, 25, 12), (14, 22, 5)):
        c = torch.randint(2, 97, (n_c,), generator=g)
        r = torch.cat([c[:prompt], torch.randint(2, 97, (n_r - prompt,), generator=g)])
        c_mask = (torch.arange(n_c) >= prompt).long()
        r_mask = (torch.arange(n_r) >= prompt).long()
        pairs.append(((c, c_mask), (r, r_mask)))

    want = _hand_dpo(model, ref, pairs, 5.0, average)
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    got = []
    for (c, cm), (r, rm) in pairs:
        bc, br = _batch(c, cm), _batch(r, rm)
        with torch.no_grad():
            rc, rr = sequence_logp(ref, bc, average), sequence_logp(ref, br, average)
        loss, _, _ = dpo_loss(sequence_logp(model, bc, average), sequence_logp(model, br, average), rc, rr, 5.0)
        got.append(loss)
    got = torch.stack(got).mean()
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[n], rtol=1e-7, atol=1e-12, msg=n)
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_dpo_recipe_is_instellas():
    """configs/instella-3b-dpo.yaml: learning_rate 5.0e-7, lr_scheduler_type linear, warmup_ratio 0.1,
    weight_decay 0.0, num_train_epochs 1, dpo_loss_type dpo_norm, dpo_beta 5, max_seq_length 2048,
    per_device 8 x grad-accum 2 x 8 GPUs = 128; scripts/dpo_tune.py: torch AdamW defaults, clip_grad_norm -1 (none),
    num_warmup_steps=int(steps * warmup_ratio)."""
    r = RECIPES["instella-dpo"]
    assert (r.lr, r.schedule, r.warmup_ratio, r.weight_decay, r.epochs) == (5e-7, "linear", 0.1, 0.0, 1)
    assert (r.dpo_loss, r.dpo_beta, r.seq_len, r.global_batch, r.objective) == ("dpo_norm", 5.0, 2048, 128, "dpo")
    assert (r.beta1, r.beta2, r.eps, r.grad_clip, r.final_lr_ratio, r.warmup_start) == (0.9, 0.999, 1e-8, 0.0, 0.0,
                                                                                       0.0)
    pairs = 378_341  # any number of pairs: one epoch = ceil(pairs / 128) steps, warmup int(0.1 x steps)
    s = resolve_settings(TrainConfig(data="-", out="-", recipe="instella-dpo", init_from="x"),
                         get_preset("instella-3b").model, 2048, None, 2 * pairs, world=32)
    assert s.steps == math.ceil(pairs / 128) and s.warmup == int(0.1 * s.steps)
    assert s.tokens_per_step == 128 * 2 * 2048 and s.micro_batch * s.grad_accum * 32 == 128


def test_hf_linear_schedule_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    from trainer.dpo import HFLinearSchedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-7)
    hf = get_linear_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=30)
    ours = HFLinearSchedule(5e-7, 30, 3)
    for step in range(1, 31):  # optimizer step `step` runs at the lr the scheduler holds after step-1 .step() calls
        assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-20), step
        opt.step()
        hf.step()


def test_dpo_on_a_build_that_is_not_pairs_exits_2(stage2_build, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    base = ["train", "--data", str(stage2_build), "--out", str(tmp_path / "r"), "--recipe", "instella-dpo",
            "--seq-len", "4096", "--batch-tokens", str(2 * 4096)]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 2 and "DPO needs --init-from" in res.stderr, res.output
    from trainer.checkpoint import export_safetensors
    from trainer.model import Transformer

    tiny = get_preset("tiny").model
    export_safetensors(tmp_path / "sft", Transformer(tiny).state_dict(), {"model": tiny.__dict__})
    res = CliRunner().invoke(app, base + ["--init-from", str(tmp_path / "sft")])
    assert res.exit_code == 2 and "is not a preference build" in res.stderr, res.output
